"""``gotocr demo``: read a printed sample page with the bundled demo model, no download needed.

The bundled model (:mod:`gotocr_fast.demo_model`) is a small GOT-architecture model trained on
printed text lines; it is not GOT-OCR2. The demo draws a sample page, reads it (whole page, then
one line through a box prompt) and prints the text next to the truth with its character error
rate. ``--random CONFIG`` instead runs the pipeline on a seeded random-weight GOT checkpoint
(meaningless text; real GOT sizes with ``full``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["SAMPLE_LINES", "main", "nearest_line", "sample_box", "sample_image", "sample_page"]

SAMPLE_LINES = ("Invoice #4821 of 2024-03-12", "Total: $1,249.00", "Thank you for your order!")
SAMPLE_SEED = 2025
SAMPLE_BOX_LINE = 1


def sample_page():
    """The demo's page: :data:`SAMPLE_LINES` printed as a page of the demo model's task."""
    import numpy as np

    from .reading import DEJAVU_FACES, available_fonts, render_page

    # the same page on every machine where DejaVu Sans is installed; Pillow's font elsewhere
    font = "dejavu-sans" if "dejavu-sans" in available_fonts() else "pillow"
    assert font == "pillow" or font in DEJAVU_FACES
    return render_page(np.random.default_rng(SAMPLE_SEED), lines=SAMPLE_LINES, fonts=(font,),
                       font_size_range=(1 / 16, 1 / 16))


def sample_box(page) -> list[int]:
    """A pixel box around line :data:`SAMPLE_BOX_LINE` of the sample page, with a small margin."""
    x1, y1, x2, y2 = page.line_boxes[SAMPLE_BOX_LINE]
    pad = 0.2 * (y2 - y1)
    w, h = page.image.size
    return [max(0, int(x1 - pad)), max(0, int(y1 - pad)), min(w, int(x2 + pad) + 1), min(h, int(y2 + pad) + 1)]


def nearest_line(lines, text: str) -> int:
    """Index of the line of ``lines`` that ``text`` is closest to, by character error rate."""
    from .evaluation import score

    return min(range(len(lines)), key=lambda i: score(lines[i], text).cer)


def sample_image():
    """The sample page's image (a PIL image)."""
    return sample_page().image


def _report(label: str, truth: str, result) -> float:
    from .evaluation import score

    s = score(truth, result.text)
    print(f"--- {label} ---")
    for name, text in (("truth", truth), ("read ", result.text)):
        lines = text.split("\n") or [""]
        print(f"{name}: {lines[0]}")
        for line in lines[1:]:
            print(f"       {line}")
    print(f"CER {s.cer:.2%} ({s.char_edits} of {s.chars} characters), {result.completion_tokens} tokens, "
          f"finish_reason={result.finish_reason}")
    return s.cer


def _bundled(args) -> int:
    from . import demo_model
    from .engine import OcrEngine

    print(f"note: {demo_model.NOTICE}", file=sys.stderr)
    t0 = time.perf_counter()
    model = demo_model.model_dir(args.outtype)
    print(f"demo model ready in {time.perf_counter() - t0:.1f} s: {model}", file=sys.stderr)
    page = sample_page()
    if args.save_sample:
        page.image.save(args.save_sample)
        print(f"sample page written to {args.save_sample}", file=sys.stderr)
    with OcrEngine(model, n_ctx=1024, max_slots=1, verbose=args.verbose) as engine:
        if args.image:
            r = engine.ocr(args.image, max_tokens=args.max_tokens)
            print(r.text)
            return 0
        whole = engine.ocr(page.image, max_tokens=args.max_tokens)
        box = sample_box(page)
        one = engine.ocr(page.image, box=box, max_tokens=args.max_tokens)
    w, h = page.image.size
    _report(f"whole page ({w}x{h} pixels, {len(page.lines)} lines)", page.truth, whole)
    _report(f"box {box} (line {SAMPLE_BOX_LINE + 1} only)", page.lines[SAMPLE_BOX_LINE], one)
    nearest = nearest_line(page.lines, one.text)
    if nearest != SAMPLE_BOX_LINE:
        print(f"(the box read is closest to line {nearest + 1} of the page: box mode is this model's weakest "
              "skill, it often reads a neighbouring line)")
    t = whole.timings
    print(f"whole page: prompt {whole.prompt_tokens} tokens; preprocess {t.preprocess_ms:.1f} ms, encode "
          f"{t.encode_ms:.1f} ms, prefill {t.prefill_ms:.1f} ms, decode {t.decode_ms:.1f} ms", file=sys.stderr)
    return 0


def _random(args) -> int:
    from .convert import convert_checkpoint
    from .engine import OcrEngine
    from .synth import write_checkpoint

    print("NOTE: --random uses RANDOM weights (gotocr_fast.synth): the OCR text below is meaningless by "
          "design; it shows the pipeline runs at the chosen sizes.", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="gotocr-demo-") as tmp:
        t0 = time.perf_counter()
        ckpt = write_checkpoint(Path(tmp) / "checkpoint", config=args.random, seed=args.seed)
        model_dir = Path(tmp) / "model"
        files = convert_checkpoint(ckpt, model_dir, outtype=args.outtype, progress=False)
        print(f"random '{args.random}' checkpoint written and converted in {time.perf_counter() - t0:.1f} s: "
              f"{files.text.name}, {files.vision.name}", file=sys.stderr)
        image = args.image if args.image else sample_image()
        with OcrEngine(model_dir, n_ctx=max(512, args.max_tokens + 2048), max_slots=1,
                       verbose=args.verbose) as engine:
            r = engine.ocr(image, max_tokens=args.max_tokens)
        print(f"--- OCR output (random weights, {r.completion_tokens} tokens, finish_reason={r.finish_reason}) ---")
        print(r.text)
        print("--- end ---")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gotocr demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=None, help="read this image instead of the sample page")
    p.add_argument("--save-sample", metavar="FILE.png", default=None, help="also save the sample page")
    p.add_argument("--outtype", default=None,
                   help="weight type the model is converted to (default: f16 for the demo model, f32 with --random)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="tokens to generate at most (default 160 with the demo model, 48 with --random)")
    p.add_argument("--random", metavar="CONFIG", default=None, choices=("tiny", "tiny-alt", "full"),
                   help="run a seeded RANDOM-weight GOT checkpoint of this size instead (meaningless text)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --random checkpoint")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's and gotocr_fast's log lines")
    args = p.parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from .demo_model import DEFAULT_OUTTYPE, has_bundle

    if not args.random and not has_bundle():
        print("note: this build has no bundled demo model (train/ holds its training state); running "
              "the pipeline on a random-weight checkpoint instead", file=sys.stderr)
        args.random = "tiny"
    if args.random:
        args.outtype = args.outtype or "f32"
        args.max_tokens = args.max_tokens or 48
        return _random(args)
    args.outtype = args.outtype or DEFAULT_OUTTYPE
    args.max_tokens = args.max_tokens or 160
    return _bundled(args)


if __name__ == "__main__":
    sys.exit(main())
