"""``gotocr eval DIR``: OCR a folder of images / PDFs and score them against their ``.txt`` truths.

Every image or PDF under DIR with a same-name ``.txt`` beside it (``page.png`` + ``page.txt``) is
read and scored; files without one are counted and skipped. A PDF is read page by page and its
pages' texts are joined by newlines before scoring. A ``.box`` file beside an image
(``x1,y1,x2,y2`` in pixels) turns on box mode for that image. The model, mode and sampling flags
are those of ``gotocr ocr``. ``python -m gotocr_fast.reading DIR`` writes such a folder from the
demo model's held-out set.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import InvalidRequest, OcrOptions
from ..evaluation import Score, score, total
from ..inputs import is_pdf, render_pdf_pages
from .cli import DEFAULT_SLOTS, IMAGE_SUFFIXES, _box, _common, _engine, _options

__all__ = ["eval_main"]


@dataclass(frozen=True)
class Case:
    path: Path
    truth: str
    box: list[float] | None


def find_cases(root: Path) -> tuple[list[Case], int]:
    """The scorable files under ``root`` and how many inputs had no truth file."""
    if not root.is_dir():
        raise InvalidRequest(f"{root}: not a folder")
    cases, untruthed = [], 0
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if f.suffix.lower() not in IMAGE_SUFFIXES and f.suffix.lower() != ".pdf":
            continue
        truth_file = f.with_suffix(".txt")
        if not truth_file.is_file():
            untruthed += 1
            continue
        box_file = f.with_suffix(".box")
        box = None
        if box_file.is_file():
            try:
                box = _box(box_file.read_text("utf-8").strip())
                OcrOptions(box=box)  # checked here, so the error names the file
            except (argparse.ArgumentTypeError, InvalidRequest) as exc:
                raise InvalidRequest(f"{box_file}: {exc}") from None
        cases.append(Case(f, truth_file.read_text("utf-8").rstrip("\n"), box))
    return cases, untruthed


def _read(engine, case: Case, args) -> str:
    opts = _options(args, [case.box] if case.box else None)
    if is_pdf(case.path):
        return "\n".join(engine.ocr(page, opts).text for page in render_pdf_pages(case.path, dpi=args.dpi))
    return engine.ocr(case.path, opts).text


def eval_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gotocr eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR")
    _common(p)
    p.add_argument("--json", action="store_true", help="print one JSON document (per file and overall)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N files")
    args = p.parse_args(argv)
    cases, untruthed = find_cases(Path(args.folder))
    if args.limit is not None:
        cases = cases[: max(0, args.limit)]
    if not cases:
        raise InvalidRequest(f"{args.folder}: no image or PDF with a same-name .txt truth file")
    with _engine(args, DEFAULT_SLOTS) as engine:
        with ThreadPoolExecutor(max_workers=engine.max_slots) as pool:
            texts = list(pool.map(lambda c: _read(engine, c, args), cases))
    scores = [score(c.truth, t) for c, t in zip(cases, texts)]
    overall = total(scores)
    if args.json:
        doc = {
            "files": [{"file": str(c.path), "cer": s.cer, "wer": s.wer, "chars": s.chars, "words": s.words,
                       "char_edits": s.char_edits, "word_edits": s.word_edits, "truth": c.truth, "text": t}
                      for c, s, t in zip(cases, scores, texts)],
            "overall": _summary(overall, len(cases), untruthed),
        }
        print(json.dumps(doc, ensure_ascii=False, indent=2))
        return 0
    width = max(len(str(c.path)) for c in cases)
    print(f"{'file':<{width}}  {'CER':>7}  {'WER':>7}  {'chars':>6}")
    for c, s in zip(cases, scores):
        print(f"{str(c.path):<{width}}  {s.cer:7.2%}  {s.wer:7.2%}  {s.chars:6d}")
    print(f"{'overall':<{width}}  {overall.cer:7.2%}  {overall.wer:7.2%}  {overall.chars:6d}  ({len(cases)} files)")
    if untruthed:
        print(f"{untruthed} input(s) without a .txt truth file were skipped", file=sys.stderr)
    return 0


def _summary(s: Score, files: int, skipped: int) -> dict:
    return {"cer": s.cer, "wer": s.wer, "chars": s.chars, "words": s.words, "char_edits": s.char_edits,
            "word_edits": s.word_edits, "files": files, "skipped_without_truth": skipped}
