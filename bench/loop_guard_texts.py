"""Run the loop guard over real text: does it stay quiet, and how much would a stream hold back?

    python bench/loop_guard_texts.py FILE_OR_DIR... [--page 4096] [--loop-guard 256] [--ext .md .txt]

Every file (folders: every file with one of ``--ext``, recursively) is tokenized with GOT's
tokenizer (Qwen's tiktoken ranks, as the engine's text model) and fed to a fresh ``LoopGuard`` per
page of ``--page`` tokens, as if the model had read that text. Prints where the guard would have
stopped a "loop" (it must not, on real reading), and the streaming hold-back: how many tokens the
guard held at most, and their 99th percentile. Run it on a held-out set's reference
transcriptions to check the guard's thresholds (docs/DECODING.md); needs ``tiktoken``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np


def _encoder():
    import tiktoken

    from gotocr_fast.convert.vocab import find_qwen_tiktoken, read_tiktoken_ranks
    from gotocr_fast.tokens import SPECIAL_TOKENS

    pattern = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")  # Qwen's split pattern (digits one by one)
    return tiktoken.Encoding("qwen", pat_str=pattern, mergeable_ranks=read_tiktoken_ranks(find_qwen_tiktoken()),
                             special_tokens=dict(SPECIAL_TOKENS))


def _files(paths: list[str], exts: set[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts)
        elif p.is_file():
            out.append(p)
        else:
            sys.exit(f"{p}: no such file or folder")
    return out


def main(argv: list[str] | None = None) -> int:
    from gotocr_fast.convert.vocab import normalize_text
    from gotocr_fast.engine.defaults import LOOP_GUARD
    from gotocr_fast.engine.repetition import LoopGuard

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--page", type=int, default=4096, help="tokens per page (a fresh guard each)")
    ap.add_argument("--loop-guard", type=int, default=LOOP_GUARD.min_span, help="the guard's span in tokens")
    ap.add_argument("--ext", nargs="*", default=[".md", ".txt", ".mmd", ".tex", ".rst"])
    args = ap.parse_args(argv)
    params = replace(LOOP_GUARD, min_span=args.loop_guard)
    enc = _encoder()
    pages = tokens = 0
    fired: list[str] = []
    held: list[int] = []
    for f in _files(args.paths, {e.lower() for e in args.ext}):
        text = normalize_text(f.read_text(encoding="utf-8", errors="replace"))
        ids = enc.encode(text, disallowed_special=())
        for a in range(0, len(ids), args.page):
            guard = LoopGuard(params)
            pages += 1
            for i, t in enumerate(ids[a : a + args.page]):
                cut = guard.push(t)
                if cut is not None:
                    fired.append(f"{f} page {a // args.page + 1}: token {i + 1}, period {cut.period}, "
                                 f"{cut.repeats:.1f} repeats: {enc.decode(ids[a + cut.keep - cut.period : a + cut.keep])!r}")
                    break
                held.append(guard.n_tokens - guard.hold_from())
            tokens += min(args.page, len(ids) - a)
    h = np.asarray(held or [0])
    print(f"{pages} pages, {tokens} tokens; guard (span {params.min_span}, period <= {params.max_period}, "
          f">= {params.min_repeats} repeats) fired on {len(fired)} page(s)")
    print(f"stream hold-back: max {int(h.max())} tokens, 99th percentile {np.percentile(h, 99):.0f}, "
          f"mean {h.mean():.2f}")
    for line in fired:
        print("  fired:", line)
    return 1 if fired else 0


if __name__ == "__main__":
    sys.exit(main())
