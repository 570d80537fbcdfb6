"""Request bodies → the engine's ``OcrOptions``, and the chat text → OCR mode mapping.

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

from gotocr_fast import OcrOptions

from .schemas import ChatCompletionRequest, OcrRequestBody

__all__ = ["mode_from_text", "ocr_options", "chat_request_options"]

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


def ocr_options(body: OcrRequestBody) -> OcrOptions:
    """A ``/v1/ocr`` body's options (OcrOptions checks them: an InvalidRequest is a 400 with its code)."""
    return OcrOptions.of(
        type=body.type, box=body.box, color=body.color, crop=body.crop, max_tokens=body.max_tokens,
        temperature=body.temperature, top_p=body.top_p, repetition_penalty=body.repetition_penalty, seed=body.seed,
        no_repeat_ngram_size=body.no_repeat_ngram_size, loop_guard=body.loop_guard,
    )


def chat_request_options(data: ChatCompletionRequest, text: str) -> OcrOptions:
    """A chat request's options: the mode its text asks for, overridden by the request's own fields."""
    mode = mode_from_text(text)
    return OcrOptions.of(
        type=data.ocr_type or mode.get("type"), box=data.box if data.box is not None else mode.get("box"),
        color=data.color or mode.get("color"), crop=data.crop if data.crop is not None else mode.get("crop"),
        max_tokens=data.max_completion_tokens if data.max_completion_tokens is not None else data.max_tokens,
        temperature=data.temperature, top_p=data.top_p, repetition_penalty=data.repetition_penalty, seed=data.seed,
        no_repeat_ngram_size=data.no_repeat_ngram_size, loop_guard=data.loop_guard,
    )
