"""The browser side: the web page ``gotocr serve`` shows at ``/``, and standalone HTML documents
of format output (``render.render_document``).

``static/`` holds our own page, script and styles (plain files, no build step); ``vendor/`` the
third-party renderer (markdown-it, KaTeX) with its licences. Both ship in the wheel.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["STATIC_DIR", "VENDOR_DIR", "WEB_DIR"]

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
VENDOR_DIR = WEB_DIR / "vendor"
