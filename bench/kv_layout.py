"""Decode speed of the shared KV pool against one KV stream per slot, alternating in one process.

    python bench/kv_layout.py TEXT_GGUF [--fill 286 1536] [--steps 32] [--rounds 3] [--threads 2]

Both contexts are made from the same loaded model: ``per-slot`` is the layout the engine used
before (``kv_unified = false``, 4 streams of 8192 cells), ``shared`` the one it uses now (one
stream of 8192 cells, ``engine/model.py``). For every context fill (prompt positions per
sequence, token ids standing in for image rows: the cost of attention only depends on the count)
each round times ``--steps`` decode steps of 1 sequence, then of 4 sequences at once, on one
layout and then the other, so drift of a shared machine hits both alike. Prints ms per step
(min over rounds) and the ratio shared / per-slot.
"""

from __future__ import annotations

import argparse
import ctypes
import time

import numpy as np

from gotocr_fast.engine.model import load_llama_cpp
from gotocr_fast.llama_load import model_params


def make_ctx(ll, model, *, unified: bool, n_ctx: int, n_seq: int, threads: int):
    p = ll.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_seq_max = n_seq
    p.n_batch = 2048
    p.n_ubatch = 512
    p.n_threads = p.n_threads_batch = threads
    p.kv_unified = unified
    p.no_perf = True
    p.type_k = p.type_v = 1  # f16, the engine's default
    p.flash_attn_type = 0  # off, as the engine on a CPU-only build
    ctx = ll.llama_init_from_model(model, p)
    assert ctx, "llama.cpp could not create the context"
    return ctx


def decode(native, ctx_ptr, toks, pos, seq, out):
    rc = native.decode_tokens(ctx_ptr, np.asarray(toks, np.int32), np.asarray(pos, np.int32),
                              np.asarray(seq, np.int32), np.asarray(out, np.int8))
    assert rc == 0, f"llama_decode: {rc}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("text_gguf")
    ap.add_argument("--fill", type=int, nargs="+", default=[286, 1536])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from gotocr_fast import _llama as native

    ll = load_llama_cpp()
    model = ll.llama_model_load_from_file(a.text_gguf.encode(), model_params(ll, a.text_gguf))
    n_seq, n_ctx = 4, 8192
    layouts = {
        "per-slot": make_ctx(ll, model, unified=False, n_ctx=n_seq * n_ctx, n_seq=n_seq, threads=a.threads),
        "shared": make_ctx(ll, model, unified=True, n_ctx=n_ctx, n_seq=n_seq, threads=a.threads),
    }
    for fill in a.fill:
        best: dict[tuple[str, int], float] = {}
        for name, ctx in layouts.items():  # the prompts, once per layout
            ptr = ctypes.cast(ctx, ctypes.c_void_p).value
            ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
            for s in range(n_seq):
                for c in range(0, fill, 512):
                    k = min(512, fill - c)
                    decode(native, ptr, 1000 + np.arange(c, c + k) % 5000 + s, np.arange(c, c + k),
                           np.full(k, s), np.zeros(k))
        for _ in range(a.rounds):
            for n in (1, n_seq):
                for name, ctx in layouts.items():
                    ptr = ctypes.cast(ctx, ctypes.c_void_p).value
                    mem = ll.llama_get_memory(ctx)
                    t0 = time.perf_counter()
                    for step in range(a.steps):
                        decode(native, ptr, [2000 + step] * n, [fill + step] * n, list(range(n)), [1] * n)
                    dt = (time.perf_counter() - t0) * 1000 / a.steps
                    for s in range(n):  # back to the prompt for the next round
                        ll.llama_memory_seq_rm(mem, s, fill, -1)
                    best[(name, n)] = min(best.get((name, n), float("inf")), dt)
        for n in (1, n_seq):
            old, new = best[("per-slot", n)], best[("shared", n)]
            print(f"fill {fill:5d}  {n} seq: per-slot {old:7.1f} ms/step  shared {new:7.1f} ms/step  "
                  f"({new / n:6.1f} ms/token)  shared/per-slot {new / old:5.2f}", flush=True)
    for ctx in layouts.values():
        ll.llama_free(ctx)
    ll.llama_model_free(model)


if __name__ == "__main__":
    main()
