"""Opening images and PDFs, with every limit built in: one module for the Python API, the CLI and
the server.

* An image (bytes, a path or a ``PIL.Image``) is decoded by :func:`gotocr_fast.preprocess.load_image`
  under a pixel cap.
* A PDF is recognised by its content (:func:`is_pdf`) and rendered page by page with pypdfium2 at
  ``dpi``; each rendered page stays under the same pixel cap (a page too large for it is rendered
  at a lower resolution, never allocated at full size), pages larger than the PDF format's own
  limit are refused, and the page count is bounded.
* pdfium is not thread-safe: every call into it here holds one process-wide lock.

Errors are :class:`gotocr_fast.preprocess.ImageError` subclasses, so a caller that handles image
errors handles these too; :class:`ImageTooLarge` (and its subclasses here) means "over a limit".
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence

from PIL import Image

from .preprocess import DEFAULT_MAX_PIXELS, ImageError, ImageTooLarge, load_image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_PDF_PAGES",
    "DEFAULT_PDF_DPI",
    "IMAGE_SUFFIXES",
    "ImageError",
    "ImageTooLarge",
    "MAX_PDF_PAGE_POINTS",
    "PdfError",
    "PdfPageTooLarge",
    "TooManyPdfPages",
    "is_pdf",
    "load_image",
    "load_pages",
    "pdf_page_count",
    "render_pdf_pages",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jp2", ".ppm",
                            ".qoi", ".avif"})
"""File name endings read as images when a folder is scanned (a PDF is recognised by its content)."""

DEFAULT_PDF_DPI = 200.0
"""GOT sees 1024² views: 200 dpi gives ≈1700×2200 px for a letter page, enough for crop mode."""

DEFAULT_MAX_PDF_PAGES = 256
"""Pages one PDF may have. Each rendered page is held in memory until it is encoded (a letter page
at 200 dpi is ≈ 11 MB as RGB), so a caller that renders whole documents keeps this bounded."""

MAX_PDF_PAGE_POINTS = 14400.0
"""Largest page side the PDF format allows: 14 400 units (200 in) per ISO 32000-1 annex C. A
larger MediaBox is not a real page but a way to make a renderer allocate gigabytes."""

_HEADER_WINDOW = 1024
"""pdfium (like Acrobat) accepts the ``%PDF-`` header anywhere in the first KiB."""

_PDFIUM_LOCK = threading.Lock()


class PdfError(ImageError):
    """Not a readable PDF, a PDF without pages, or a page that cannot be rendered."""


class TooManyPdfPages(ImageTooLarge):
    """The PDF has more pages than allowed."""


class PdfPageTooLarge(ImageTooLarge):
    """A page is larger than the PDF format allows (a PDF bomb, not a document)."""


PdfSource = bytes | bytearray | memoryview | str | os.PathLike


def is_pdf(source) -> bool:
    """Whether ``source`` (bytes or a path) is a PDF, by its header; a path that cannot be read is not."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[:_HEADER_WINDOW])
    elif isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                head = f.read(_HEADER_WINDOW)
        except OSError:
            return False
    else:
        return False
    return b"%PDF-" in head


def _name(source, name: str | None = None) -> str:
    if name is not None:
        return name
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "PDF data"


def _open(pdfium, source: PdfSource, name: str):
    """A PdfDocument (the caller holds the lock and closes it)."""
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    if isinstance(data, str) and not os.path.isfile(data):
        raise FileNotFoundError(f"{data}: no such file")
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as e:
        raise PdfError(f"{name} is not a readable PDF ({e})") from None


def _pdfium():
    try:
        import pypdfium2 as pdfium
    except ImportError as e:  # pragma: no cover - a base dependency
        raise PdfError("PDF input needs pypdfium2 (pip install pypdfium2)") from e
    return pdfium


def _check_count(name: str, n: int, max_pages: int | None) -> None:
    if n == 0:
        raise PdfError(f"{name} has no pages")
    if max_pages is not None and n > max_pages:
        raise TooManyPdfPages(f"{name} has {n} pages (limit {max_pages})")


def pdf_page_count(source: PdfSource, *, max_pages: int | None = DEFAULT_MAX_PDF_PAGES,
                   name: str | None = None) -> int:
    """Number of pages; :class:`PdfError` for an unreadable or empty PDF, :class:`TooManyPdfPages`
    above ``max_pages`` (``None``: no limit). ``name``: what messages call the PDF."""
    pdfium = _pdfium()
    name = _name(source, name)
    with _PDFIUM_LOCK:
        doc = _open(pdfium, source, name)
        try:
            n = len(doc)
        finally:
            doc.close()
    _check_count(name, n, max_pages)
    return n


def render_scale(width_pt: float, height_pt: float, dpi: float, max_pixels: int | None) -> float:
    """Pixels per point for a page: ``dpi / 72``, lowered so the page stays under ``max_pixels``."""
    scale = dpi / 72.0
    if max_pixels is not None:
        # 0.999: rounding in pdfium's page-to-pixel conversion must not land on the limit + 1
        scale = min(scale, math.sqrt(max_pixels / (width_pt * height_pt)) * 0.999)
    return scale


def render_pdf_pages(
    source: PdfSource,
    *,
    dpi: float = DEFAULT_PDF_DPI,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_pages: int | None = DEFAULT_MAX_PDF_PAGES,
    pages: Sequence[int] | None = None,
    name: str | None = None,
) -> list[Image.Image]:
    """Render a PDF's pages (all, or the 0-based ``pages``) into RGB images.

    Each page is rendered at ``dpi``, lowered where needed to keep it under ``max_pixels``
    (``None``: no cap). A page with a side over :data:`MAX_PDF_PAGE_POINTS` raises
    :class:`PdfPageTooLarge`; more than ``max_pages`` pages :class:`TooManyPdfPages` (a
    selection of ``pages`` is not counted against it); an unreadable PDF or page :class:`PdfError`.
    ``name``: what messages call the PDF (default: its path, or "PDF data").
    """
    if not (isinstance(dpi, (int, float)) and math.isfinite(dpi) and dpi > 0):
        raise ValueError(f"dpi must be a positive number; got {dpi!r}")
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None; got {max_pixels!r}")
    pdfium = _pdfium()
    name = _name(source, name)
    out: list[Image.Image] = []
    with _PDFIUM_LOCK:
        doc = _open(pdfium, source, name)
        try:
            n = len(doc)
            if pages is None:
                _check_count(name, n, max_pages)
                indices: Sequence[int] = range(n)
            else:
                indices = pages
                for i in indices:
                    if not (isinstance(i, int) and 0 <= i < n):
                        raise PdfError(f"{name} has no page {i + 1 if isinstance(i, int) else i!r} ({n} pages)")
            for i in indices:
                out.append(_render_page(pdfium, doc, i, name, dpi, max_pixels))
        finally:
            doc.close()
    return out


def _render_page(pdfium, doc, i: int, name: str, dpi: float, max_pixels: int | None) -> Image.Image:
    page = doc[i]
    try:
        w, h = page.get_size()  # points (1/72 inch)
        if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
            raise PdfError(f"{name} page {i + 1} has no area ({w:g} × {h:g} pt)")
        if max(w, h) > MAX_PDF_PAGE_POINTS:
            raise PdfPageTooLarge(
                f"{name} page {i + 1} is {w:g} × {h:g} pt ({w / 72:.0f} × {h / 72:.0f} in), larger than "
                f"the PDF format's limit of {MAX_PDF_PAGE_POINTS:g} pt a side: refused"
            )
        bitmap = page.render(scale=render_scale(w, h, dpi, max_pixels))
        try:
            image = bitmap.to_pil()
        finally:
            bitmap.close()
    except pdfium.PdfiumError as e:
        raise PdfError(f"{name} page {i + 1} cannot be rendered ({e})") from None
    finally:
        page.close()
    return image if image.mode == "RGB" else image.convert("RGB")


def load_pages(
    source,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    dpi: float = DEFAULT_PDF_DPI,
    max_pdf_pages: int | None = DEFAULT_MAX_PDF_PAGES,
) -> list[Image.Image]:
    """The pages of one input: ``[image]`` for an image, every page for a PDF (bytes or a path).

    Images go through :func:`gotocr_fast.preprocess.load_image` (RGB, EXIF orientation applied,
    ``max_pixels`` enforced); PDFs through :func:`render_pdf_pages` with the same cap.
    """
    if not isinstance(source, Image.Image) and is_pdf(source):
        return render_pdf_pages(source, dpi=dpi, max_pixels=max_pixels, max_pages=max_pdf_pages)
    return [load_image(source, max_pixels=max_pixels)]

