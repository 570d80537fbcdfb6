"""``image_file`` resolution: strings → decoded pages, with every limit and path check applied.

Each string is one of:

* ``data:<type>;base64,<data>`` — an inline image or PDF;
* ``http://`` / ``https://`` URL — fetched by :class:`~.fetch.UrlFetcher` when URLs are enabled;
  any other ``scheme://`` is refused (403);
* otherwise a local path: relative paths are taken from the allowed root, absolute ones must lie
  under it once symlinks and ``..`` are resolved. A folder gives its images (by extension,
  natural-sorted by name); a PDF (recognised by its ``%PDF-`` header) gives its pages, rendered by
  :mod:`gotocr_fast.inputs` with the limits below.

Expansion into prompts (docs/HTTP.md, ``image_file``): a top-level string that yields several pages (folder, PDF)
becomes one result *per page*; an inner list is *one* multi-page prompt made of all its strings'
pages (``[["scan.pdf"]]`` = the whole PDF as one multi-page prompt).

Everything blocking (file reads, image decoding, PDF rendering) runs in worker threads. Files are
opened component by component with ``O_NOFOLLOW`` from a descriptor of the root, so a symlink
swapped in after the check cannot lead outside the root.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from PIL import Image

from gotocr_fast.inputs import (
    DEFAULT_PDF_DPI,
    IMAGE_SUFFIXES,
    ImageError,
    ImageTooLarge,
    PdfError,
    TooManyPdfPages,
    is_pdf,
    load_image,
    pdf_page_count,
    render_pdf_pages,
)

from .errors import ApiError
from .fetch import UrlFetcher

__all__ = ["InputLimits", "InputResolver", "PageBudget"]

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_DATA_RE = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.DOTALL)
_O_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class InputLimits:
    max_images: int
    max_pdf_pages: int
    max_image_pixels: int
    max_input_bytes: int
    pdf_dpi: float = DEFAULT_PDF_DPI


class PageBudget:
    """Counts the pages one request has produced against ``max_images`` (413 beyond it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def ensure_room(self, n: int) -> None:
        if self.used + n > self.limit:
            raise ApiError(413, f"too many images in one request (limit {self.limit})", "too_many_images")

    def take(self, n: int = 1) -> None:
        self.ensure_room(n)
        self.used += n


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class InputResolver:
    """Turns ``image_file`` values and uploads into prompts (lists of PIL pages)."""

    def __init__(self, limits: InputLimits, allowed_root: str | None, fetcher: UrlFetcher | None) -> None:
        self.limits = limits
        self.root = os.path.realpath(allowed_root) if allowed_root else None
        if self.root is not None and not os.path.isdir(self.root):
            raise ValueError(f"allowed root {allowed_root!r} is not a folder")
        self.fetcher = fetcher

    # ------------------------------------------------------------------ public

    async def resolve(
        self,
        image_file: str | Sequence[str | Sequence[str]] | None,
        uploads: Sequence[tuple[str, bytes]] = (),
    ) -> list[list[Image.Image]]:
        """Prompts in request order: each is the list of its pages (one page = one image)."""
        entries: list[str | Sequence[str]]
        if image_file is None:
            entries = []
        elif isinstance(image_file, str):
            entries = [image_file]
        else:
            entries = list(image_file)
        if not entries and not uploads:
            raise ApiError(400, "no image given (image_file is empty)", "missing_image")
        budget = PageBudget(self.limits.max_images)
        prompts: list[list[Image.Image]] = []
        for entry in entries:
            if isinstance(entry, str):
                prompts.extend([page] for page in await self._pages_of(entry, budget))
            else:
                if not entry:
                    raise ApiError(400, "an inner image_file list must not be empty", "missing_image")
                pages: list[Image.Image] = []
                for source in entry:
                    pages.extend(await self._pages_of(source, budget))
                prompts.append(pages)
        for name, data in uploads:
            pages = await anyio.to_thread.run_sync(self._decode_blob, data, name or "upload", budget)
            prompts.extend([page] for page in pages)
        return prompts

    async def resolve_url_or_data(self, source: str, budget: PageBudget) -> list[Image.Image]:
        """A chat ``image_url``: a data URI or an http(s) URL only, never a local path."""
        if not (source.startswith("data:") or _URL_RE.match(source)):
            raise ApiError(400, "image_url.url must be a data: URI or an http(s) URL", "invalid_image_url")
        return await self._pages_of(source, budget)

    # ------------------------------------------------------------------ sources

    async def _pages_of(self, source: str, budget: PageBudget) -> list[Image.Image]:
        if not isinstance(source, str) or not source:
            raise ApiError(400, "image_file entries must be non-empty strings", "invalid_image_file")
        if source.startswith("data:"):
            data = self._decode_data_uri(source)
            return await anyio.to_thread.run_sync(self._decode_blob, data, "data URI", budget)
        if _URL_RE.match(source):
            if self.fetcher is None:
                raise ApiError(403, "fetching image URLs is disabled on this server (start it with --allow-urls)",
                               "urls_disabled")
            data = await self.fetcher.fetch(source)
            return await anyio.to_thread.run_sync(self._decode_blob, data, source, budget)
        return await anyio.to_thread.run_sync(self._pages_of_path, source, budget)

    def _decode_data_uri(self, uri: str) -> bytes:
        m = _DATA_RE.match(uri)
        if m is None or ";base64" not in m.group("params").lower():
            raise ApiError(400, "data URIs must look like data:image/png;base64,<data>", "invalid_data_uri")
        media = m.group("type").strip().lower()
        if media and not (media.startswith("image/") or media == "application/pdf"):
            raise ApiError(415, f"data URI media type {media!r} is not an image", "unsupported_media_type")
        payload = uri[m.end():]
        if len(payload) // 4 * 3 > self.limits.max_input_bytes + 3:
            raise ApiError(413, f"data URI is larger than {self.limits.max_input_bytes} bytes", "input_too_large")
        try:
            data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "data URI is not valid base64", "invalid_data_uri") from None
        if len(data) > self.limits.max_input_bytes:
            raise ApiError(413, f"data URI is larger than {self.limits.max_input_bytes} bytes", "input_too_large")
        return data

    # ------------------------------------------------------------------ local files (worker thread)

    def _pages_of_path(self, raw: str, budget: PageBudget) -> list[Image.Image]:
        real = self._checked_path(raw)
        fd = self._open_under_root(real, raw)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                names = sorted(
                    (n for n in os.listdir(fd) if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES),
                    key=_natural_key,
                )
                if not names:
                    raise ApiError(400, f"folder {raw!r} has no images", "no_images")
                budget.ensure_room(len(names))
                folder_files = [os.path.join(real, n) for n in names]
            elif stat.S_ISREG(st.st_mode):
                return self._decode_blob(self._read_fd(fd, st, raw), raw, budget)
            else:
                raise ApiError(400, f"{raw!r} is not a regular file", "not_a_file")
        finally:
            os.close(fd)
        pages: list[Image.Image] = []
        for path in folder_files:
            shown = os.path.join(raw, os.path.basename(path))
            real_entry = self._checked_path(path, shown)
            efd = self._open_under_root(real_entry, shown)
            try:
                est = os.fstat(efd)
                if not stat.S_ISREG(est.st_mode):
                    raise ApiError(400, f"{shown!r} is not a regular file", "not_a_file")
                data = self._read_fd(efd, est, shown)
            finally:
                os.close(efd)
            pages.extend(self._decode_blob(data, shown, budget))
        return pages

    def _checked_path(self, raw: str, shown: str | None = None) -> str:
        shown = raw if shown is None else shown
        if self.root is None:
            raise ApiError(403, "local file paths are disabled on this server (no --allowed-root)",
                           "local_paths_disabled")
        if "\x00" in raw:
            raise ApiError(400, "path contains a NUL byte", "invalid_path")
        candidate = raw if os.path.isabs(raw) else os.path.join(self.root, raw)
        real = os.path.realpath(candidate)
        if real != self.root and not real.startswith(self.root.rstrip(os.sep) + os.sep):
            raise ApiError(403, f"path {shown!r} is outside the allowed root", "path_outside_root")
        return real

    def _open_under_root(self, real: str, shown: str) -> int:
        """Open ``real`` (already checked to be under the root) without following any symlink."""
        assert self.root is not None
        rel = os.path.relpath(real, self.root)
        parts = [] if rel == "." else rel.split(os.sep)
        fd = os.open(self.root, _O_FLAGS | os.O_DIRECTORY)
        try:
            for part in parts:
                # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused after fstat).
                nfd = os.open(part, _O_FLAGS | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
                os.close(fd)
                fd = nfd
            return fd
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise ApiError(400, f"file not found: {shown!r}", "file_not_found") from None
            if exc.errno == errno.ELOOP:  # a symlink appeared after the check
                raise ApiError(403, f"path {shown!r} is outside the allowed root", "path_outside_root") from None
            if exc.errno == errno.EACCES:
                raise ApiError(403, f"permission denied: {shown!r}", "permission_denied") from None
            raise ApiError(400, f"cannot open {shown!r}: {exc.strerror}", "file_unreadable") from None

    def _read_fd(self, fd: int, st: os.stat_result, shown: str) -> bytes:
        limit = self.limits.max_input_bytes
        if st.st_size > limit:
            raise ApiError(413, f"{shown!r} is larger than {limit} bytes", "input_too_large")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:  # the file grew after fstat
                raise ApiError(413, f"{shown!r} is larger than {limit} bytes", "input_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ decoding (worker thread)

    def _decode_blob(self, data: bytes, shown: str, budget: PageBudget) -> list[Image.Image]:
        if not data:
            raise ApiError(415, f"{_short(shown)} is empty (zero bytes)", "empty_input")
        if is_pdf(data):
            return self._render_pdf(data, shown, budget)
        budget.take(1)
        return [self._decode_image(data, shown)]

    def _decode_image(self, data: bytes | Image.Image, shown: str) -> Image.Image:
        try:
            return load_image(data, max_pixels=self.limits.max_image_pixels)
        except ImageTooLarge as exc:
            raise ApiError(413, f"{_short(shown)}: {exc}", "image_too_large") from None
        except ImageError as exc:
            raise ApiError(415, f"{_short(shown)} is not a usable image: {exc}", "invalid_image") from None

    def _render_pdf(self, data: bytes, shown: str, budget: PageBudget) -> list[Image.Image]:
        limits, name = self.limits, _short(shown)
        try:
            # counted first: a request over its page budget renders nothing
            budget.ensure_room(pdf_page_count(data, max_pages=limits.max_pdf_pages, name=name))
            rendered = render_pdf_pages(data, dpi=limits.pdf_dpi, max_pixels=limits.max_image_pixels,
                                        max_pages=limits.max_pdf_pages, name=name)
        except TooManyPdfPages as exc:
            raise ApiError(413, str(exc), "too_many_pdf_pages") from None
        except ImageTooLarge as exc:
            raise ApiError(413, str(exc), "image_too_large") from None
        except PdfError as exc:
            raise ApiError(415, str(exc), "invalid_pdf") from None
        pages = [self._decode_image(im, f"{shown} page {i + 1}") for i, im in enumerate(rendered)]
        budget.take(len(pages))
        return pages


def _short(text: str, n: int = 100) -> str:
    text = repr(text) if not text.startswith("data") else "data URI"
    return text if len(text) <= n else text[: n - 1] + "…"
