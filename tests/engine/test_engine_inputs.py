"""PDFs through the Python API and ``gotocr batch``: gotocr_fast.inputs' limits on the real path."""

from __future__ import annotations

import io
import shutil

import pytest

import llama_cpp  # noqa: F401 - required: a broken build fails, never skips
import gotocr_fast._llama  # noqa: F401 - required: a broken build fails, never skips
import gotocr_fast._vision  # noqa: F401 - required: a broken build fails, never skips
from gotocr_fast.engine import InvalidRequest, OcrEngine
from gotocr_fast.engine.cli import batch_main


def _pdf(images) -> bytes:
    buf = io.BytesIO()
    images[0].save(buf, "PDF", save_all=True, append_images=images[1:], resolution=72.0)
    return buf.getvalue()


def _blank_pdf(width_pt: float, height_pt: float) -> bytes:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument.new()
    doc.new_page(width_pt, height_pt).close()
    buf = io.BytesIO()
    doc.save(buf)
    doc.close()
    return buf.getvalue()


def _pages(fixtures_dir):
    from PIL import Image

    return [Image.open(fixtures_dir / "images" / n).convert("RGB") for n in ("wide.png", "tall.png")]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    e = OcrEngine(tiny_model_dir, n_ctx=1024, max_slots=2, n_threads=2, kv_type="f32")
    yield e
    e.close()


def test_api_reads_a_one_page_pdf_like_its_rendered_page(engine, fixtures_dir, tmp_path):
    import pypdfium2 as pdfium

    data = _pdf(_pages(fixtures_dir)[:1])
    (tmp_path / "one.pdf").write_bytes(data)
    doc = pdfium.PdfDocument(data)
    rendered = doc[0].render(scale=200 / 72).to_pil().convert("RGB")  # the default 200 dpi, by hand
    doc.close()
    expected = engine.ocr(rendered, max_tokens=8).text
    assert engine.ocr(tmp_path / "one.pdf", max_tokens=8).text == expected
    assert engine.ocr(data, max_tokens=8).text == expected


def test_api_multi_page_pdf_needs_an_explicit_choice(engine, fixtures_dir):
    data = _pdf(_pages(fixtures_dir))
    with pytest.raises(InvalidRequest, match="the PDF has 2 pages"):
        engine.ocr(data, max_tokens=4)
    r = engine.ocr([data], max_tokens=4)  # a list: its pages are one multi-page prompt
    assert r.prompt_tokens > engine.ocr(_pages(fixtures_dir)[0], max_tokens=4).prompt_tokens


def test_api_refuses_a_page_bomb(engine):
    with pytest.raises(InvalidRequest, match="20000 × 20000 pt"):
        engine.ocr(_blank_pdf(20000, 20000), max_tokens=4)


def test_batch_records_a_page_bomb_and_goes_on(tiny_model_dir, fixtures_dir, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(fixtures_dir / "images" / "wide.png", src / "a.png")
    (src / "bomb.pdf").write_bytes(_blank_pdf(20000, 20000))
    (src / "broken.pdf").write_bytes(b"not a pdf at all")
    rc = batch_main([str(src), "--out", str(out), "--model", str(tiny_model_dir), "--max-tokens", "2",
                     "--no-progress", "--threads", "2"])
    assert rc == 1
    err = capsys.readouterr().err
    bomb = src / "bomb.pdf"
    assert f"error: {bomb}#page=1: {bomb} page 1 is 20000 × 20000 pt" in err
    assert f"error: {src / 'broken.pdf'}: {src / 'broken.pdf'} is not a readable PDF" in err
    assert "1 page(s) done, 0 skipped (already done), 2 failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.md"]
