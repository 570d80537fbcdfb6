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
    assert "bad.png" in err and "3 page(s) done" in err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a.json", "a.md", "doc.p0001.json", "doc.p0001.md", "doc.p0002.json", "doc.p0002.md"]
    rec = json.loads((out / "doc.p0002.json").read_text())
    assert rec["input"].endswith("doc.pdf#page=2") and (out / "doc.p0002.md").read_text() == rec["text"] + "\n"
    batch_main([str(src), *base])
    assert "0 page(s) done, 3 skipped" in capsys.readouterr().err
