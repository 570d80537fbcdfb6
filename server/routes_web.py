"""The web page: ``GET /`` and its files under ``/ui/`` (our static files and the vendored renderer).

The page is plain HTML/CSS/JS from ``gotocr_fast/web`` and talks to the server only through the
public HTTP API, like any client (the API key, when the server has one, is typed into the page).
Only files that exist in the package at startup are served (a fixed table, no path from the
request ever reaches the file system), each with a strict Content-Security-Policy: scripts from
this origin only, no inline script, connections to this origin only.
"""

from __future__ import annotations

import functools

from litestar import Response, Router, get
from litestar.exceptions import NotFoundException

from gotocr_fast.web import STATIC_DIR, VENDOR_DIR

__all__ = ["PAGE_CSP", "web_router"]

PAGE_CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    # KaTeX positions glyphs with style attributes; an attribute cannot run code
    "style-src-attr 'unsafe-inline'",
    "font-src 'self'",
    "img-src 'self' blob: data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])

_MEDIA_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".woff2": "font/woff2",
}
_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@functools.lru_cache(maxsize=1)
def _files() -> dict[str, tuple[bytes, str]]:
    """``/ui/`` name → (content, media type): ``static/*`` at the top, ``vendor/**`` under
    ``vendor/``. Read once (well under 1 MB), so serving never touches the disk."""
    table: dict[str, tuple[bytes, str]] = {}
    for base, prefix in ((STATIC_DIR, ""), (VENDOR_DIR, "vendor/")):
        for path in sorted(base.rglob("*")):
            if not path.is_file():
                continue
            media = _MEDIA_TYPES.get(path.suffix, "text/plain" if "LICENSE" in path.name else None)
            if media is not None:
                table[prefix + path.relative_to(base).as_posix()] = (path.read_bytes(), media)
    return table


def _file_response(name: str) -> Response[bytes]:
    entry = _files().get(name)
    if entry is None:
        raise NotFoundException()
    content, media = entry
    cache = "public, max-age=86400" if name.startswith("vendor/") else "no-cache"
    return Response(content, media_type=media, headers={**_HEADERS, "Cache-Control": cache})


@get("/", include_in_schema=False, sync_to_thread=False)
def index() -> Response[bytes]:
    return _file_response("index.html")


@get("/ui/{name:path}", include_in_schema=False, sync_to_thread=False)
def ui_file(name: str) -> Response[bytes]:
    return _file_response(name.lstrip("/"))


def web_router() -> Router:
    _files()  # read the files now, not inside the first request
    return Router(path="/", route_handlers=[index, ui_file])
