"""Request fields → engine options, and the chat text → OCR mode mapping.

Chat mapping (the text parts of the last user message, case-insensitive; anything else is ignored,
so "OCR this please" is plain OCR):

=========================== ===========================================
text contains               engine option
=========================== ===========================================
``format``                  ``type="format"`` (markdown / LaTeX output)
``box: [x1,y1,x2,y2]``      ``box`` in pixels (several ``[...]`` → several boxes)
``color: red|green|blue``   ``color`` (``colour`` works too)
``crop``                    ``crop=True`` (multi-crop for large pages)
=========================== ===========================================

The request fields ``ocr_type``, ``box``, ``color`` and ``crop`` (``extra_body`` in the openai
client) override what the text says.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import ApiError

__all__ = ["mode_from_text", "normalize_boxes", "sampling_options"]

_NUM = r"-?\d+(?:\.\d+)?"
_BRACKET = rf"\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]"
_BOX_RE = re.compile(rf"\bbox(?:es)?\s*[:=]?\s*((?:{_BRACKET}\s*,?\s*)+)", re.IGNORECASE)
_COLOR_RE = re.compile(r"\bcolou?r\s*[:=]?\s*(red|green|blue)\b", re.IGNORECASE)
_FORMAT_RE = re.compile(r"\bformat(?:ted)?\b", re.IGNORECASE)
_CROP_RE = re.compile(r"\b(?:multi-?)?crop\b", re.IGNORECASE)


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def mode_from_text(text: str) -> dict[str, Any]:
    """The OCR mode a chat prompt asks for (see the module docstring)."""
    mode: dict[str, Any] = {"type": "format" if _FORMAT_RE.search(text) else "plain"}
    if m := _BOX_RE.search(text):
        boxes = [
            [_number(v) for v in re.findall(_NUM, group)]
            for group in re.findall(_BRACKET, m.group(1))
        ]
        mode["box"] = boxes[0] if len(boxes) == 1 else boxes
    if m := _COLOR_RE.search(text):
        mode["color"] = m.group(1).lower()
    if _CROP_RE.search(text):
        mode["crop"] = True
    return mode


def normalize_boxes(box: list[Any] | None) -> list[float] | list[list[float]] | None:
    """Check ``[x1,y1,x2,y2]`` or ``[[x1,y1,x2,y2], ...]`` (the schema lets numbers and lists mix)."""
    if box is None:
        return None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        if len(box) != 4:
            raise ApiError(400, f"box must be [x1, y1, x2, y2]; got {len(box)} numbers", "invalid_box")
        return list(box)
    if all(isinstance(v, list) for v in box):
        if not box:
            raise ApiError(400, "box must not be empty", "invalid_box")
        for b in box:
            if len(b) != 4:
                raise ApiError(400, f"each box must be [x1, y1, x2, y2]; got {b!r}", "invalid_box")
        return [list(b) for b in box]
    raise ApiError(400, "box must be [x1, y1, x2, y2] or a list of such boxes", "invalid_box")


def sampling_options(
    *,
    max_tokens: int | None,
    default_max_tokens: int | None,
    max_tokens_limit: int,
    temperature: float | None,
    top_p: float | None,
    repetition_penalty: float | None,
    seed: int | None,
    no_repeat_ngram_size: int | None = None,
    loop_guard: int | None = None,
    default_loop_guard: int | None = None,
) -> dict[str, Any]:
    """Engine options; what neither the request nor the server sets is left to the engine's
    defaults (``gotocr_fast.engine.defaults``: the token budget, the n-gram rule per mode, the
    loop guard)."""
    tokens = default_max_tokens if max_tokens is None else max_tokens
    if tokens is not None and tokens > max_tokens_limit:
        raise ApiError(
            400, f"max_tokens {tokens} exceeds this server's limit of {max_tokens_limit}", "max_tokens_too_large"
        )
    options: dict[str, Any] = {
        "temperature": 0.0 if temperature is None else temperature,
        "top_p": 1.0 if top_p is None else top_p,
        "repetition_penalty": 1.0 if repetition_penalty is None else repetition_penalty,
    }
    if tokens is not None:
        options["max_tokens"] = tokens
    if seed is not None:
        options["seed"] = seed
    if no_repeat_ngram_size is not None:
        options["no_repeat_ngram_size"] = no_repeat_ngram_size
    guard = default_loop_guard if loop_guard is None else loop_guard
    if guard is not None:
        options["loop_guard"] = guard
    return options
