"""Decoding defaults: the one place they are written (docs/DECODING.md explains them).

They reproduce the official GOT-OCR2.0 scripts: ``run_ocr_2.0.py`` (one view: plain, format,
box, colour) generates greedily with ``no_repeat_ngram_size=20`` and ``max_new_tokens=4096``;
``run_ocr_2.0_crop.py`` (multi-crop and multi-page) uses the same budget without the n-gram rule.
"""

from __future__ import annotations

from ..prompt import OcrMode
from .repetition import LoopGuardParams

__all__ = [
    "REFERENCE_MAX_NEW_TOKENS",
    "REFERENCE_NO_REPEAT_NGRAM_SIZE",
    "LOOP_GUARD",
    "default_max_tokens",
    "default_no_repeat_ngram_size",
]

REFERENCE_MAX_NEW_TOKENS = 4096
"""The official scripts' token budget (``max_new_tokens``) in every mode."""

REFERENCE_NO_REPEAT_NGRAM_SIZE = 20
"""The official single-view script's ``no_repeat_ngram_size``."""

LOOP_GUARD = LoopGuardParams(min_span=256, max_period=256, min_repeats=8)
"""Stop when the text ends in >= 8 repeats of a cycle of <= 256 tokens covering >= 256 tokens.

A period-1 loop (one token again and again) needs 256 tokens, a 40-token line 8 copies (320
tokens), a 256-token paragraph 8 copies (2048 tokens). ``loop_guard`` (the request option)
overrides ``min_span``; 0 turns the guard off."""


def default_no_repeat_ngram_size(mode: OcrMode) -> int:
    """20 for one view (plain, format, box, colour); 0 (off) for multi-crop and multi-page."""
    return 0 if mode.crop or mode.multi_page else REFERENCE_NO_REPEAT_NGRAM_SIZE


def default_max_tokens(n_ctx: int, prompt_tokens: int) -> int:
    """The reference budget, cut to what the request's context leaves after its prompt.

    With the default context (8192 tokens per request) the full 4096 fit any single view, any
    multi-crop page (at most 7 views, ~1.8k prompt tokens) and multi-page prompts of up to 15
    pages; longer prompts get the rest of the context. Values below 1 mean the prompt alone
    does not fit (the caller reports it).
    """
    return min(REFERENCE_MAX_NEW_TOKENS, n_ctx - prompt_tokens)
