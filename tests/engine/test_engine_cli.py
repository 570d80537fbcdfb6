"""``gotocr ocr`` / ``gotocr batch`` on the converted tiny model."""

from __future__ import annotations

import json
import shutil

import pytest

import llama_cpp  # noqa: E402,F401 - required: a broken build fails, never skips
import gotocr_fast._llama  # noqa: E402,F401 - required: a broken build fails, never skips
import gotocr_fast._vision  # noqa: E402,F401 - required: a broken build fails, never skips

from gotocr_fast.engine.cli import batch_main, ocr_main  # noqa: E402


def test_ocr_json(tiny_model_dir, fixtures_dir, capsys):
    img = fixtures_dir / "images" / "wide.png"
    assert ocr_main([str(img), "--model", str(tiny_model_dir), "--max-tokens", "6", "--json", "--threads", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["finish_reason"] in ("stop", "length")
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    assert 1 <= out["usage"]["completion_tokens"] <= 6
    assert set(out["timings"]) == {"preprocess_ms", "encode_ms", "prefill_ms", "decode_ms"}


def test_ocr_stream_text_equals_json_text(tiny_model_dir, fixtures_dir, capsys):
    img = str(fixtures_dir / "images" / "tall.png")
    args = [img, "--model", str(tiny_model_dir), "--max-tokens", "6", "--threads", "2", "--box", "10,80,180,200"]
    ocr_main(args)
    streamed = capsys.readouterr().out
    ocr_main(args + ["--json"])
    assert streamed == json.loads(capsys.readouterr().out)["text"] + "\n"


def test_batch_pdf_resume_and_failures(tiny_model_dir, fixtures_dir, tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(fixtures_dir / "images" / "wide.png", src / "a.png")
    pages = [Image.open(fixtures_dir / "images" / n).convert("RGB") for n in ("wide.png", "tall.png")]
    pages[0].save(src / "doc.pdf", save_all=True, append_images=pages[1:])
    (src / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    base = ["--out", str(out), "--model", str(tiny_model_dir), "--max-tokens", "4", "--no-progress", "--threads", "2"]
    assert batch_main([str(src), *base]) == 1  # one failure reported, the rest done
    err = capsys.readouterr().err
    assert "3 page(s) done" in err
    bad_lines = [line for line in err.splitlines() if "bad.png" in line]
    assert len(bad_lines) == 1 and bad_lines[0].startswith(f"error: {src / 'bad.png'}: ")
    assert bad_lines[0].count("bad.png") == 1, bad_lines  # the path is named once
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a.json", "a.md", "doc.p0001.json", "doc.p0001.md", "doc.p0002.json", "doc.p0002.md"]
    rec = json.loads((out / "doc.p0002.json").read_text())
    assert rec["input"].endswith("doc.pdf#page=2") and (out / "doc.p0002.md").read_text() == rec["text"] + "\n"
    batch_main([str(src), *base])
    assert "0 page(s) done, 3 skipped" in capsys.readouterr().err


@pytest.fixture
def engine_kwargs(monkeypatch):
    """The configuration each CLI command builds its ``OcrEngine`` with, as a dict (the real engine runs)."""
    import dataclasses

    import gotocr_fast
    from gotocr_fast.engine import api

    seen: list[dict] = []

    class Recording(api.OcrEngine):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(dataclasses.asdict(self.config))

    monkeypatch.setattr(api, "OcrEngine", Recording)
    monkeypatch.setattr(gotocr_fast, "OcrEngine", Recording)
    return seen


def test_ocr_sizes_its_slots_to_the_inputs(tiny_model_dir, fixtures_dir, engine_kwargs, capsys):
    # every slot's KV cache is allocated up front: one image must not pay for a server's four
    img = str(fixtures_dir / "images" / "wide.png")
    base = ["--model", str(tiny_model_dir), "--max-tokens", "2", "--threads", "2", "--json"]
    ocr_main([img, *base])
    ocr_main([img, img, *base, "--box", "0,0,50,50"])
    ocr_main([img, img, img, *base, "--box", "0,0,50,50", "--box", "10,10,60,60"])  # 6 sequences
    ocr_main([img, img, img, *base, "--multi-page"])
    ocr_main([img, *base, "--slots", "3"])
    assert [kw["max_slots"] for kw in engine_kwargs] == [1, 2, 4, 1, 3]
    capsys.readouterr()
    with pytest.raises(ValueError, match="max_slots must be an integer >= 1"):
        ocr_main([img, *base, "--slots", "0"])


def test_batch_keeps_the_default_slots(tiny_model_dir, fixtures_dir, engine_kwargs, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(fixtures_dir / "images" / "wide.png", src / "a.png")
    batch_main([str(src), "--out", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--max-tokens", "2",
                "--no-progress", "--threads", "2"])
    assert [kw["max_slots"] for kw in engine_kwargs] == [4]
