"""The special tokens of GOT's Qwen vocabulary: the one place their strings and ids live.

GOT extends Qwen's tiktoken vocabulary (151643 BPE ranks) with specials in this order:
``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, 205 ``<|extra_N|>`` tokens, then the
Qwen-VL image/box markers. The image markers' ids are what the model was trained with, so
the order below is load-bearing.
"""

from __future__ import annotations

BPE_RANK_COUNT = 151643
"""Number of byte-level BPE ranks in ``qwen.tiktoken``; specials start at this id."""

VOCAB_SIZE = 151860
"""Embedding rows in GOT's language model (= BPE ranks + all specials)."""

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_PAD = "<imgpad>"

EXTRA_COUNT = 205
_EXTRAS = tuple(f"<|extra_{i}|>" for i in range(EXTRA_COUNT))
_VISION_MARKERS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", IMG_START, IMG_END, IMG_PAD)

SPECIAL_TOKENS: dict[str, int] = {
    text: BPE_RANK_COUNT + offset
    for offset, text in enumerate((ENDOFTEXT, IM_START, IM_END, *_EXTRAS, *_VISION_MARKERS))
}
"""Every special token string → id, in vocabulary order."""

ENDOFTEXT_ID = SPECIAL_TOKENS[ENDOFTEXT]
IM_START_ID = SPECIAL_TOKENS[IM_START]
IM_END_ID = SPECIAL_TOKENS[IM_END]
IMG_START_ID = SPECIAL_TOKENS[IMG_START]
IMG_END_ID = SPECIAL_TOKENS[IMG_END]
IMG_PAD_ID = SPECIAL_TOKENS[IMG_PAD]

STOP_IDS = frozenset({IM_END_ID, ENDOFTEXT_ID})
"""Generation stops on these: GOT ends its turn with <|im_end|>; <|endoftext|> is the checkpoints'
``eos_token_id``."""

assert len(SPECIAL_TOKENS) + BPE_RANK_COUNT == VOCAB_SIZE
assert (ENDOFTEXT_ID, IM_START_ID, IM_END_ID) == (151643, 151644, 151645)
assert (IMG_START_ID, IMG_END_ID, IMG_PAD_ID) == (151857, 151858, 151859)
