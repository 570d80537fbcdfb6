"""gotocr_fast.inputs: images and PDFs opened with the limits built in (no model needed).

Reference PDFs are written by Pillow and pypdfium2 (page sizes in points chosen here); expected
pixel sizes follow from points × dpi / 72.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading

import pytest
from PIL import Image

from gotocr_fast import inputs
from gotocr_fast.preprocess import ImageError, ImageTooLarge


def pdf_bytes(pages: list[tuple[tuple[int, int], tuple[int, int, int]]]) -> bytes:
    """One solid-colour page per (size in points, colour)."""
    images = [Image.new("RGB", size, color) for size, color in pages]
    buf = io.BytesIO()
    images[0].save(buf, "PDF", save_all=True, append_images=images[1:], resolution=72.0)
    return buf.getvalue()


def blank_pdf(width_pt: float, height_pt: float, n: int = 1) -> bytes:
    """Empty pages of any size, without drawing them (a 20000 pt page costs nothing to write)."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument.new()
    for _ in range(n):
        doc.new_page(width_pt, height_pt).close()
    buf = io.BytesIO()
    doc.save(buf)
    doc.close()
    return buf.getvalue()


def png_bytes(size=(30, 20), color=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


# --- recognising a PDF: one rule for bytes and files ---------------------------------------------


def test_is_pdf_header_anywhere_in_the_first_kib(tmp_path):
    pdf = pdf_bytes([((10, 10), (0, 0, 0))])
    assert inputs.is_pdf(pdf)
    assert inputs.is_pdf(b"\n" * 1000 + pdf)  # junk before the header: pdfium reads it
    assert not inputs.is_pdf(b"\n" * 1100 + pdf)
    assert not inputs.is_pdf(png_bytes())
    for name, data in (("a.bin", b"\0" * 500 + pdf), ("b.pdf", png_bytes())):
        (tmp_path / name).write_bytes(data)
    assert inputs.is_pdf(tmp_path / "a.bin")  # by content, whatever the name
    assert not inputs.is_pdf(tmp_path / "b.pdf")
    assert not inputs.is_pdf(tmp_path / "missing.pdf")


# --- rendering -----------------------------------------------------------------------------------


def test_pages_render_at_dpi_in_order():
    pdf = pdf_bytes([((50, 40), (255, 255, 255)), ((40, 50), (0, 0, 0))])
    pages = inputs.render_pdf_pages(pdf, dpi=72)
    assert [(p.mode, p.size, p.getpixel((5, 5))) for p in pages] == [
        ("RGB", (50, 40), (255, 255, 255)), ("RGB", (40, 50), (0, 0, 0))]
    assert [p.size for p in inputs.render_pdf_pages(pdf, dpi=144)] == [(100, 80), (80, 100)]
    assert [p.size for p in inputs.render_pdf_pages(pdf, dpi=72, pages=[1])] == [(40, 50)]


def test_pixel_cap_lowers_the_resolution_not_refuses():
    pdf = pdf_bytes([((1000, 1000), (9, 9, 9))])
    (page,) = inputs.render_pdf_pages(pdf, dpi=300, max_pixels=250_000)
    w, h = page.size
    assert w * h <= 250_000 and w > 490  # √250000 = 500 px a side


def test_page_over_the_pdf_size_limit_is_refused_before_rendering(tmp_path):
    path = tmp_path / "bomb.pdf"
    path.write_bytes(blank_pdf(20000, 20000))
    with pytest.raises(inputs.PdfPageTooLarge, match=r"bomb.pdf page 1 is 20000 × 20000 pt .* 14400 pt"):
        inputs.render_pdf_pages(path)
    with pytest.raises(ImageTooLarge):  # what callers that know only image errors catch
        inputs.load_pages(path.read_bytes())
    # the largest page the format allows renders, under the pixel cap
    (page,) = inputs.render_pdf_pages(blank_pdf(14400, 14400), dpi=200, max_pixels=1_000_000)
    assert page.size[0] * page.size[1] <= 1_000_000


def test_page_bomb_needs_no_memory():
    """In a process limited to 1 GiB of address space on top of what it has: a clear error, no OOM."""
    code = (
        "import io, resource\n"
        "import pypdfium2 as pdfium\n"
        "from gotocr_fast import inputs\n"
        "doc = pdfium.PdfDocument.new(); doc.new_page(20000, 20000).close()\n"
        "buf = io.BytesIO(); doc.save(buf); doc.close()\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
        "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), hard))\n"
        "try:\n"
        "    inputs.render_pdf_pages(buf.getvalue())\n"
        "except inputs.PdfPageTooLarge as e:\n"
        "    print('refused:', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("refused: PDF data page 1 is 20000 × 20000 pt")


def test_page_count_limit():
    pdf = pdf_bytes([((20, 20), (i, i, i)) for i in range(5)])
    assert inputs.pdf_page_count(pdf) == 5
    with pytest.raises(inputs.TooManyPdfPages, match="has 5 pages \\(limit 4\\)"):
        inputs.render_pdf_pages(pdf, max_pages=4)
    with pytest.raises(inputs.TooManyPdfPages):
        inputs.pdf_page_count(pdf, max_pages=4)
    assert len(inputs.render_pdf_pages(pdf, max_pages=4, pages=[4])) == 1  # a selection is not counted


@pytest.mark.parametrize("data, match", [
    (b"%PDF-1.4 garbage", "is not a readable PDF"),
    (None, "is not a readable PDF|has no pages"),  # pdfium refuses a page-less PDF itself
])
def test_unreadable_and_empty_pdfs(data, match):
    if data is None:
        data = blank_pdf(10, 10, n=0)
    with pytest.raises(inputs.PdfError, match=match):
        inputs.render_pdf_pages(data)
    assert issubclass(inputs.PdfError, ImageError)


def test_bad_page_selection_and_arguments():
    pdf = pdf_bytes([((20, 20), (0, 0, 0))])
    with pytest.raises(inputs.PdfError, match="has no page 2 \\(1 pages\\)"):
        inputs.render_pdf_pages(pdf, pages=[1])
    with pytest.raises(ValueError, match="dpi"):
        inputs.render_pdf_pages(pdf, dpi=0)
    with pytest.raises(ValueError, match="max_pixels"):
        inputs.render_pdf_pages(pdf, max_pixels=0)
    with pytest.raises(FileNotFoundError):
        inputs.render_pdf_pages("/nonexistent/x.pdf")


def test_renders_from_many_threads_agree():
    """pdfium is not thread-safe: the module serialises it, so concurrent renders are all correct."""
    pdf = pdf_bytes([((60, 40), (200, 10, 10)), ((30, 70), (10, 200, 10))])
    expected = [(p.size, p.tobytes()) for p in inputs.render_pdf_pages(pdf, dpi=144)]
    results, errors = [], []

    def work():
        try:
            for _ in range(10):
                results.append([(p.size, p.tobytes()) for p in inputs.render_pdf_pages(pdf, dpi=144)])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 40 and all(r == expected for r in results)


# --- load_pages: what the API, the CLI and the server call -------------------------------------


def test_load_pages_images_and_pdfs(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes((30, 20)))
    (tmp_path / "d.pdf").write_bytes(pdf_bytes([((50, 40), (0, 0, 0)), ((40, 50), (0, 0, 0))]))
    assert [p.size for p in inputs.load_pages(tmp_path / "a.png")] == [(30, 20)]
    assert [p.size for p in inputs.load_pages(png_bytes((7, 8)))] == [(7, 8)]
    assert [p.size for p in inputs.load_pages(Image.new("L", (5, 6)))] == [(5, 6)]
    assert [p.size for p in inputs.load_pages(tmp_path / "d.pdf", dpi=72)] == [(50, 40), (40, 50)]
    with pytest.raises(ImageTooLarge):
        inputs.load_pages(png_bytes((30, 20)), max_pixels=100)
    with pytest.raises(inputs.TooManyPdfPages):
        inputs.load_pages(tmp_path / "d.pdf", max_pdf_pages=1)


def test_cli_ocr_refuses_a_page_bomb_with_a_clear_error(tmp_path):
    """``gotocr ocr`` renders inputs before it loads a model: the error comes first, exit 2."""
    bomb = tmp_path / "bomb.pdf"
    bomb.write_bytes(blank_pdf(20000, 20000))
    r = subprocess.run([sys.executable, "-m", "gotocr_fast", "ocr", str(bomb), "--model", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: {bomb} page 1 is 20000 × 20000 pt (278 × 278 in), larger than the PDF format's limit "
        "of 14400 pt a side: refused")
    assert "Traceback" not in r.stderr
