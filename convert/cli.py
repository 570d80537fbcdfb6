"""``gotocr convert SRC OUT [--outtype TYPE]``: checkpoint folder → model folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import ConvertError
from .gguf_io import ALL_OUTTYPES, DEFAULT_OUTTYPE



def build_parser(prog: str = "gotocr convert") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert a GOT-OCR2 checkpoint (GOT-OCR2.0 or transformers layout) into "
        "got-text-<outtype>.gguf (llama.cpp qwen2) and got-vision-<outtype>.gguf.",
    )
    parser.add_argument("src", help="checkpoint folder (config.json, *.safetensors or *.bin, tokenizer)")
    parser.add_argument("out", help="output model folder (created if missing)")
    parser.add_argument("--outtype", default=DEFAULT_OUTTYPE, choices=ALL_OUTTYPES,
                        help=f"weight type of the matmul weights (default: {DEFAULT_OUTTYPE}); q6_k, q5_k_m "
                             "and q4_k_m quantize the text model with llama.cpp's quantizer and write the "
                             "vision model at f16")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the converter; prints ``error: <message>`` and returns 2 on a ConvertError."""
    args = build_parser().parse_args(argv)
    try:
        from .checkpoint import convert_checkpoint

        files = convert_checkpoint(args.src, args.out, outtype=args.outtype, progress=not args.no_progress)
    except ConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output written", file=sys.stderr)
        return 130
    print(files.text)
    print(files.vision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
