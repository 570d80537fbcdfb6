"""What GOT's no-repeat n-gram rule and the loop guard cost a decode step, 4096 tokens into a page.

A slot is prefilled once with the plain-OCR prompt (image rows included) and 4096 "generated" tokens
of real text (this repository's docs, tokenized by the model). Every round then copies that KV
into a second slot and decodes ``STEPS`` greedy tokens from the same position, choosing each token
the way the scheduler does (``Sampler.sample`` + ``accept``; with both on also ``LoopGuard.push`` and
``hold_from``), with a selection state that has seen the same 4096 tokens (the n-gram index of
prompt + history, the guard's runs). Rounds alternate: both off (untimed by pytest-benchmark,
timed by hand in the same setup), then both on (the timed rounds), so drift cancels.
``extra_info``:

- ``ratio_on_off``: median round with both on / median round with both off (the whole step:
  llama.cpp decode + logits + selection);
- ``selection_us_off`` / ``selection_us_on``: the selection alone, per step, on the rounds' own
  logits rows, many repetitions (the part that differs, measured without the decode's noise);
- ``added_fraction``: (selection on - selection off) / the median step with both off.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from harness import SETTINGS, construct, need, need_attr, run_rounds, tag
from test_lm import _embeddings, _split, prefill

HISTORY = 4096  # generated tokens before the measured steps (the reference's max_new_tokens)
STEPS = 32  # decode steps per round
REPEATS = 50  # repetitions of the selection-only timing per row
DOCS = ("docs/ARCHITECTURE.md", "README.md", "bench/README.md", "DEVELOPING.md", "docs/DECODING.md")


def _history_ids(tm) -> list[int]:
    root = Path(__file__).resolve().parent.parent
    text = "\n\n".join((root / p).read_text(encoding="utf-8") for p in DOCS if (root / p).is_file())
    ids = tm.tokenize(text)
    while len(ids) < HISTORY:  # short docs: read them again (a page of text, not a loop of tokens)
        ids = ids + ids
    return ids[:HISTORY]


@pytest.fixture(scope="module")
def primed(model_files, prompt_ids, got_config):
    need("llama_cpp", hint="pip install llama-cpp-python==0.3.36")
    TextModel = need_attr("gotocr_fast.engine.model", "TextModel")
    files = model_files("f16")
    n_ctx = len(prompt_ids) + HISTORY + STEPS + 64
    tm = construct(TextModel, files.text, n_slots=2, n_ctx_slot=n_ctx, n_batch=2048, n_threads=SETTINGS.threads)
    prefix, n_img, suffix = _split(prompt_ids)
    history = _history_ids(tm)
    embd = _embeddings(n_img, got_config.text.hidden_size)
    first, n = prefill(tm, prefix, embd, np.concatenate([suffix, np.array(history, np.int32)]))
    yield tm, list(prompt_ids) + history, n, first
    tm.close()


def _selection(ids: list[int], n_vocab: int, on: bool):
    """A fresh per-sequence selection state that has seen ``ids``; returns its per-token step."""
    from gotocr_fast.engine.defaults import LOOP_GUARD, REFERENCE_NO_REPEAT_NGRAM_SIZE
    from gotocr_fast.engine.repetition import LoopGuard
    from gotocr_fast.engine.sampling import Sampler, SamplingParams

    params = SamplingParams(no_repeat_ngram_size=REFERENCE_NO_REPEAT_NGRAM_SIZE if on else 0)
    sampler = Sampler(params, ids, n_vocab)
    if not on:
        def step(row: np.ndarray) -> int:
            t = sampler.sample(row)
            sampler.accept(t)
            return t
        return step
    guard = LoopGuard(LOOP_GUARD, capacity=2 * HISTORY)
    for t in ids[-HISTORY:]:
        guard.push(t)

    def step_on(row: np.ndarray) -> int:
        t = sampler.sample(row)
        sampler.accept(t)
        guard.push(t)
        guard.hold_from()
        return t
    return step_on


def _round(tm, n_past: int, token: int, step, rows: list | None = None) -> int:
    """``STEPS`` greedy tokens in slot 1 (a copy of the primed slot 0)."""
    seq = np.ones(1, np.int32)
    out = np.ones(1, np.int8)
    row0 = np.zeros(1, np.int32)
    for i in range(STEPS):
        tm.decode_tokens(np.array([token], np.int32), np.array([n_past + i], np.int32), seq, out)
        logits = tm.logits(row0)[0]
        if rows is not None:
            rows.append(logits.copy())
        token = step(logits)
    return token


def test_decode_step_with_ngram_ban_and_loop_guard(benchmark, primed):
    tm, ids, n_past, first = primed
    off_s: list[float] = []
    rows: list[np.ndarray] = []

    def fresh_slot() -> None:
        tm.free_sequence(1)
        tm.copy_sequence(0, 1, n_past)

    def setup():  # untimed: a round with both off, then the state for a round with both on
        fresh_slot()
        step = _selection(ids, tm.n_vocab, on=False)
        t0 = time.perf_counter()
        _round(tm, n_past, first, step, rows=None if rows else rows)  # the first round keeps its rows
        off_s.append(time.perf_counter() - t0)
        fresh_slot()
        return (tm, n_past, first, _selection(ids, tm.n_vocab, on=True)), {}

    tag(benchmark, "decode_guard", "ours", "f16", units=STEPS, unit="token", baseline="ban and guard off",
        history=HISTORY)
    run_rounds(benchmark, _round, rounds=6, setup=setup)
    on_s = list(benchmark.stats.stats.data)

    # the selection alone on the same rows, many times: its cost without the decode's noise
    def per_step_us(on: bool) -> float:
        best = float("inf")
        for _ in range(3):
            step = _selection(ids, tm.n_vocab, on)
            t0 = time.perf_counter()
            for _ in range(REPEATS):
                for r in rows:
                    step(r)
            best = min(best, (time.perf_counter() - t0) / (REPEATS * len(rows)) * 1e6)
        return best

    sel_off, sel_on = per_step_us(False), per_step_us(True)
    step_off_us = statistics.median(off_s[1:] or off_s) / STEPS * 1e6  # the first round warms up
    info = {
        "baseline_round_s": [round(t, 4) for t in off_s],
        "ratio_on_off": round(statistics.median(on_s) / statistics.median(off_s[1:] or off_s), 4),
        "selection_us_off": round(sel_off, 2),
        "selection_us_on": round(sel_on, 2),
        "step_us_off": round(step_off_us, 1),
        "added_fraction": round((sel_on - sel_off) / step_off_us, 5),
    }
    benchmark.extra_info.update(info)
    print(f"\n[bench] decode at {HISTORY} generated tokens: step {step_off_us / 1000:.1f} ms with both off; "
          f"ban + guard add {sel_on - sel_off:.1f} us/step ({info['added_fraction']:.3%}); "
          f"rounds on/off {info['ratio_on_off']:.3f}")
