"""``gotocr ocr --type format --render FILE.html`` on the converted tiny model: the page holds
exactly the answers the command printed (the browser side of the page: tests/server/test_web_*)."""

from __future__ import annotations

import json
import re

import pytest

import llama_cpp  # noqa: F401 - required: a broken build fails, never skips
import gotocr_fast._llama  # noqa: F401 - required: a broken build fails, never skips
import gotocr_fast._vision  # noqa: F401 - required: a broken build fails, never skips

from gotocr_fast.engine.cli import ocr_main
from gotocr_fast.engine.errors import InvalidRequest


def _sections(page: str) -> list[dict]:
    m = re.search(r'<script type="application/json" id="got-data">(.*?)</script>', page, re.DOTALL)
    return json.loads(m.group(1))["sections"]


def test_render_one_streamed_answer(tiny_model_dir, fixtures_dir, tmp_path, capsys):
    out = tmp_path / "page.html"
    img = str(fixtures_dir / "images" / "wide.png")
    args = [img, "--model", str(tiny_model_dir), "--type", "format", "--max-tokens", "6", "--threads", "2"]
    assert ocr_main(args + ["--render", str(out)]) == 0
    printed = capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in page
    assert _sections(page) == [{"heading": "", "text": printed[:-1]}]


def test_render_several_answers(tiny_model_dir, fixtures_dir, tmp_path, capsys):
    out = tmp_path / "pages.html"
    imgs = [str(fixtures_dir / "images" / n) for n in ("wide.png", "tall.png")]
    args = [*imgs, "--model", str(tiny_model_dir), "--type", "format", "--max-tokens", "4", "--threads", "2", "--json"]
    assert ocr_main(args + ["--render", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert _sections(out.read_text(encoding="utf-8")) == [{"heading": o["input"], "text": o["text"]} for o in printed]


@pytest.mark.parametrize("extra, message", [
    (["--render", "x.html"], "--render needs --type format"),
    (["--type", "format", "--render", "/no/such/folder/x.html"], "no such folder"),
])
def test_render_refused_before_loading_the_model(fixtures_dir, extra, message):
    with pytest.raises(InvalidRequest, match=message):
        ocr_main([str(fixtures_dir / "images" / "wide.png"), "--model", "/no/model", *extra])
