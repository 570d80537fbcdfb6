"""The GOT-OCR2 prompt: the one place it is built, for every mode.

We follow the ORIGINAL GOT code (``GOT/demo/run_ocr_2.0.py`` and ``run_ocr_2.0_crop.py``), which is
what the model was trained on, not transformers' ``GotOcr2Processor``. The differences matter for
parity with transformers fixtures:

* transformers always writes a space before ``OCR`` (``" OCR: "``) even without a box; the original
  writes ``"OCR: "``.
* transformers writes ``"[red]  OCR: "`` (two spaces) in colour mode; the original ``"[red] OCR: "``.

Query grammar (docs/MODEL.md, "Prompt")::

    [{color}] ␣  [x1, y1, x2, y2] ␣  OCR  [ with format]  [ across multi pages]  [ upon the patch reference]  ": "

Box coordinates are integers in 0..1000 of the image width/height (GOT truncates with ``int()``);
the conversion lives in :func:`gotocr_fast.preprocess.box_to_prompt_coords`.

Several boxes are several queries over the same image (GOT was trained with one box per prompt):
:func:`build_queries` returns one query per box and the engine runs them as separate sequences
that share the image embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .tokens import IM_END, IM_START, IMG_END, IMG_PAD, IMG_START

__all__ = [
    "COLORS",
    "TYPES",
    "SYSTEM_PROMPT",
    "InvalidPrompt",
    "OcrMode",
    "build_query",
    "build_queries",
    "build_prompt",
    "image_token_span",
]

TYPES = ("plain", "format")
COLORS = ("red", "green", "blue")

SYSTEM_PROMPT = "You should follow the instructions carefully and explain your answers in detail."
"""GOT's ``mpt`` conversation template system message (``GOT/utils/conversation.py``)."""

Box = tuple[float, float, float, float]


class InvalidPrompt(ValueError):
    """A mode GOT does not support (bad type/colour/box, or an impossible combination).

    The engine re-raises it as :class:`gotocr_fast.engine.errors.InvalidRequest`.
    """


@dataclass(frozen=True)
class OcrMode:
    """What to ask the model. ``boxes`` are in pixels of the (single) image."""

    type: str = "plain"
    boxes: tuple[Box, ...] = field(default_factory=tuple)
    color: str | None = None
    crop: bool = False
    multi_page: bool = False

    def __post_init__(self) -> None:
        boxes = self.boxes
        if boxes is None:
            boxes = ()
        elif len(boxes) == 4 and all(isinstance(v, (int, float)) for v in boxes):
            boxes = (boxes,)  # a single box given flat
        object.__setattr__(self, "boxes", tuple(tuple(b) for b in boxes))
        self.validate()

    def validate(self) -> None:
        if self.type not in TYPES:
            raise InvalidPrompt(f"type must be one of {', '.join(TYPES)}; got {self.type!r}")
        if self.color is not None and self.color not in COLORS:
            raise InvalidPrompt(f"color must be one of {', '.join(COLORS)}; got {self.color!r}")
        for box in self.boxes:
            if len(box) != 4:
                raise InvalidPrompt(f"a box is [x1, y1, x2, y2]; got {list(box)!r}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
                raise InvalidPrompt(f"box coordinates must be numbers; got {list(box)!r}")
            x1, y1, x2, y2 = box
            if min(box) < 0 or x2 <= x1 or y2 <= y1:
                raise InvalidPrompt(f"a box needs 0 <= x1 < x2 and 0 <= y1 < y2; got {list(box)!r}")
        if self.boxes and self.multi_page:
            # A box is in the pixels of one image; GOT has no per-page region prompt.
            raise InvalidPrompt("box cannot be combined with a multi-page prompt")
        if self.boxes and self.crop:
            # Tiles cover the whole page; GOT's region prompt is a single 1024² view of the page.
            raise InvalidPrompt("box cannot be combined with crop (multi-crop covers the whole page)")


def _box_text(box: Box, image_size: tuple[int, int]) -> str:
    from .preprocess import box_to_prompt_coords

    w, h = image_size
    try:
        coords = box_to_prompt_coords(list(box), w, h)
    except ValueError as e:
        raise InvalidPrompt(str(e)) from e
    return "[" + ", ".join(str(int(c)) for c in coords) + "]"  # == str(list_of_ints), as GOT writes it


def _query(mode: OcrMode, box_text: str | None) -> str:
    parts = []
    if mode.color is not None:
        parts.append(f"[{mode.color}] ")
    if box_text is not None:
        parts.append(box_text + " ")
    parts.append("OCR")
    if mode.type == "format":
        parts.append(" with format")
    if mode.multi_page:
        parts.append(" across multi pages")
    if mode.crop:
        parts.append(" upon the patch reference")
    parts.append(": ")
    return "".join(parts)


def build_queries(mode: OcrMode, image_size: tuple[int, int] | None = None) -> list[str]:
    """One query per box (or one query without a box)."""
    mode.validate()
    if not mode.boxes:
        return [_query(mode, None)]
    if image_size is None:
        raise InvalidPrompt("a box needs the image size")
    return [_query(mode, _box_text(box, image_size)) for box in mode.boxes]


def build_query(mode: OcrMode, image_size: tuple[int, int] | None = None) -> str:
    """The user query after the image, e.g. ``"OCR: "`` or ``"[red] OCR with format: "``.

    ``image_size`` is ``(width, height)`` in pixels; needed only with a box. Several boxes: use
    :func:`build_queries`.
    """
    queries = build_queries(mode, image_size)
    if len(queries) != 1:
        raise InvalidPrompt("several boxes give several queries: use build_queries()")
    return queries[0]


def build_prompt(query: str, n_image_tokens: int) -> str:
    """The full ChatML prompt with ``n_image_tokens`` ``<imgpad>`` placeholders in one ``<img>``.

    ``n_image_tokens`` = tokens per view × number of views (tiles, thumbnail, pages).
    """
    if n_image_tokens <= 0:
        raise InvalidPrompt("a GOT prompt needs at least one image token")
    return (
        f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}"
        f"{IM_START}user\n{IMG_START}{IMG_PAD * n_image_tokens}{IMG_END}\n{query}{IM_END}"
        f"{IM_START}assistant\n"
    )


def image_token_span(token_ids: Sequence[int], img_pad_id: int) -> tuple[int, int]:
    """``(start, end)`` of the single contiguous run of ``img_pad_id`` in ``token_ids``."""
    start = -1
    for i, t in enumerate(token_ids):
        if t == img_pad_id:
            start = i
            break
    if start < 0:
        raise InvalidPrompt("prompt has no image placeholder tokens")
    end = start
    n = len(token_ids)
    while end < n and token_ids[end] == img_pad_id:
        end += 1
    for t in token_ids[end:]:
        if t == img_pad_id:
            raise InvalidPrompt("prompt has more than one run of image placeholder tokens")
    return start, end
