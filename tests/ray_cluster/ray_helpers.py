"""Helpers of the Ray tests (a module of its own: ``conftest`` is not importable by name here)."""

from __future__ import annotations

import io
import socket
from pathlib import Path

from PIL import Image

RAY_CPUS = 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(size: tuple[int, int], color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def write_pdf(path: Path, n_pages: int) -> None:
    """A PDF of ``n_pages`` solid pages, each a different colour and size (distinct pages)."""
    pages = [Image.new("RGB", (120 + 7 * i, 160), ((37 * i) % 256, 90, 200 - 5 * i)) for i in range(n_pages)]
    pages[0].save(path, "PDF", save_all=True, append_images=pages[1:], resolution=72.0)
