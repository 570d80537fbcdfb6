"""Training batches: rendered pages → pixels, GOT prompt + answer token ids, auxiliary targets.

Every page is drawn from its own seed sequence ``(TRAIN_SEED_TAG, seed, step, i)``, so a resumed
run sees exactly the pages an uninterrupted one would, and no training page can be a held-out page
(those come from single integer seeds, see :mod:`gotocr_fast.reading`).

Character-level answers: the answer is written one Qwen token per character (every character the
reading task prints is a single token of the real vocabulary, and the decoded text is the same as
with Qwen's own merges). A from-scratch decoder of this size cannot learn the spelling of thousands
of merged word tokens from pixels; it can learn to copy characters. The prompt keeps GOT's own
tokenisation.

Restricted vocabulary: the model only ever reads and writes the tokens in :func:`used_token_ids`
(the prompt's tokens and one token per printable character). The other embedding rows stay
exactly zero, which gives them logit 0 under the tied head; :mod:`train.model` trains with a
softmax over the used rows plus one pooled logit for the zero rows, equal to the full softmax.
"""

from __future__ import annotations

import base64
import functools
import unicodedata
from dataclasses import dataclass

import numpy as np
from PIL import Image

from gotocr_fast import reading, tokens
from gotocr_fast.convert.checkpoint import CLIP_MEAN, CLIP_STD
from gotocr_fast.convert.vocab import QWEN_PATTERN, find_qwen_tiktoken
from gotocr_fast.preprocess import box_to_prompt_coords
from gotocr_fast.prompt import OcrMode, build_prompt, build_query

CHARSET = [chr(c) for c in range(33, 127)]
"""Characters the auxiliary head classifies (printable ASCII without space); class 0 = none."""
CHAR_CLASS = {ch: i + 1 for i, ch in enumerate(CHARSET)}
TRAIN_SEED_TAG = 0x7261696E
BAG_SLOTS = 16
"""Answer tokens (characters) per image token the token-bag target lists (more are dropped)."""
PATCH_AUX_SLOTS = 4
"""Characters per ViT patch the patch-level head names."""
TOKEN_SLOTS = 12
"""Characters per image token, in reading order, the token-level head names."""
IGNORE = -100


@functools.lru_cache(maxsize=1)
def encoding():
    import tiktoken

    ranks = {}
    for line in find_qwen_tiktoken().read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks,
                             special_tokens=dict(tokens.SPECIAL_TOKENS))


def encode(text: str) -> list[int]:
    return encoding().encode(unicodedata.normalize("NFC", text), allowed_special="all")


def decode(ids: list[int]) -> str:
    return encoding().decode(ids)


@functools.lru_cache(maxsize=4096)
def _char_ids(ch: str) -> tuple[int, ...]:
    return tuple(encode(ch))


def char_token_ids(text: str) -> list[int]:
    """The answer's tokens: one per character (a character outside the vocabulary's single tokens
    would take its byte tokens)."""
    return [t for ch in unicodedata.normalize("NFC", text) for t in _char_ids(ch)]


def used_token_ids(sample_lines: int = 20_000, seed: int = 12345) -> np.ndarray:
    """Sorted ids the model uses: prompt tokens, every printable ASCII character and line break,
    and any other character the text generator produced."""
    used: set[int] = set()
    for query in ("OCR: ", "[0, 0, 1000, 1000] OCR: ", "OCR with format: "):
        used.update(encode(build_prompt(query, 1)))
    used.update(encode(" ".join(str(i) for i in range(1001)) + " [], "))
    for c in [10, *range(32, 127)]:
        used.update(char_token_ids(chr(c)))
    used.add(tokens.IM_END_ID)
    used.add(tokens.ENDOFTEXT_ID)
    rng = np.random.default_rng(seed)
    used.update(char_token_ids("".join({ch for _ in range(sample_lines) for ch in reading.random_line(rng)})))
    return np.array(sorted(used), dtype=np.int64)


_CLIP_SCALE = (1.0 / (255.0 * np.array(CLIP_STD))).astype(np.float32)
_CLIP_SHIFT = (-np.array(CLIP_MEAN) / np.array(CLIP_STD)).astype(np.float32)


def pixel_values(image: Image.Image, size: int) -> np.ndarray:
    """GOT's preprocessing of one view: bicubic resize to size², /255, CLIP normalisation, CHW.

    ``(x / 255 - mean) / std`` as one multiply-add per channel, written straight into the CHW
    array (the bytes are transposed, not the floats): two passes over the floats instead of six,
    which was most of a page's rendering time at a 768 view."""
    rgb = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    out = np.empty((3, size, size), dtype=np.float32)
    for c in range(3):
        np.multiply(rgb[:, :, c], _CLIP_SCALE[c], out=out[c], dtype=np.float32)
        out[c] += _CLIP_SHIFT[c]
    return out


@dataclass(frozen=True)
class TaskLevel:
    max_lines: int
    max_chars: int
    font_size_range: tuple[float, float]
    box_fraction: float


BOX_FRACTION = 0.25
"""Share of the multi-line pages, from a quarter of the curriculum on, that ask for one boxed line."""


def task_level(step: int, curriculum_steps: int, box_fraction: float = BOX_FRACTION) -> TaskLevel:
    """From one short line in huge type at step 0 to the full reading task at ``curriculum_steps``.

    At the start a character is about as wide as an image token's 64-pixel cell, so reading is
    moving one cell to the right per character; smaller type then packs more characters into a
    cell step by step."""
    p = min(1.0, step / max(1, curriculum_steps))
    lo0, hi0 = 1 / 5, 1 / 3.5
    lo1, hi1 = reading.FONT_SIZE_RANGE
    return TaskLevel(
        max_lines=min(4, 1 + int(p * 4)),
        max_chars=int(round(6 + (reading.MAX_LINE_CHARS - 6) * min(1.0, p * 1.5))),
        font_size_range=(lo0 + (lo1 - lo0) * p, hi0 + (hi1 - hi0) * p),
        box_fraction=0.0 if p < 0.25 else box_fraction,
    )


REVIEW_FRACTION = 0.2
"""Pages drawn at an earlier curriculum level (uniformly over the levels passed): without them the
model forgets what it learnt first (one run read huge single words worse after 7,000 steps than
after 300)."""


def page_level(rng: np.random.Generator, step: int, curriculum_steps: int,
               box_fraction: float = BOX_FRACTION) -> TaskLevel:
    """The level of one page at ``step`` of the curriculum: the current one, or a review."""
    if step > 0 and rng.random() < REVIEW_FRACTION:
        step = int(rng.integers(0, min(step, curriculum_steps) + 1))
    return task_level(step, curriculum_steps, box_fraction)


@dataclass
class Example:
    pixels: np.ndarray
    prompt_ids: list[int]
    answer_ids: list[int]
    bag: np.ndarray  # [grid*grid, BAG_SLOTS] used-vocabulary indices of the tokens printed there
    cells: np.ndarray  # [len(answer_ids)] image token where each answer token is printed, or -1
    patch_aux: np.ndarray  # [patches, PATCH_AUX_SLOTS]
    token_slots: np.ndarray  # [image tokens, TOKEN_SLOTS]
    truth: str
    page: reading.Page


def make_example(rng: np.random.Generator, level: TaskLevel, image_size: int, token_grid: int,
                 tokens_per_view: int, full_to_used: np.ndarray, patch_grid: int = 24) -> Example:
    """One training page; drawn again (same stream) while its answer has a token outside the used
    vocabulary (``full_to_used[id] < 0``)."""
    while True:
        example = _draw_example(rng, level, image_size, token_grid, tokens_per_view, patch_grid, full_to_used)
        if all(full_to_used[t] >= 0 for t in example.answer_ids + example.prompt_ids):
            return example


def _draw_example(rng: np.random.Generator, level: TaskLevel, image_size: int, token_grid: int,
                  tokens_per_view: int, patch_grid: int, full_to_used: np.ndarray) -> Example:
    box_mode = level.max_lines >= 2 and rng.random() < level.box_fraction
    single = not box_mode and rng.random() < 0.3
    page = reading.render_page(
        rng,
        min_lines=1,
        max_lines=1 if single else level.max_lines,
        box_mode=box_mode,
        font_size_range=level.font_size_range,
        max_chars=level.max_chars,
    )
    w, h = page.image.size
    mode = OcrMode(boxes=(page.box,)) if page.box is not None else OcrMode()
    query = build_query(mode, image_size=(w, h))
    prompt_ids = encode(build_prompt(query, tokens_per_view))
    answer = char_token_ids(page.truth) + [tokens.IM_END_ID]
    bag = token_bag_targets(page, token_grid, full_to_used)
    patch_aux = aux_targets(page, patch_grid, PATCH_AUX_SLOTS)
    # every line: the vision encoder does not see the box, so its tokens describe all the text
    token_slots = aux_targets(page, token_grid, TOKEN_SLOTS, box_only=False)
    cells = answer_cells(page, answer, token_grid)
    return Example(pixel_values(page.image, image_size), prompt_ids, answer, bag, cells, patch_aux, token_slots, page.truth,
                   page)


def token_bag_targets(page: reading.Page, grid: int, full_to_used: np.ndarray, slots: int = BAG_SLOTS) -> np.ndarray:
    """Per image token (grid x grid cells, row-major), the used-vocabulary indices of the text
    tokens printed in its cell, ``IGNORE``-padded.

    Every line of the page counts, box mode included: the vision encoder does not see the prompt,
    so it should describe all the text in its cell. A token's place is the mean centre of its
    printed characters.
    """
    out = np.full((grid * grid, slots), IGNORE, dtype=np.int64)
    filled = np.zeros(grid * grid, dtype=np.int64)
    for line, centres in zip(page.lines, _line_centres(page)):
        ids = char_token_ids(line)
        for tok, cell in zip(ids, _token_cells(page, ids, len(line), centres, grid)):
            used = full_to_used[tok] if 0 <= tok < len(full_to_used) else -1
            if cell >= 0 and used >= 0 and filled[cell] < slots:
                out[cell, filled[cell]] = used
                filled[cell] += 1
    return out


def answer_cells(page: reading.Page, answer_ids: list[int], grid: int) -> np.ndarray:
    """For each answer token, the image token (cell) where it is printed; -1 for ``<|im_end|>``
    and for tokens with no printed character (a line break)."""
    per_line = _line_centres(page)
    shown = [page.box_line] if page.box_line is not None else range(len(page.lines))
    centres: dict[int, np.ndarray] = {}
    offset = 0
    for i in shown:
        centres.update({offset + j: xy for j, xy in per_line[i].items()})
        offset += len(page.lines[i]) + 1
    text_ids = [t for t in answer_ids if t != tokens.IM_END_ID]
    cells = _token_cells(page, text_ids, len(page.truth), centres, grid)
    return np.array(cells + [-1] * (len(answer_ids) - len(text_ids)), dtype=np.int64)


def _line_centres(page: reading.Page) -> list[dict[int, np.ndarray]]:
    """Per line, character index → printed centre (x, y) in page pixels; spaces have none."""
    out = []
    row = 0  # char_centres rows run over the lines' printed characters in order
    have = page.char_centres is not None
    for line in page.lines:
        printed = [j for j, ch in enumerate(line) if not ch.isspace()]
        out.append({j: page.char_centres[row + k, :2] for k, j in enumerate(printed)} if have else {})
        row += len(printed)
    return out


def _token_cells(page: reading.Page, ids: list[int], text_len: int, centres: dict[int, np.ndarray],
                 grid: int) -> list[int]:
    """Cell of each token of ``ids`` (the encoding of a text whose character centres are given):
    where the mean centre of its printed characters falls, or -1."""
    w, h = page.image.size
    _, starts = encoding().decode_with_offsets(ids)
    ends = list(starts[1:]) + [text_len]
    cells = []
    for a, b in zip(starts, ends):
        points = [centres[j] for j in range(a, b) if j in centres]
        if not points:
            cells.append(-1)
            continue
        x, y = np.mean(points, axis=0)
        cells.append(_cell(x, y, w, h, grid))
    return cells


def _cell(x: float, y: float, w: int, h: int, grid: int) -> int:
    """Row-major index of the grid x grid cell of a page of w x h pixels that holds point (x, y)
    (the view squashes the page to a square, so the cells are page fractions)."""
    col = min(grid - 1, max(0, int(x * grid / w)))
    row = min(grid - 1, max(0, int(y * grid / h)))
    return row * grid + col


def aux_targets(page: reading.Page, grid: int, slots: int, box_only: bool = True) -> np.ndarray:
    """Per cell of a grid x grid split of the page (row-major), its characters in reading order
    (in box mode those of the boxed line only, unless ``box_only`` is False)."""
    out = np.zeros((grid * grid, slots), dtype=np.int64)
    if page.char_centres is None or not len(page.char_centres):
        return out
    w, h = page.image.size
    cells: dict[int, list[tuple[float, float, int]]] = {}
    selected = None
    if page.box is not None and box_only:
        x1, y1, x2, y2 = page.box
        selected = (x1, y1, x2, y2)
    for x, y, code in page.char_centres:
        if selected is not None and not (selected[0] <= x <= selected[2] and selected[1] <= y <= selected[3]):
            continue
        cls = CHAR_CLASS.get(chr(int(code)))
        if cls is None:
            continue
        cells.setdefault(_cell(x, y, w, h, grid), []).append((y, x, cls))
    for cell, chars in cells.items():
        # reading order inside a cell: by line (y, coarsely), then x
        chars.sort(key=lambda t: (round(t[0] / 8), t[1]))
        for slot, (_, _, cls) in enumerate(chars[:slots]):
            out[cell, slot] = cls
    # Each cell's list ends at its first "none": the slots after it carry no information and
    # would drown the character classes in easy answers, so they are ignored by the loss.
    filled = (out > 0).sum(axis=1)
    out[np.arange(slots)[None, :] > filled[:, None]] = IGNORE
    return out


def make_batch(seed: int, step: int, batch_size: int, curriculum_step: int, curriculum_steps: int,
               image_size: int, token_grid: int, tokens_per_view: int, full_to_used: np.ndarray,
               patch_grid: int = 24, box_fraction: float = BOX_FRACTION) -> list[Example]:
    out = []
    for i in range(batch_size):
        rng = np.random.default_rng([TRAIN_SEED_TAG, seed, step, i])
        level = page_level(rng, curriculum_step, curriculum_steps, box_fraction)
        out.append(make_example(rng, level, image_size, token_grid, tokens_per_view, full_to_used, patch_grid))
    return out


DRILL_SEED_TAG = 0x6472696C
BOX_DRILLS = 8
"""Box prompts per step that train the boxed-row read-out alone (no page is rendered for them)."""


@dataclass(frozen=True)
class BoxDrill:
    prompt_ids: list[int]
    row: int
    """The token-grid row of the box's vertical centre: where its line's first character sits (the
    rendered box pages' own first-character row agrees with it on ~90 % of them)."""


def box_drills(seed: int, step: int, count: int, token_grid: int, tokens_per_view: int) -> list[BoxDrill]:
    """``count`` box-mode prompts with random boxes shaped like the task's (a line's height plus
    margins, left-aligned), for the read-out of the boxed row from the prompt's coordinate digits.

    A rendered page gives one box prompt for a whole vision forward; the row read-out needs only
    the language model, so it gets these many more, at a fraction of a step's cost (a box page is
    about one in five, and two legs of them taught the read-out little). Coordinates are drawn in
    GOT's 0-1000 space (on a 1000 x 1000 image, up to GOT's truncation)."""
    rng = np.random.default_rng([DRILL_SEED_TAG, seed, step])
    out = []
    for _ in range(count):
        height = int(rng.integers(45, 136))
        top = int(rng.integers(0, 1000 - height))
        left = int(rng.integers(0, 151))
        right = int(rng.integers(max(left + 100, 200), 951))
        box = (left, top, right, top + height)
        query = build_query(OcrMode(boxes=(box,)), image_size=(1000, 1000))
        _, y1, _, y2 = box_to_prompt_coords(box, 1000, 1000)  # as the prompt writes them
        row = min(token_grid - 1, (y1 + y2) * token_grid // 2000)
        out.append(BoxDrill(encode(build_prompt(query, tokens_per_view)), row))
    return out
