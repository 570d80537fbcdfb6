"""Rendered documents and the web page's files, without a browser: what the document contains and
promises (CSP, data block, no network), the ``render`` option of ``/v1/ocr``, the ``/`` and
``/ui/`` routes and ``--no-ui``. The browser checks are in ``test_web_browser.py``."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from pathlib import Path

import httpx
import pytest

from gotocr_fast.web import STATIC_DIR, VENDOR_DIR
from gotocr_fast.web.render import render_document

from .conftest import png_bytes
from .test_http import data_uri

HOSTILE = 'a </script><script>alert(1)</script> <!-- b --> & "q" \u2028 \\(x\\)'


def _json_block(doc: str) -> str:
    m = re.search(r'<script type="application/json" id="got-data">(.*?)</script>', doc, re.DOTALL)
    assert m, "no data block"
    return m.group(1)


def _csp(doc: str) -> str:
    m = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', doc)
    assert m, "no CSP meta"
    return html.unescape(m.group(1))


def _inline_scripts(doc: str) -> list[str]:
    return re.findall(r"<script>(.*?)</script>", doc, re.DOTALL)


def test_answer_is_data_only():
    doc = render_document([("page <1>", HOSTILE), ("", "second")])
    block = _json_block(doc)
    assert "<" not in block and ">" not in block and "&" not in block  # cannot end the element
    data = json.loads(block)
    assert data["sections"] == [{"heading": "page <1>", "text": HOSTILE}, {"heading": "", "text": "second"}]
    # the text appears nowhere else unescaped: the only </script> tags are the document's own
    assert doc.count("</script>") == 1 + len(_inline_scripts(doc))
    assert "alert(1)</script>" not in doc.replace(html.escape("alert(1)</script>"), "")


def test_csp_allows_exactly_the_documents_scripts():
    doc = render_document("x")
    csp = dict(d.strip().split(" ", 1) for d in _csp(doc).split(";"))
    assert csp["default-src"] == "'none'"
    scripts = _inline_scripts(doc)
    assert len(scripts) == 4  # markdown-it, KaTeX, our rules, the boot script
    expected = {"'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'" for s in scripts}
    assert set(csp["script-src"].split()) == expected
    assert "unsafe-inline" not in csp["script-src"] and "unsafe-eval" not in csp["script-src"]
    style = re.search(r"<style>(.*?)</style>", doc, re.DOTALL).group(1)
    assert csp["style-src"] == "'sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode() + "'"
    assert csp["font-src"] == "data:" and csp["img-src"] == "data:"
    assert "connect-src" not in csp  # falls back to default-src 'none': no network at all


def test_document_is_offline():
    doc = render_document("x")
    # nothing is fetched: no src=/href= attributes in the markup, no url() other than embedded data
    markup = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", "", doc, flags=re.DOTALL)
    assert "<main" in markup and not re.search(r"\s(?:src|href)\s*=", markup)
    urls = re.findall(r"url\(([^)]*)\)", doc)
    assert urls and all(u.startswith("data:font/woff2;base64,") for u in urls)
    fonts = sorted(p.name for p in (VENDOR_DIR / "katex" / "fonts").glob("*.woff2"))
    assert len(urls) == len(fonts) == 20


def test_vendored_files_have_their_licences():
    for lib in ("katex", "markdown-it"):
        licence = (VENDOR_DIR / lib / "LICENSE").read_text()
        assert "Permission is hereby granted" in licence  # MIT
    # markdown-it's browser bundle contains its dependencies: their licences ship too
    for dep in ("entities", "linkify-it", "mdurl", "punycode", "uc.micro"):
        assert (VENDOR_DIR / "markdown-it" / f"LICENSE.{dep}").read_text().strip(), dep


# ---------------------------------------------------------------- HTTP


@pytest.fixture(scope="module")
def server(start_module_server, module_image_root):
    return start_module_server("--allowed-root", str(module_image_root))


def test_ocr_render_html(server):
    r = httpx.post(server.url + "/v1/ocr", json={"image_file": ["a.png", "sub/b.jpg"], "type": "format",
                                                 "render": "html"}, timeout=30)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert len(choices) == 2
    for c in choices:
        assert c["html"].startswith("<!DOCTYPE html>")
        assert json.loads(_json_block(c["html"]))["sections"] == [{"heading": "", "text": c["text"]}]
    plain = httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png", "type": "format"}, timeout=30).json()
    assert "html" not in plain["choices"][0]  # only on request


def test_ocr_render_multipart(server):
    r = httpx.post(server.url + "/v1/ocr", data={"type": "format", "render": "html"},
                   files={"file": ("p.png", png_bytes(), "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    assert "html" in r.json()["choices"][0]


@pytest.mark.parametrize("body, fragment", [
    ({"image_file": "a.png", "render": "html"}, 'render needs type "format"'),
    ({"image_file": "a.png", "type": "format", "render": "pdf"}, "render"),
    ({"image_file": "a.png", "type": "format", "render": True}, "render"),
])
def test_ocr_render_refused(server, body, fragment):
    r = httpx.post(server.url + "/v1/ocr", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]


def test_render_is_documented(server):
    spec = httpx.get(server.url + "/docs/openapi.json").json()
    body = spec["paths"]["/v1/ocr"]["post"]["requestBody"]["content"]
    for media in ("application/json", "multipart/form-data"):
        assert "render" in body[media]["schema"]["properties"], media
    assert "html" in json.dumps(spec["components"]["schemas"]["OcrChoice"])
    assert "/" not in spec["paths"] and not any(p.startswith("/ui") for p in spec["paths"])


def test_page_and_files_are_served_with_a_strict_csp(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text == (STATIC_DIR / "index.html").read_text()
    csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
    assert csp["script-src"] == "'self'" and csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in r.text and not re.search(r"\son[a-z]+\s*=", r.text)  # no inline script/handler
    for ref in re.findall(r'(?:src|href)="(/ui/[^"]+)"', r.text):
        f = httpx.get(server.url + ref)
        assert f.status_code == 200, ref
        assert f.headers["content-security-policy"] == r.headers["content-security-policy"]
    font = httpx.get(server.url + "/ui/vendor/katex/fonts/KaTeX_Main-Regular.woff2")
    assert font.status_code == 200 and font.headers["content-type"] == "font/woff2"


@pytest.mark.parametrize("path", ["/ui/../render.py", "/ui/%2e%2e/render.py", "/ui/nothing.js", "/ui/",
                                  "/ui/vendor/katex/../../render.py", "/ui//etc/passwd"])
def test_only_packaged_files_are_served(server, path):
    r = httpx.get(server.url + path)
    assert r.status_code == 404, (path, r.status_code)


def test_no_ui_flag(start_server):
    s = start_server("--no-ui")
    assert httpx.get(s.url + "/").status_code == 404
    assert httpx.get(s.url + "/ui/app.js").status_code == 404
    assert httpx.get(s.url + "/health").status_code == 200


def test_page_works_with_an_api_key(start_server):
    s = start_server(env={"GOTOCR_API_KEY": "k3y"})
    assert httpx.get(s.url + "/").status_code == 200  # the page itself is public; its API calls carry the key
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(png_bytes())}}]}]}
    assert httpx.post(s.url + "/v1/chat/completions", json=body, timeout=30).status_code == 401


def test_static_files_exist():
    for name in ("index.html", "app.js", "app.css", "gotrender.js", "gotrender-page.js", "gotrender.css"):
        assert (STATIC_DIR / name).is_file(), name
    assert Path(STATIC_DIR / "index.html").read_text().count("/ui/") >= 6


def test_web_files_are_in_the_installed_wheel():
    import importlib.metadata

    record = {str(f) for f in importlib.metadata.files("gotocr-fast") or ()}
    if any(f.startswith(("_editable", "__editable__")) for f in record):
        pytest.skip("editable install: the package files are served from the source tree")
    web = STATIC_DIR.parent
    shipped = [p for base in (STATIC_DIR, VENDOR_DIR) for p in base.rglob("*") if p.is_file()]
    missing = [str(p.relative_to(web)) for p in shipped
               if "gotocr_fast/web/" + p.relative_to(web).as_posix() not in record]
    assert not missing, missing
    assert sum(f.endswith(".woff2") for f in record) == 20
