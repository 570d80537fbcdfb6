"""GOT format output → one standalone HTML document (math typeset, tables drawn, offline).

The document carries everything it needs inline: the vendored renderer (markdown-it + KaTeX),
our ``gotrender.js`` rules, KaTeX's stylesheet with its WOFF2 fonts as ``data:`` URIs, and the
answer itself as a JSON data block (``<script type="application/json">``, never executed). It
opens from disk, from an e-mail, without network.

Safety: the answer is only ever data. The JSON block escapes ``<``, ``>`` and ``&`` so no text can
close the block; the renderer escapes all text (see ``gotrender.js``); and the document's
Content-Security-Policy allows exactly the inline scripts and stylesheet written here (by their
SHA-256), no other script, no network (``default-src 'none'``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path

from . import STATIC_DIR, VENDOR_DIR

__all__ = ["document_csp", "render_document", "write_document"]

#: Scripts of a document, in load order: the renderer's libraries, our rules, the boot script.
_SCRIPTS = (
    VENDOR_DIR / "markdown-it" / "markdown-it.min.js",
    VENDOR_DIR / "katex" / "katex.min.js",
    STATIC_DIR / "gotrender.js",
    STATIC_DIR / "gotrender-page.js",
)
_STYLES = (VENDOR_DIR / "katex" / "katex.min.css", STATIC_DIR / "gotrender.css")

_FONT_FACE_SRC = re.compile(r"src:url\(fonts/(?P<name>[A-Za-z0-9_-]+)\.woff2\) format\(\"woff2\"\)(?:,url\([^)]*\) format\(\"[a-z]+\"\))*")
# Inside an inline <script>, these start HTML parser states that could end the element early.
_SCRIPT_HAZARDS = re.compile(r"<(?=!--|/?script)", re.IGNORECASE)


def _inline_script(source: str) -> str:
    """JS text safe inside ``<script>…</script>``: ``<`` before ``!--`` / ``script`` becomes the
    escape ``\\x3C``. In minified code those sequences occur only inside string, template or
    regular-expression literals, where ``\\x3C`` means the same character."""
    return _SCRIPT_HAZARDS.sub(r"\\x3C", source)


def _katex_css_with_fonts(css: str) -> str:
    def embed(m: re.Match[str]) -> str:
        data = (VENDOR_DIR / "katex" / "fonts" / f"{m['name']}.woff2").read_bytes()
        return f'src:url(data:font/woff2;base64,{base64.b64encode(data).decode()}) format("woff2")'

    out, n = _FONT_FACE_SRC.subn(embed, css)
    if n == 0:  # a KaTeX update changed its @font-face form: fail loudly, not fontless
        raise RuntimeError("no KaTeX @font-face src found to embed")
    return out


@functools.lru_cache(maxsize=1)
def _assets() -> tuple[tuple[str, ...], str]:
    scripts = tuple(_inline_script(p.read_text(encoding="utf-8")) for p in _SCRIPTS)
    css = [_katex_css_with_fonts(_STYLES[0].read_text(encoding="utf-8")), _STYLES[1].read_text(encoding="utf-8")]
    return scripts, "\n".join(css)


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def document_csp() -> str:
    """The Content-Security-Policy of every rendered document (also a test's expectation source
    for which scripts may run)."""
    scripts, css = _assets()
    return "; ".join([
        "default-src 'none'",
        "script-src " + " ".join(_sha256(s) for s in scripts),
        "style-src " + _sha256(css),
        # KaTeX positions glyphs with style attributes; an attribute cannot run code
        "style-src-attr 'unsafe-inline'",
        "font-src data:",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
    ])


def _json_block(value: object) -> str:
    """JSON that cannot end its ``<script>`` element or start a comment inside it."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_document(answers: str | Sequence[tuple[str, str]], *, title: str = "GOT-OCR output") -> str:
    """A standalone HTML document of GOT format answers.

    ``answers``: one answer's text, or ``(heading, text)`` pairs (one section each; a heading may
    be empty). Text is data: nothing in it can become markup or script.
    """
    sections = [("", answers)] if isinstance(answers, str) else [(str(h), str(t)) for h, t in answers]
    scripts, css = _assets()
    data = {"title": title, "sections": [{"heading": h, "text": t} for h, t in sections]}
    fallback = "\n".join(
        (f"<h2>{html.escape(h)}</h2>" if h else "") + f"<pre>{html.escape(t)}</pre>" for h, t in sections
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(document_csp())}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{css}</style>",
        "</head><body>",
        '<main id="got-document" class="got-rendered"></main>',
        f"<noscript>{fallback}</noscript>",
        f'<script type="application/json" id="got-data">{_json_block(data)}</script>',
        *(f"<script>{s}</script>" for s in scripts),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_document(path: str | Path, answers: Sequence[tuple[str, str]], *, title: str = "GOT-OCR output") -> Path:
    """Write :func:`render_document` of ``(label, text)`` answers to ``path`` (one answer: no
    heading; several: one section headed by its label)."""
    pairs = [("", answers[0][1])] if len(answers) == 1 else list(answers)
    out = Path(path)
    out.write_text(render_document(pairs, title=title), encoding="utf-8")
    return out
