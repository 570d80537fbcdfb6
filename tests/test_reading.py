"""The demo model's reading task: seeded pages, what is drawn on them, and the held-out split."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFont

from gotocr_fast import reading


def test_same_seed_same_page():
    a = reading.render_page(np.random.default_rng(7), max_lines=4)
    b = reading.render_page(np.random.default_rng(7), max_lines=4)
    assert a.lines == b.lines and a.font == b.font
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


@pytest.mark.parametrize("kind", ["line", "block", "box"])
def test_heldout_pages_follow_the_task(kind):
    pages = list(reading.heldout_pages(12, kind=kind))
    for page in pages:
        w, h = page.image.size
        assert 1.0 <= w / h <= 1.6 + 1 / h
        assert all(0 < len(line) <= reading.MAX_LINE_CHARS for line in page.lines)
        assert all(line == line.strip() for line in page.lines)
        n = len(page.lines)
        assert (n == 1) if kind == "line" else (1 <= n <= 4)
        if kind == "box":
            assert n >= 2 and page.box is not None
            assert page.truth == page.lines[page.box_line]
            x1, y1, x2, y2 = page.box
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            # the box frames its line and no other line's centre
            bx1, by1, bx2, by2 = page.line_boxes[page.box_line]
            assert x1 <= bx1 and y1 <= by1 and bx2 <= x2 and by2 <= y2
            for i, (ox1, oy1, ox2, oy2) in enumerate(page.line_boxes):
                if i != page.box_line:
                    assert not (y1 <= (oy1 + oy2) / 2 <= y2)
        else:
            assert page.box is None and page.truth == "\n".join(page.lines)
        # every printed non-space character has a centre on the page
        printed = sum(1 for line in page.lines for ch in line if not ch.isspace())
        assert page.char_centres.shape == (printed, 3)
        assert (page.char_centres[:, 0] >= 0).all() and (page.char_centres[:, 0] <= w).all()


def test_heldout_kinds_and_indices_are_distinct_pages():
    truths = [p.truth for kind in ("line", "block") for p in reading.heldout_pages(20, kind=kind)]
    assert len(set(truths)) > 35
    again = next(reading.heldout_pages(1, kind="block", start=5))
    assert again.truth == list(reading.heldout_pages(6, kind="block"))[5].truth


def test_text_is_dark_on_light_and_fonts_in_range():
    page = reading.render_page(np.random.default_rng(3), min_lines=1, max_lines=1)
    gray = np.asarray(page.image.convert("L"), dtype=np.float32)
    assert np.median(gray) > 200  # background
    x1, y1, x2, y2 = (int(v) for v in page.line_boxes[0])
    assert gray[y1:y2, x1:x2].min() < 110  # ink


def test_fixed_lines_are_drawn_and_must_fit():
    page = reading.render_page(np.random.default_rng(1), lines=["Hello 123", "World"])
    assert page.lines == ("Hello 123", "World")
    with pytest.raises(ValueError, match="does not fit"):
        reading.render_page(np.random.default_rng(1), lines=["W" * 400])


def test_pillow_font_always_available():
    assert reading.available_fonts()[0] == reading.PILLOW_FONT
    assert isinstance(ImageFont.load_default(20), ImageFont.FreeTypeFont)


def test_write_pages_layout(tmp_path):
    pages = list(reading.heldout_pages(2, kind="box"))
    reading.write_pages(tmp_path, pages, prefix="box")
    assert (tmp_path / "box-0000.txt").read_text() == pages[0].truth + "\n"
    coords = [float(v) for v in (tmp_path / "box-0001.box").read_text().split(",")]
    assert coords == list(pages[1].box)
    assert (tmp_path / "box-0001.png").is_file()
