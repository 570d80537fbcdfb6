"""The web page and rendered documents in a real browser (Playwright driving Chromium).

The server is the real app with the scripted engine (``serve_web_fake.py``): plain answers
describe the pages and options the engine received (``fake_engine.describe``), so a test can tell
that the page sent the right image, box and mode; format answers are a hand-written GOT-style
text with math, tables and hostile markup (``data/format_answer.mmd``), which the random-weight
test model could never produce.

Skipped, with the reason, where Playwright or a Chromium binary is missing (``.ci/run`` installs
Debian's ``chromium``; set GOTOCR_CHROMIUM to use another binary). Every test fails on any
console error or uncaught exception in the page, CSP violations included. Screenshots go to
GOTOCR_SCREENSHOTS (a folder) or, by default, a ``web-screenshots`` folder under pytest's
temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from gotocr_fast.demo import sample_image
from gotocr_fast.web.render import render_document

from .conftest import free_port, pdf_bytes
from .fake_engine import PROMPT_TOKENS_FIXED, PROMPT_TOKENS_PER_PAGE

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[test]')")

HERE = Path(__file__).parent
FORMAT_ANSWER = HERE / "data" / "format_answer.mmd"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
TOKEN_DELAY = 0.01  # seconds per character of a scripted answer: the format answer streams for ~7 s
TIMEOUT_MS = 30_000


def _chromium() -> str | None:
    candidates = [os.environ.get("GOTOCR_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser"), shutil.which("google-chrome")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser():
    path = _chromium()
    if path is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set GOTOCR_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class WebServer:
    def __init__(self, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        full_env = {**os.environ, "FAKE_FORMAT_ANSWER": str(FORMAT_ANSWER), "FAKE_TOKEN_DELAY": str(TOKEN_DELAY),
                    **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "serve_web_fake.py"), "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning"], env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120  # as conftest's servers: a busy CI machine starts Python slowly
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.close()  # never leave a half-started server behind
        raise RuntimeError(f"server not ready (exit status {self.proc.returncode}):\n{log.read_text()}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = WebServer(tmp_path_factory.mktemp("web-server") / "server.log")
    yield s
    s.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("GOTOCR_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder)
    return tmp_path_factory.mktemp("web-screenshots")


@pytest.fixture
def page(browser, shots, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    yield pg
    pg.screenshot(path=str(shots / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not problems, problems


@pytest.fixture(scope="module")
def page_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "page.png"
    sample_image().save(path)
    return path


def _open(page, server, path: Path | list[Path] | None = None):
    page.goto(server.url + "/")
    page.wait_for_selector('html[data-ready="true"]')
    page.wait_for_selector('#server-status[data-state="ready"]')
    if path is not None:
        page.set_input_files("#file", [str(p) for p in (path if isinstance(path, list) else [path])])
        page.wait_for_selector("#run:enabled")


def _run_and_wait(page) -> None:
    runs = int(page.evaluate("document.body.dataset.runs || '0'"))
    page.click("#run")
    page.wait_for_function(f"() => (document.body.dataset.runs || '0') === '{runs + 1}'")


def _desc(path: Path) -> str:
    """How the scripted engine describes an image: size and the colour of its top-left pixel."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        return f"{rgb.width}x{rgb.height}#" + ",".join(str(v) for v in rgb.getpixel((0, 0)))


def _expected_plain(desc: str) -> str:
    return f"plain|-|-|crop=0|{desc}"


def test_plain_mode(page, server, page_png):
    _open(page, server, page_png)
    expected = _expected_plain(_desc(page_png))
    _run_and_wait(page)
    assert page.text_content("#raw") == expected
    assert page.text_content("#stat-state") == "done (stop)"
    prompt = PROMPT_TOKENS_FIXED + PROMPT_TOKENS_PER_PAGE
    assert page.text_content("#stat-tokens") == f"{prompt} / {len(expected) + 1}"  # + <|im_end|>
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", page.text_content("#stat-ttft"))
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", page.text_content("#stat-total"))
    assert float(page.text_content("#stat-rate")) > 0
    assert page.is_hidden("#rendered-box")  # plain text is not rendered


def test_box_mode_drawn_with_the_mouse(page, server, page_png):
    _open(page, server, page_png)
    page.check('input[name="mode"][value="box"]')
    assert page.is_disabled("#run")  # no box yet
    img = page.locator("#preview").bounding_box()
    start = (img["x"] + img["width"] * 0.1, img["y"] + img["height"] * 0.2)
    end = (img["x"] + img["width"] * 0.6, img["y"] + img["height"] * 0.7)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=8)
    page.mouse.up()
    assert page.is_visible("#box-rect")
    _run_and_wait(page)
    text = page.text_content("#raw")
    m = re.fullmatch(r"plain\|-\|\[([\d.,]+)\]\|crop=0\|" + re.escape(_desc(page_png)), text)
    assert m, text
    got = [float(v) for v in m.group(1).split(",")]
    with Image.open(page_png) as im:
        scale = im.width / img["width"]  # the image is shown scaled; the box is in the image's own pixels
    want = [(start[0] - img["x"]) * scale, (start[1] - img["y"]) * scale,
            (end[0] - img["x"]) * scale, (end[1] - img["y"]) * scale]
    assert all(abs(g - w) <= 2 for g, w in zip(got, want)), (got, want)


def test_stop_cancels_the_request(page, server, page_png):
    _open(page, server, page_png)
    page.check('input[name="mode"][value="format"]')  # the long answer
    before = _cancelled(server)
    page.click("#run")
    page.wait_for_function("() => document.getElementById('raw').textContent.length > 10")
    page.click("#stop")
    page.wait_for_function("() => document.getElementById('stat-state').textContent === 'stopped'")
    stopped_at = page.text_content("#raw")
    assert len(stopped_at) < len(FORMAT_ANSWER.read_text())
    deadline = time.monotonic() + 10
    while _cancelled(server) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _cancelled(server) == before + 1  # the server let go of the slot
    time.sleep(20 * TOKEN_DELAY)
    assert page.text_content("#raw") == stopped_at
    assert page.is_enabled("#run") and page.is_disabled("#stop")


def _cancelled(server) -> float:
    text = httpx.get(server.url + "/metrics").text
    m = re.search(r"^gotocr_cancelled_total(?:\{\})? (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def _check_rendered_answer(page, scope: str) -> None:
    """The format answer of data/format_answer.mmd as rendered HTML under ``scope``."""
    q = lambda sel: f"{scope} {sel}"  # noqa: E731
    assert page.locator(q(".math-error")).count() == 0  # unbalanced \left( and \left[ were repaired
    # E=mc^2, x-bar, the display, alpha, beta, x^2 in the markdown table
    assert page.locator(q(".katex")).count() == 6
    assert page.locator(q(".katex-display")).count() == 1
    assert page.locator(q("h2")).filter(has_text="Results").count() == 1
    text = page.text_content(scope)
    assert "it costs $5 and $10." in text  # lone dollars stay text
    assert 'A quote: "quoted"' in text
    assert "<img src=x onerror=" in text and "</script><script>document.title='pwned'</script>" in text
    assert page.locator(q("img")).count() == 0 and page.locator(q("script")).count() == 0
    table = page.locator(q("table.tabular"))
    rows = [[c.strip() for c in r] for r in table.evaluate(
        "t => [...t.rows].map(r => [...r.cells].map(c => c.textContent))")]
    assert [len(r) for r in rows] == [2, 3, 2, 3]
    assert rows[0] == ["Name", "Score"] and rows[3] == ["Bob", "3", "4"]
    assert rows[1][0] == "Alice" and rows[1][2] == "1" and rows[2][1] == "2"
    spans = table.evaluate("t => [...t.querySelectorAll('td')].map(c => [c.colSpan, c.rowSpan])")
    assert spans[1] == [2, 1] and spans[2] == [1, 2]
    md_table = page.locator(q("table:not(.tabular)"))
    assert md_table.locator("th").all_text_contents() == ["col A", "col B"]
    assert md_table.locator("td .katex").count() == 1
    # math is typeset with the KaTeX fonts (loaded, not a fallback)
    assert page.evaluate("document.fonts.check('16px KaTeX_Main')")


def test_format_answer_streams_and_is_rendered_next_to_the_text(page, server, page_png):
    _open(page, server, page_png)
    page.check('input[name="mode"][value="format"]')
    full = FORMAT_ANSWER.read_text()
    page.click("#run")
    # text appears while the answer is still being generated: Stop is live, the text incomplete,
    # and the rendered view follows it
    page.wait_for_function("() => document.getElementById('raw').textContent.length > 40")
    partial = page.text_content("#raw")
    assert page.is_enabled("#stop")
    assert full.startswith(partial) and len(partial) < len(full)
    page.wait_for_function("() => document.querySelector('#rendered h2') !== null")
    page.wait_for_function("() => document.getElementById('stat-state').textContent.startsWith('done')")
    assert page.text_content("#raw") == full
    assert page.is_visible("#rendered-box")
    page.evaluate("document.fonts.ready")
    _check_rendered_answer(page, "#rendered")
    assert page.title() == "gotocr_fast"


def test_copy_and_download(page, server, page_png):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    _open(page, server, page_png)
    _run_and_wait(page)
    with page.expect_download() as info:
        page.click("#download")
    assert info.value.suggested_filename == "page.txt"
    assert Path(info.value.path()).read_text() == _expected_plain(_desc(page_png))
    with page.expect_download() as info:
        page.click("#download-json")
    saved = json.loads(Path(info.value.path()).read_text())
    assert saved["results"][0]["text"] == _expected_plain(_desc(page_png))
    page.click("#copy")
    page.wait_for_function("() => document.getElementById('copy').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == _expected_plain(_desc(page_png))


def test_pdf_page_by_page_and_multi_page(page, server, tmp_path, page_png):
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(pdf_bytes([((50, 40), (255, 255, 255)), ((40, 50), (255, 255, 255))]))
    _open(page, server, pdf)
    assert page.is_hidden("#stage")  # nothing to draw a box on
    _run_and_wait(page)
    raw = page.text_content("#raw")
    pages = re.findall(r"==> doc\.pdf page (\d) <==\nplain\|-\|-\|crop=0\|(\d+)x(\d+)#255,255,255", raw)
    assert [p[0] for p in pages] == ["1", "2"], raw
    assert int(pages[0][2]) < int(pages[0][1]) and int(pages[1][2]) > int(pages[1][1])  # landscape, portrait
    # an image and the PDF as ONE prompt of three pages
    page.set_input_files("#file", [str(page_png), str(pdf)])
    page.check('input[name="mode"][value="multipage"]')
    _run_and_wait(page)
    raw = page.text_content("#raw")
    assert re.fullmatch(r"plain\|-\|-\|crop=0\|" + re.escape(_desc(page_png)) + r";\d+x\d+#255,255,255;\d+x\d+#255,255,255", raw), raw
    assert page.text_content("#stat-tokens").startswith(f"{PROMPT_TOKENS_FIXED + 3 * PROMPT_TOKENS_PER_PAGE} / ")


def test_colour_and_crop_modes(page, server, page_png):
    _open(page, server, page_png)
    page.check('input[name="mode"][value="color"]')
    page.select_option("#color", "green")
    _run_and_wait(page)
    assert page.text_content("#raw") == f"plain|green|-|crop=0|{_desc(page_png)}"
    page.check('input[name="mode"][value="crop"]')
    _run_and_wait(page)
    assert page.text_content("#raw") == f"plain|-|-|crop=1|{_desc(page_png)}"


def test_several_images_one_after_another(page, server, page_png, tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 48), (255, 255, 255)).save(small)
    _open(page, server, [page_png, small])
    _run_and_wait(page)
    assert page.text_content("#raw") == (f"==> page.png <==\n{_expected_plain(_desc(page_png))}\n\n"
                                         "==> small.png <==\nplain|-|-|crop=0|64x48#255,255,255")
    assert page.text_content("#stat-state") == "done (stop, stop)"
    prompt = 2 * (PROMPT_TOKENS_FIXED + PROMPT_TOKENS_PER_PAGE)
    completion = len(_expected_plain(_desc(page_png))) + len(_expected_plain(_desc(small))) + 2
    assert page.text_content("#stat-tokens") == f"{prompt} / {completion}"


def test_paste_an_image(page, server):
    _open(page, server)
    page.evaluate("""async () => {
        const c = document.createElement('canvas'); c.width = 30; c.height = 20;
        const g = c.getContext('2d'); g.fillStyle = 'rgb(255,255,255)'; g.fillRect(0, 0, 30, 20);
        const blob = await new Promise(r => c.toBlob(r, 'image/png'));
        const dt = new DataTransfer(); dt.items.add(new File([blob], 'pasted.png', {type: 'image/png'}));
        document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt}));
    }""")
    page.wait_for_selector("#run:enabled")
    _run_and_wait(page)
    assert page.text_content("#raw") == "plain|-|-|crop=0|30x20#255,255,255"


def test_api_key(browser, tmp_path, page_png, shots):
    server = WebServer(tmp_path / "server.log", env={"GOTOCR_API_KEY": "s3cret"})
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        _open(pg, server, page_png)
        _run_and_wait(pg)
        assert pg.is_visible("#error") and "401" in pg.text_content("#error")
        pg.click("summary")
        pg.fill("#api-key", "s3cret")
        _run_and_wait(pg)
        assert pg.is_hidden("#error")
        assert pg.text_content("#raw") == _expected_plain(_desc(page_png))
        pg.screenshot(path=str(shots / "test_api_key.png"), full_page=True)
    finally:
        context.close()
        server.close()


def test_standalone_document_renders_offline(browser, tmp_path, shots):
    doc = tmp_path / "answer.html"
    doc.write_text(render_document([("page 1", FORMAT_ANSWER.read_text())]), encoding="utf-8")
    context = browser.new_context(offline=True)
    pg = context.new_page()
    pg.set_default_timeout(2 * TIMEOUT_MS)  # ~0.8 MB of inline scripts and fonts: slow on a busy machine
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.on("request", lambda r: problems.append(f"request {r.url}") if not r.url.startswith(("file:", "data:")) else None)
    try:
        pg.goto(doc.as_uri())
        pg.wait_for_selector('html[data-rendered="true"]')
        pg.evaluate("document.fonts.ready")
        _check_rendered_answer(pg, "#got-document")
        assert pg.text_content("#got-document h2.got-section-heading") == "page 1"
        assert pg.title() == "GOT-OCR output"
        pg.screenshot(path=str(shots / "standalone_document.png"), full_page=True)
    finally:
        context.close()
    assert not problems, problems


# (source, expected): katex = typeset spans, display = display blocks, errors = spans shown as
# invalid TeX, text = a fragment of the visible text, tex = a fragment of a typeset span's source,
# notex = never in any typeset span's source
RULES = [
    (r"\(\left( x\)", {"katex": 1, "errors": 0, "notex": r"\left"}),  # unbalanced: \left dropped
    (r"\(\left\{ x \right.\)", {"katex": 1, "errors": 0, "tex": r"\left\{ x \right."}),  # balanced: kept
    (r"\(\left( x \right) \right)\)", {"katex": 1, "errors": 0, "notex": "\\right"}),
    (r"a $$x^2$$ b", {"katex": 1, "display": 1}),
    (r"\( x \\) y \)", {"katex": 1, "errors": 0, "tex": r"x \\) y"}),  # "\\)" is a line break and ")"
    (r"text \[x\] text", {"katex": 1, "display": 1, "text": "text"}),
    (r"$ x$ and a$b", {"katex": 0, "text": "$ x$ and a$b"}),
    (r"\$5 and \$6", {"katex": 0, "text": "$5 and $6"}),
    (r"\(\frac{\)", {"katex": 0, "errors": 1, "text": r"\(\frac{\)"}),
    (r"a \[\frac{\] b", {"errors": 1, "p": 1, "text": r"a \[\frac{\] b"}),  # still one paragraph
    (r"\begin{tabular}{cc} a & b", {"tables": 0, "text": r"\begin{tabular}{cc} a & b"}),
    (r"\subsection*{Intro}", {"h3": "Intro"}),
    ("[a](javascript:alert(1)) \\(\\href{javascript:alert(1)}{x}\\)", {"anchors": []}),
    (r"a \textbf{bold \(x\)} \emph{it} \foo{x}", {"strong": "bold x", "em": "it", "katex": 1, "text": r"\foo{x}"}),
    ("\\begin{itemize}\n\\item one \\(y\\)\n\\item[b] two\n\\end{itemize}\nafter",
     {"li": ["one y", "two"], "katex": 1, "text": "after"}),
]


@pytest.fixture(scope="module")
def renderer_page(browser, tmp_path_factory):
    """One offline page holding the renderer (an empty standalone document), for the rule checks."""
    doc = tmp_path_factory.mktemp("renderer") / "empty.html"
    doc.write_text(render_document(""), encoding="utf-8")
    context = browser.new_context(offline=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.goto(doc.as_uri())
    pg.wait_for_selector('html[data-rendered="true"]')
    yield pg, problems
    context.close()


@pytest.mark.parametrize("source, want", RULES, ids=[f"rule{i}" for i in range(len(RULES))])
def test_render_rules(renderer_page, source, want):
    page, problems = renderer_page
    got = page.evaluate("""(src) => {
        const el = document.createElement('div');
        el.innerHTML = GotRender.renderToHtml(src);
        const tex = [...el.querySelectorAll('annotation')].map(a => a.textContent);
        // text with each typeset span replaced by its TeX source
        const plain = (node) => {
            if (!node) return null;
            const c = node.cloneNode(true);
            c.querySelectorAll('.katex').forEach(k => k.replaceWith(k.querySelector('annotation').textContent));
            return c.textContent.trim();
        };
        return {katex: el.querySelectorAll('.katex').length, display: el.querySelectorAll('.katex-display').length,
                errors: el.querySelectorAll('.math-error').length, tables: el.querySelectorAll('table').length,
                p: el.querySelectorAll('p').length,
                text: el.textContent, tex: tex.join(' | '), h3: (el.querySelector('h3') || {}).textContent,
                strong: plain(el.querySelector('strong')), em: plain(el.querySelector('em')),
                li: [...el.querySelectorAll('ul > li')].map(plain),
                anchors: [...el.querySelectorAll('a')].map(a => a.getAttribute('href'))};
    }""", source)
    for key, value in want.items():
        if key == "text":
            assert value in got["text"], got
        elif key == "tex":
            assert value in got["tex"], got
        elif key == "notex":
            assert value not in got["tex"], got
        else:
            assert got[key] == value, (key, got)
    assert not problems, problems


def test_page_with_the_real_engine(browser, start_server, tiny_model_dir, page_png, shots):
    """The tiny random-weight model: meaningless text, but the whole path from the page runs."""
    server = start_server("--model", str(tiny_model_dir), "--threads", "2", "--slots", "1", "--n-ctx", "1024",
                          "--default-max-tokens", "12", fake=False, timeout=300)
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    try:
        _open(pg, server, page_png)
        pg.check('input[name="mode"][value="format"]')
        _run_and_wait(pg)
        state = pg.text_content("#stat-state")
        assert state in ("done (stop)", "done (length)"), (state, pg.text_content("#error"))
        prompt, completion = (int(v) for v in pg.text_content("#stat-tokens").split(" / "))
        assert prompt > 16 and 1 <= completion <= 12
        assert pg.is_visible("#rendered-box")
        pg.screenshot(path=str(shots / "real_engine.png"), full_page=True)
    finally:
        context.close()
    assert not problems, problems
