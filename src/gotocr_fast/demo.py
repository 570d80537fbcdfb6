"""``gotocr demo``: the whole pipeline on a RANDOM-WEIGHT model, so it runs with no download.

synth (seeded random GOT checkpoint) → convert (two GGUFs) → OcrEngine on a generated sample page.
The text it prints is meaningless by construction: the weights are random, not GOT's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "sample_image"]

SAMPLE_TEXT = ("GOT-OCR2 demo page", "gotocr_fast: ggml vision + llama.cpp", "The quick brown fox 0123456789")


def sample_image():
    """The bundled sample page: black text on white, drawn deterministically with Pillow."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (640, 360), "white")
    d = ImageDraw.Draw(img)
    for i, line in enumerate(SAMPLE_TEXT):
        d.text((32, 48 + i * 72), line, fill=(0, 0, 0))
    d.rectangle((16, 16, 623, 343), outline=(40, 40, 40), width=2)
    return img


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gotocr demo", description=__doc__)
    p.add_argument("--config", default="tiny", choices=("tiny", "tiny-alt", "full"),
                   help="random model size: tiny (seconds) or full (real GOT sizes, ~1.4 GB, minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outtype", default="f32", choices=("f32", "f16"))
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--keep", metavar="DIR", default=None, help="keep the converted model in DIR")
    p.add_argument("--image", default=None, help="OCR this image instead of the sample page")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's and gotocr_fast's log lines")
    args = p.parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    from .convert import convert_checkpoint
    from .engine import OcrEngine
    from .synth import write_checkpoint

    print("NOTE: this demo uses RANDOM weights (gotocr_fast.synth), not the real GOT-OCR2 model: "
          "the OCR text below is meaningless by design.", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="gotocr-demo-") as tmp:
        t0 = time.perf_counter()
        ckpt = write_checkpoint(Path(tmp) / "checkpoint", config=args.config, seed=args.seed)
        model_dir = Path(args.keep) if args.keep else Path(tmp) / "model"
        files = convert_checkpoint(ckpt, model_dir, outtype=args.outtype, progress=False)
        t1 = time.perf_counter()
        print(f"random '{args.config}' checkpoint written and converted in {t1 - t0:.1f} s: "
              f"{files.text.name}, {files.vision.name}", file=sys.stderr)
        image = args.image if args.image else sample_image()
        with OcrEngine(model_dir, n_ctx=max(512, args.max_tokens + 2048), max_slots=1,
                       verbose=args.verbose) as engine:
            r = engine.ocr(image, max_tokens=args.max_tokens)
        print(f"--- OCR output (random weights, {r.completion_tokens} tokens, finish_reason={r.finish_reason}) ---")
        print(r.text)
        print("--- end ---")
        t = r.timings
        print(f"prompt {r.prompt_tokens} tokens; preprocess {t.preprocess_ms:.1f} ms, encode {t.encode_ms:.1f} ms, "
              f"prefill {t.prefill_ms:.1f} ms, decode {t.decode_ms:.1f} ms", file=sys.stderr)
        print("Reminder: the weights are RANDOM; convert a real GOT-OCR2 checkpoint with `gotocr convert` "
              "for real OCR.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
