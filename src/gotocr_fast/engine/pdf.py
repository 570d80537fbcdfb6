"""PDF pages → RGB images (pypdfium2), for the CLI and the server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .errors import InvalidRequest

__all__ = ["is_pdf", "pdf_page_count", "render_pdf_pages", "DEFAULT_DPI"]

DEFAULT_DPI = 200
"""GOT sees 1024² views: 200 dpi gives ≈1700×2200 px for a letter page, enough for crop mode."""


def is_pdf(source) -> bool:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:5]) == b"%PDF-"
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.suffix.lower() == ".pdf":
            return True
        try:
            with open(p, "rb") as f:
                return f.read(5) == b"%PDF-"
        except OSError:
            return False
    return False


def _open(source):
    try:
        import pypdfium2 as pdfium
    except ImportError as e:  # pragma: no cover
        raise InvalidRequest("PDF input needs pypdfium2 (pip install pypdfium2)") from e
    try:
        data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
        return pdfium.PdfDocument(data)
    except Exception as e:  # pdfium raises its own PdfiumError
        raise InvalidRequest(f"not a readable PDF: {e}") from e


def pdf_page_count(source) -> int:
    doc = _open(source)
    try:
        return len(doc)
    finally:
        doc.close()


def render_pdf_pages(source, *, dpi: int = DEFAULT_DPI, max_pages: int | None = None,
                     pages: list[int] | None = None) -> Iterator[tuple[int, "object"]]:
    """Yield ``(page_index, PIL.Image RGB)``; ``pages`` selects 0-based indices."""
    doc = _open(source)
    try:
        n = len(doc)
        if max_pages is not None and n > max_pages and pages is None:
            raise InvalidRequest(f"PDF has {n} pages, more than the limit of {max_pages}")
        for i in pages if pages is not None else range(n):
            page = doc[i]
            try:
                bitmap = page.render(scale=dpi / 72.0)
                yield i, bitmap.to_pil().convert("RGB")
            finally:
                page.close()
    finally:
        doc.close()
