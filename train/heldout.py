"""Greedy character error rate of a training state on the held-out pages, by the training code.

``python -m train.heldout STATE [--kinds line,block,box] [--pages 24] [--start 0]`` (STATE: a run
folder with ``checkpoint.pt`` or a compact state, such as ``train/checkpoint``) reads the first
``--pages`` held-out pages of each kind (:func:`gotocr_fast.reading.heldout_pages`: seeds no
training page uses) with the PyTorch model in float32 and prints each kind's CER with one example.

It answers "is this state better than that one" before anything is exported or converted; the
engine's own figures for an exported state come from ``bench/test_demo_accuracy.py``. At a few
dozen pages a kind the CER of neighbouring states moves by several points, so compare states on
the same pages and take only clear differences.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from gotocr_fast import reading

from .model import use_fast_vision_attention
from .export import load_state
from .train import evaluate

KINDS = ("line", "block", "box")


def heldout_cer(state: Path, kinds=KINDS, pages: int = 24, start: int = 0) -> dict[str, tuple[float, list]]:
    """{kind: (CER, [(truth, read), ...])} for ``pages`` held-out pages of each kind."""
    model = load_state(state)
    use_fast_vision_attention(model)
    return {kind: evaluate(model, list(reading.heldout_pages(pages, kind=kind, start=start)))[0::2]
            for kind in kinds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.heldout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("state", type=Path)
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, of: " + ", ".join(KINDS))
    p.add_argument("--pages", type=int, default=24, help="pages per kind")
    p.add_argument("--start", type=int, default=0, help="index of the first held-out page")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        p.error(f"--kinds: unknown kind {', '.join(unknown)}" if unknown else "--kinds: none given")
    if args.pages < 1:
        p.error("--pages must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    for kind, (cer, pairs) in heldout_cer(args.state, kinds, args.pages, args.start).items():
        truth, got = pairs[0]
        print(f"{args.state} held-out {kind} ({len(pairs)} pages): CER {cer:.3f}; e.g. {truth!r} -> {got!r}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
