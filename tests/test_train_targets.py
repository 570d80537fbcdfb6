"""The demo model's alignment targets (train/data.py): where each text token is printed.

The training's token-bag and guided-attention losses teach the model which image token holds
which text token; wrong cells would teach it to look in the wrong place. These check the cells
against the renderer's own line boxes, without torch.
"""

from __future__ import annotations

import numpy as np
import pytest

from gotocr_fast import reading, tokens

data = pytest.importorskip("train.data", reason="needs the repository's train/ folder and tiktoken")

GRID = 6


def _page(seed: int, box: bool = False) -> reading.Page:
    return reading.render_page(np.random.default_rng(seed), min_lines=3, max_lines=4, box_mode=box)


def _rows_of(page: reading.Page, line: int) -> set[int]:
    """Grid rows the line's box overlaps (the box is the renderer's, after rotation)."""
    h = page.image.size[1]
    _, y1, _, y2 = page.line_boxes[line]
    return set(range(max(0, int(y1 * GRID / h)), min(GRID - 1, int(y2 * GRID / h)) + 1))


@pytest.mark.parametrize("seed", range(4))
def test_answer_tokens_sit_on_their_line_left_to_right(seed):
    page = _page(seed)
    ids = data.char_token_ids(page.truth) + [tokens.IM_END_ID]
    cells = data.answer_cells(page, ids, GRID)
    assert len(cells) == len(ids) and cells[-1] == -1
    line, last_col = 0, -1
    for tok, cell in zip(ids[:-1], cells[:-1]):
        piece = data.decode([tok])
        if cell < 0:
            assert not piece.strip()  # only line breaks and spaces have no place
        else:
            row, col = divmod(int(cell), GRID)
            assert row in _rows_of(page, line), (piece, line)
            assert col >= last_col, piece  # reading order within a line
            last_col = col
        if "\n" in piece:
            line, last_col = line + 1, -1
    assert line == len(page.lines) - 1


def test_box_mode_answer_is_the_framed_line_only():
    page = _page(7, box=True)
    ids = data.char_token_ids(page.truth) + [tokens.IM_END_ID]
    cells = data.answer_cells(page, ids, GRID)
    rows = _rows_of(page, page.box_line)
    assert all(divmod(int(c), GRID)[0] in rows for c in cells if c >= 0)
    assert (cells[:-1] >= 0).sum() >= 1


@pytest.mark.parametrize("seed", range(3))
def test_bag_lists_every_printed_token_once_in_its_cell(seed):
    page = _page(seed, box=seed == 2)  # in box mode too, the bag covers every line
    vocab = np.arange(tokens.VOCAB_SIZE)  # an identity map: bag entries are token ids
    bag = data.token_bag_targets(page, GRID, vocab, slots=64)
    listed = sorted(int(t) for t in bag[bag >= 0])
    printed = sorted(t for line in page.lines for t in data.char_token_ids(line) if data.decode([t]).strip())
    assert listed == printed
    for line_no, line in enumerate(page.lines):
        for t in data.char_token_ids(line):
            if data.decode([t]).strip():
                cells = {int(c) for c in np.nonzero((bag == t).any(axis=1))[0]}
                assert any(c // GRID in _rows_of(page, line_no) for c in cells)


@pytest.mark.parametrize("seed", range(3))
def test_answers_are_one_token_per_character_and_decode_to_the_truth(seed):
    page = _page(seed, box=seed == 2)
    ids = data.char_token_ids(page.truth)
    assert len(ids) == len(page.truth)
    assert [data.decode([t]) for t in ids] == list(page.truth)
    used = set(data.used_token_ids(sample_lines=200).tolist())
    assert set(ids) <= used


def test_token_slots_name_every_line_in_reading_order_even_in_box_mode():
    page = _page(2, box=True)
    slots = data.aux_targets(page, GRID, 64, box_only=False)
    named = sorted(data.CHARSET[c - 1] for c in slots[slots > 0])
    assert named == sorted(ch for line in page.lines for ch in line if ch in data.CHAR_CLASS)
    boxed = data.aux_targets(page, GRID, 64)
    assert sorted(data.CHARSET[c - 1] for c in boxed[boxed > 0]) == sorted(
        ch for ch in page.lines[page.box_line] if ch in data.CHAR_CLASS)


def test_a_fifth_of_the_pages_review_earlier_levels():
    levels = [data.page_level(np.random.default_rng([3, i]), 6000, 8000) for i in range(2000)]
    current = data.task_level(6000, 8000)
    reviews = [lv for lv in levels if lv != current]
    assert 0.15 < len(reviews) / len(levels) < 0.25
    # reviews spread over the levels passed, the easiest included
    assert min(lv.max_chars for lv in reviews) <= 8 and all(lv.max_chars <= current.max_chars for lv in reviews)
    # before the curriculum moves, every page is at its first level
    assert {data.page_level(np.random.default_rng(i), 0, 8000) for i in range(50)} == {data.task_level(0, 8000)}


@pytest.mark.parametrize("size", [384, 768])
def test_pixel_values_are_clip_normalised_chw(size):
    from PIL import Image

    from gotocr_fast.convert.checkpoint import CLIP_MEAN, CLIP_STD

    rng = np.random.default_rng(size)
    image = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8))
    got = data.pixel_values(image, size)
    resized = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    want = ((resized / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)
    assert got.shape == (3, size, size) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, atol=2e-6)
