"""One page end to end, ours against transformers in alternating rounds, so that machine drift cancels.

``test_engine.py::test_page`` and ``test_baseline_transformers.py::test_page`` time the same
work minutes apart; on a shared VM both move by 10-30 % between such runs, as much as the margin
being checked (a page is ≈ 3× faster with f16 weights). Here every timed round of ours
(``OcrEngine.ocr``: preprocess, encode, prefill, N greedy tokens) comes right after one round of
transformers' ``generate`` on the same page image, with the same threads,
and ``RESULTS.md`` takes the ratio of the two series. Each round uses a page neither side has
seen, and our embedding cache is off, so both encode every round. Transformers runs in a child
process: PyTorch and ggml share one OpenMP runtime, which slows both once both have thread teams
(``baselines/torch_page_worker.py``).
"""

from __future__ import annotations

import pytest

from harness import BASELINE_HINT, SETTINGS, need, run_rounds, tag
from test_engine import PAGE_DTYPES, VISION_PRECISION, _engine, page_label

ROUNDS = 2  # a round is ≈ 90 s of transformers and 25-35 s of ours
WARMUP_TOKENS = 8


@pytest.fixture(scope="module")
def transformers_page(checkpoint_dir, prompt_ids, pages):
    """``run(page) -> seconds`` for transformers f32 in its own process (``TorchPageWorker``: one
    process holding both OpenMP teams slows both), warmed up on a page no round uses."""
    need("torch", "transformers", hint=BASELINE_HINT)
    from baselines.torch_page_worker import TorchPageWorker

    worker = TorchPageWorker(checkpoint_dir, "f32", SETTINGS.threads, prompt_ids)

    def run(page, n_tokens: int) -> float:
        elapsed, generated = worker.run(page, n_tokens)
        assert generated == n_tokens, f"transformers generated {generated} tokens, not {n_tokens}"
        return elapsed

    try:
        run(pages(1)[0], WARMUP_TOKENS)  # first-call allocations stay out of the timed rounds
        yield run
    finally:
        worker.close()


@pytest.fixture(scope="module", params=PAGE_DTYPES)
def our_engine(request, model_files, pages):
    eng = _engine(model_files, request.param, max_slots=1, vision_precision=VISION_PRECISION)
    eng.ocr(pages(1)[0], max_tokens=WARMUP_TOKENS)
    yield request.param, eng
    eng.close()


def test_page_paired(benchmark, transformers_page, our_engine, pages):
    dtype, eng = our_engine
    n = SETTINGS.tokens
    rounds = SETTINGS.rounds_or(ROUNDS)
    # pages 1.. (page 0 warmed both sides up); each dtype's rounds use pages of their own
    first = 1 + PAGE_DTYPES.index(dtype) * rounds
    todo = iter(pages(first + rounds)[first:])
    theirs_s: list[float] = []
    results = []

    def setup():  # untimed by pytest-benchmark: transformers' round on the page ours gets next
        page = next(todo)
        theirs_s.append(transformers_page(page, n))
        return (page,), {}

    def ocr(page):
        results.append(eng.ocr(page, max_tokens=n))

    tag(benchmark, "page_paired", "ours", page_label(dtype), units=1, unit="page", baseline="transformers",
        baseline_dtype="f32")
    run_rounds(benchmark, ocr, rounds=rounds, warmup=0, setup=setup)
    benchmark.extra_info["baseline_round_s"] = [round(t, 4) for t in theirs_s]
    benchmark.extra_info["baseline_process"] = "child"
    tokens = sorted({r.completion_tokens for r in results})
    benchmark.extra_info["completion_tokens"] = tokens
    # same work on both sides, or the ratio means nothing
    assert tokens == [n], f"ours generated {tokens} tokens per page, not {n} (finish: " \
                          f"{sorted({r.finish_reason for r in results})})"
