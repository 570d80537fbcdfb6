"""The reading task of the bundled demo model: seeded lines of text printed on small pages.

One generator serves training (``train/``), the held-out evaluation (tests, ``bench/``,
``gotocr eval``) and ``gotocr demo``, so all three see the same kind of page:

- light background, dark text, 1 to 4 left-aligned lines of at most :data:`MAX_LINE_CHARS`
  characters: English words, names, places, numbers, dates, prices and punctuation;
- fonts: Pillow's built-in scalable font and, where installed, the regular DejaVu faces (Sans,
  Serif, Sans Mono); font size between 1/24 and 1/14 of the page height;
- pages from square to 1.6:1 landscape, small rotations (±2°), slight blur and colour tints,
  varied margins and positions;
- box mode: 2 to 4 lines and a pixel box around one of them, whose text is the answer.

The word lists come from a data file in the package (``data/reading_words.json``), so the
generator needs nothing beyond Pillow and NumPy and gives the same pages for the same seed on
every machine with the same fonts.

Seeds: the held-out set draws page ``i`` from the single integer seed ``HELDOUT_SEED_BASE + i``
(plus an offset per kind); training draws from multi-word seed sequences, so the two never share
a page.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "HELDOUT_SEED_BASE",
    "MAX_LINE_CHARS",
    "Page",
    "available_fonts",
    "heldout_pages",
    "random_line",
    "render_page",
    "write_pages",
]

MAX_LINE_CHARS = 32
HELDOUT_SEED_BASE = 1_000_000_000
"""First seed of the held-out set."""

FONT_SIZE_RANGE = (1 / 24, 1 / 14)
"""Font size as a fraction of the page height."""

ASPECT_RANGE = (1.0, 1.6)
"""Page width / height."""

PAGE_HEIGHT_RANGE = (256, 640)
MAX_ROTATION_DEG = 2.0

PILLOW_FONT = "pillow"
DEJAVU_FACES = {
    "dejavu-sans": "DejaVuSans.ttf",
    "dejavu-serif": "DejaVuSerif.ttf",
    "dejavu-mono": "DejaVuSansMono.ttf",
}
DEJAVU_DIRS = (
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/dejavu",
    "/usr/local/share/fonts/dejavu",
)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Page:
    """A rendered page and what is written on it.

    ``line_boxes`` are axis-aligned pixel boxes around each line after rotation. In box mode
    ``box`` is the prompt box (pixels) and ``truth`` the text of the line it frames; otherwise
    ``truth`` is all lines joined by newlines. ``char_centres`` holds one row per printed,
    non-space character: x, y (pixels of the page) and the character's code point.
    """

    image: Image.Image
    lines: tuple[str, ...]
    line_boxes: tuple[Box, ...]
    font: str
    box: Box | None = None
    box_line: int | None = None
    char_centres: np.ndarray | None = None

    @property
    def truth(self) -> str:
        if self.box_line is not None:
            return self.lines[self.box_line]
        return "\n".join(self.lines)


# --------------------------------------------------------------------------------------------
# Text


@functools.lru_cache(maxsize=1)
def _words() -> dict[str, list[str]]:
    text = resources.files("gotocr_fast").joinpath("data/reading_words.json").read_text("utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _prose(rng: np.random.Generator, budget: int) -> str:
    words = _words()["words"]
    out: list[str] = []
    length = 0
    target = int(rng.integers(max(4, budget // 3), budget + 1))
    while True:
        w = _pick(rng, words)
        r = rng.random()
        if not out and r < 0.6:
            w = w[:1].upper() + w[1:]
        elif r < 0.04:
            w = w.upper()
        elif r < 0.10:
            w = w[:1].upper() + w[1:]
        if out and rng.random() < 0.08:
            out[-1] += _pick(rng, (",", ",", ";", ":", " -"))
        extra = len(w) + (1 if out else 0)
        if length + extra > target:
            break
        out.append(w)
        length += extra
    if not out:
        out.append(_pick(rng, [w for w in words if len(w) <= budget] or ["a"]))
    text = " ".join(out)
    if rng.random() < 0.5 and len(text) < budget:
        text += _pick(rng, (".", ".", ".", "!", "?", ",", ":"))
    if rng.random() < 0.05 and len(text) + 2 <= budget:
        text = f'"{text}"'
    elif rng.random() < 0.05 and len(text) + 2 <= budget:
        text = f"({text})"
    return text


def _name(rng: np.random.Generator) -> str:
    w = _words()
    first, last = _pick(rng, w["first_names"]), _pick(rng, w["last_names"])
    style = int(rng.integers(6))
    if style == 0:
        return f"{_pick(rng, ('Dr.', 'Mr.', 'Ms.', 'Mrs.', 'Prof.'))} {first} {last}"
    if style == 1:
        return f"{last}, {first}"
    if style == 2:
        return f"{first} {chr(65 + int(rng.integers(26)))}. {last}"
    if style == 3:
        return f"{first} {last} ({int(rng.integers(18, 95))})"
    return f"{first} {last}"


def _address(rng: np.random.Generator) -> str:
    w = _words()
    if rng.random() < 0.5:
        return f"{int(rng.integers(1, 9999))} {_pick(rng, w['last_names'])} {_pick(rng, w['street_suffixes'])}"
    return f"{_pick(rng, w['places'])} {int(rng.integers(10000, 99999))}"


def _date(rng: np.random.Generator) -> str:
    y, m, d = int(rng.integers(1900, 2100)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    style = int(rng.integers(7))
    if style == 0:
        return f"{y:04d}-{m:02d}-{d:02d}"
    if style == 1:
        return f"{m:02d}/{d:02d}/{y}"
    if style == 2:
        return f"{d} {_MONTHS[m - 1]} {y}"
    if style == 3:
        return f"{_MONTHS[m - 1][:3]} {d}, {y}"
    if style == 4:
        return f"{_pick(rng, _WEEKDAYS)}, {_MONTHS[m - 1]} {d}"
    if style == 5:
        return f"{d:02d}.{m:02d}.{y}"
    return f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d} {_MONTHS[m - 1][:3]} {d}"


def _amount(rng: np.random.Generator) -> str:
    value = float(rng.choice((rng.uniform(0, 100), rng.uniform(0, 10000), rng.uniform(0, 1e6))))
    cents = f"{value:,.2f}" if rng.random() < 0.6 else f"{value:.2f}"
    style = int(rng.integers(6))
    if style == 0:
        return f"${cents}"
    if style == 1:
        return f"{_pick(rng, ('Total', 'Price', 'Amount', 'Balance', 'Tax', 'Subtotal'))}: ${cents}"
    if style == 2:
        return f"{rng.uniform(0, 100):.1f}%"
    if style == 3:
        return f"{_pick(rng, ('USD', 'EUR', 'GBP'))} {cents}"
    if style == 4:
        return f"{int(rng.integers(1, 50))} x ${rng.uniform(0, 100):.2f}"
    return f"-{cents}"


def _number(rng: np.random.Generator) -> str:
    style = int(rng.integers(6))
    if style == 0:
        return f"{_pick(rng, ('Invoice', 'Order', 'Room', 'Case', 'Ticket'))} #{int(rng.integers(1, 99999))}"
    if style == 1:
        return f"No. {int(rng.integers(1, 99999))}"
    if style == 2:
        return f"Tel. {int(rng.integers(200, 999))}-{int(rng.integers(100, 999))}-{int(rng.integers(0, 9999)):04d}"
    if style == 3:
        return f"{rng.normal(0, 1000):.{int(rng.integers(0, 5))}f}"
    if style == 4:
        return f"{int(rng.integers(0, 10**int(rng.integers(1, 9)))):,}"
    return f"{int(rng.integers(1, 999))} {_pick(rng, _words()['words'])}"


def _mixed(rng: np.random.Generator, budget: int) -> str:
    head = _prose(rng, max(4, budget // 2)).rstrip(".!?,:")
    tail = _pick(rng, (_date, _amount, _number))(rng)
    return f"{head} {tail}"


def random_line(rng: np.random.Generator, max_chars: int = MAX_LINE_CHARS) -> str:
    """One line of at most ``max_chars`` characters (prose most of the time)."""
    for _ in range(20):
        r = rng.random()
        if r < 0.45:
            line = _prose(rng, max_chars)
        elif r < 0.57:
            line = _name(rng)
        elif r < 0.64:
            line = _address(rng)
        elif r < 0.73:
            line = _date(rng)
        elif r < 0.82:
            line = _amount(rng)
        elif r < 0.90:
            line = _number(rng)
        else:
            line = _mixed(rng, max_chars)
        if 0 < len(line) <= max_chars:
            return line
    return _prose(rng, max_chars)[:max_chars].rstrip() or "a"


# --------------------------------------------------------------------------------------------
# Fonts


@functools.lru_cache(maxsize=1)
def available_fonts() -> tuple[str, ...]:
    """Font names usable here: Pillow's own font always, the DejaVu faces where installed."""
    found = [PILLOW_FONT]
    for name, filename in DEJAVU_FACES.items():
        if _dejavu_path(filename) is not None:
            found.append(name)
    return tuple(found)


def _dejavu_path(filename: str) -> Path | None:
    for folder in DEJAVU_DIRS:
        p = Path(folder) / filename
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=512)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    if name == PILLOW_FONT:
        return ImageFont.load_default(size)
    path = _dejavu_path(DEJAVU_FACES[name])
    if path is None:
        raise ValueError(f"font {name!r} is not installed (Debian: fonts-dejavu-core)")
    return ImageFont.truetype(str(path), size)


# --------------------------------------------------------------------------------------------
# Rendering


def _colour(rng: np.random.Generator, low: int, high: int, tint: int) -> tuple[int, int, int]:
    base = rng.integers(low, high + 1)
    return tuple(int(np.clip(base + rng.integers(-tint, tint + 1), 0, 255)) for _ in range(3))


def _rotate_points(points: np.ndarray, angle_deg: float, centre: tuple[float, float]) -> np.ndarray:
    """Where points land after ``Image.rotate(angle_deg, center=centre)`` (counter-clockwise)."""
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    dx, dy = points[:, 0] - centre[0], points[:, 1] - centre[1]
    return np.stack([centre[0] + dx * c + dy * s, centre[1] - dx * s + dy * c], axis=1)


def render_page(
    rng: np.random.Generator,
    *,
    min_lines: int = 1,
    max_lines: int = 4,
    box_mode: bool = False,
    fonts: Sequence[str] | None = None,
    font_size_range: tuple[float, float] = FONT_SIZE_RANGE,
    max_chars: int = MAX_LINE_CHARS,
    lines: Sequence[str] | None = None,
) -> Page:
    """Draw one page. ``lines`` fixes the text (it must fit); otherwise it is drawn from ``rng``.

    Box mode needs at least two lines (it frames one of them).
    """
    if box_mode:
        min_lines = max(2, min_lines)
    fonts = tuple(fonts) if fonts else available_fonts()
    height = int(rng.integers(PAGE_HEIGHT_RANGE[0], PAGE_HEIGHT_RANGE[1] + 1))
    width = int(round(height * rng.uniform(*ASPECT_RANGE)))
    font_name = _pick(rng, fonts)
    size = max(8, int(round(height * rng.uniform(*font_size_range))))
    font = _font(font_name, size)
    n_lines = len(lines) if lines is not None else int(rng.integers(min_lines, max_lines + 1))
    pitch = size * rng.uniform(1.15, 1.6)
    left = width * rng.uniform(0.02, 0.15)
    usable = width * 0.97 - left
    block_h = pitch * (n_lines - 1) + size * 1.25
    top = rng.uniform(height * 0.03, max(height * 0.03, height * 0.97 - block_h))

    if lines is None:
        drawn: list[str] = []
        for _ in range(n_lines):
            line = random_line(rng, max_chars)
            while font.getlength(line) > usable and len(line) > 1:
                cut = line[: max(1, int(len(line) * usable / font.getlength(line)) - 1)].rstrip()
                line = cut if cut else line[:1]
            drawn.append(line)
        lines = drawn
    else:
        for line in lines:
            if font.getlength(line) > usable:
                raise ValueError(f"line {line!r} does not fit the page at this font size")

    background = _colour(rng, 215, 255, 14)
    ink = _colour(rng, 0, 70, 25)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    boxes: list[np.ndarray] = []
    centres: list[tuple[float, float, int]] = []
    ascent, descent = font.getmetrics()
    for i, line in enumerate(lines):
        x, y = left, top + i * pitch
        draw.text((x, y), line, font=font, fill=ink, anchor="la")
        x1, y1, x2, y2 = draw.textbbox((x, y), line, font=font, anchor="la")
        boxes.append(np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]], dtype=np.float64))
        mid_y = y + (ascent + descent) * 0.45
        for j, ch in enumerate(line):
            if ch.isspace():
                continue
            a = font.getlength(line[:j])
            b = font.getlength(line[: j + 1])
            centres.append((x + 0.5 * (a + b), mid_y, ord(ch)))

    angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    centre = (width / 2, height / 2)
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, center=centre, fillcolor=background)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 0.9))))

    line_boxes: list[Box] = []
    for corners in boxes:
        p = _rotate_points(corners, angle, centre)
        line_boxes.append((float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())))
    char_arr = np.array(centres, dtype=np.float64).reshape(-1, 3)
    if len(char_arr):
        char_arr[:, :2] = _rotate_points(char_arr[:, :2], angle, centre)

    box = box_line = None
    if box_mode:
        box_line = int(rng.integers(len(lines)))
        x1, y1, x2, y2 = line_boxes[box_line]
        pad = size * rng.uniform(0.1, 0.3)
        box = (max(0.0, math.floor(x1 - pad)), max(0.0, math.floor(y1 - pad)),
               min(float(width), math.ceil(x2 + pad)), min(float(height), math.ceil(y2 + pad)))
    return Page(image=image, lines=tuple(lines), line_boxes=tuple(line_boxes), font=font_name,
                box=box, box_line=box_line, char_centres=char_arr)


def heldout_pages(count: int, *, kind: str = "block", start: int = 0) -> Iterator[Page]:
    """The held-out pages: ``kind`` is ``line`` (one line), ``block`` (1-4 lines) or ``box``.

    Page ``i`` is drawn from seed ``HELDOUT_SEED_BASE + offset(kind) + start + i`` alone, so any
    page can be regenerated without the others.
    """
    offsets = {"line": 0, "block": 10_000_000, "box": 20_000_000}
    if kind not in offsets:
        raise ValueError(f"kind must be one of {', '.join(offsets)}; got {kind!r}")
    for i in range(start, start + count):
        rng = np.random.default_rng(HELDOUT_SEED_BASE + offsets[kind] + i)
        if kind == "line":
            yield render_page(rng, min_lines=1, max_lines=1)
        elif kind == "block":
            yield render_page(rng, min_lines=1, max_lines=4)
        else:
            yield render_page(rng, min_lines=2, max_lines=4, box_mode=True)


def write_pages(out_dir: str | Path, pages: Sequence[Page], prefix: str = "page") -> Path:
    """Save pages as ``{prefix}-NNNN.png`` + ``.txt`` truth (+ ``.box`` in box mode): the folder
    layout ``gotocr eval`` reads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, page in enumerate(pages):
        stem = out / f"{prefix}-{i:04d}"
        page.image.save(stem.with_suffix(".png"))
        stem.with_suffix(".txt").write_text(page.truth + "\n", encoding="utf-8")
        if page.box is not None:
            stem.with_suffix(".box").write_text(",".join(f"{v:g}" for v in page.box) + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m gotocr_fast.reading",
                                description="Write held-out pages of the demo model's reading task "
                                            "(PNG + .txt truth, + .box in box mode) for `gotocr eval`.")
    p.add_argument("out", help="output folder")
    p.add_argument("--kind", choices=("line", "block", "box"), default="block")
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--start", type=int, default=0, help="index of the first held-out page")
    args = p.parse_args(argv)
    write_pages(args.out, list(heldout_pages(args.count, kind=args.kind, start=args.start)), prefix=args.kind)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
