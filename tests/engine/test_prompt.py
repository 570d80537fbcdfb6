"""The GOT prompt for every mode vs the ORIGINAL GOT demo code (literal strings), tokenized by tiktoken.

Expected strings are written here by hand from GOT/demo/run_ocr_2.0.py, run_ocr_2.0_crop.py and
GOT/utils/conversation.py (conv_mpt, SeparatorStyle.MPT), not produced by the code under test.
"""

from __future__ import annotations

import pytest

from gotocr_fast.prompt import InvalidPrompt, OcrMode, build_prompt, build_queries, build_query, image_token_span
from gotocr_fast.tokens import IMG_END_ID, IMG_PAD_ID, IMG_START_ID, IM_END_ID, IM_START_ID


def got_original_prompt(qs: str, n_views: int = 1) -> str:
    # conv_mpt.system + sep, then role + message + sep, then the bare assistant role
    system = "<|im_start|>system\nYou should follow the instructions carefully and explain your answers in detail."
    user = "<img>" + "<imgpad>" * 256 * n_views + "</img>" + "\n" + qs
    return system + "<|im_end|>" + "<|im_start|>user\n" + user + "<|im_end|>" + "<|im_start|>assistant\n"


def _has_box_helper() -> bool:
    try:
        from gotocr_fast.preprocess import box_to_prompt_coords  # noqa: F401
    except ImportError:
        return False
    return True


needs_box = pytest.mark.skipif(not _has_box_helper(), reason="gotocr_fast.preprocess.box_to_prompt_coords not available")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (OcrMode(), "OCR: "),
        (OcrMode(type="format"), "OCR with format: "),
        (OcrMode(color="red"), "[red] OCR: "),
        (OcrMode(type="format", color="blue"), "[blue] OCR with format: "),
        (OcrMode(color="green"), "[green] OCR: "),
        (OcrMode(type="format", multi_page=True), "OCR with format across multi pages: "),
        (OcrMode(type="format", crop=True), "OCR with format upon the patch reference: "),
    ],
)
def test_query_matches_original_got(mode, expected):
    assert build_query(mode) == expected


@needs_box
def test_box_query_matches_original_got():
    # GOT: bbox[i] = int(bbox[i] / w * 1000) (x) / h (y); qs = str(bbox) + ' ' + 'OCR: '
    w, h = 640, 480
    box = (64, 48, 320, 479)
    expected = str([int(64 / w * 1000), int(48 / h * 1000), int(320 / w * 1000), int(479 / h * 1000)]) + " OCR: "
    assert expected == "[100, 100, 500, 997] OCR: "
    assert build_query(OcrMode(boxes=[box]), (w, h)) == expected
    fmt = build_query(OcrMode(type="format", boxes=[box]), (w, h))
    assert fmt == "[100, 100, 500, 997] OCR with format: "
    # several boxes: one query each
    qs = build_queries(OcrMode(boxes=[box, (0, 0, 640, 480)]), (w, h))
    assert qs == ["[100, 100, 500, 997] OCR: ", "[0, 0, 1000, 1000] OCR: "]


@pytest.mark.parametrize("n_views", [1, 3, 7])
@pytest.mark.parametrize("qs", ["OCR: ", "OCR with format: ", "[red] OCR: ", "OCR with format upon the patch reference: "])
def test_prompt_token_ids_match_original(qwen_tiktoken, qs, n_views):
    ours = build_prompt(qs, 256 * n_views)
    expected = qwen_tiktoken.encode(got_original_prompt(qs, n_views), allowed_special="all")
    got = qwen_tiktoken.encode(ours, allowed_special="all")
    assert got == expected
    # structure, with the ids from tokens.py
    assert got[0] == IM_START_ID and got[-3:-1] != []
    start, end = image_token_span(got, IMG_PAD_ID)
    assert end - start == 256 * n_views
    assert got[start - 1] == IMG_START_ID and got[end] == IMG_END_ID
    assert got.count(IM_END_ID) == 2 and got.count(IM_START_ID) == 3


def test_plain_prompt_ids_literal(qwen_tiktoken):
    # the text tokens of the plain prompt, around the image (pinned: a change in the prompt shows)
    ids = qwen_tiktoken.encode(build_prompt("OCR: ", 256), allowed_special="all")
    s, e = image_token_span(ids, IMG_PAD_ID)
    tail = qwen_tiktoken.decode(ids[e:])
    assert tail == "</img>\nOCR: <|im_end|><|im_start|>assistant\n"
    assert qwen_tiktoken.decode(ids[:s]) == (
        "<|im_start|>system\nYou should follow the instructions carefully and explain your answers in detail."
        "<|im_end|><|im_start|>user\n<img>"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"type": "markdown"},
        {"color": "yellow"},
        {"boxes": [(10, 10, 5, 20)]},
        {"boxes": [(10, 10, 20)]},
        {"boxes": [(-1, 0, 5, 5)]},
        {"boxes": [(0, 0, 5, 5)], "multi_page": True},
        {"boxes": [(0, 0, 5, 5)], "crop": True},
    ],
)
def test_invalid_modes_rejected(kwargs):
    with pytest.raises(InvalidPrompt):
        OcrMode(**kwargs)


@needs_box
def test_box_outside_image_rejected():
    with pytest.raises(InvalidPrompt):
        build_query(OcrMode(boxes=[(0, 0, 700, 10)]), (640, 480))


def test_no_image_tokens_rejected():
    with pytest.raises(InvalidPrompt):
        build_prompt("OCR: ", 0)
