"""Ours: the public ``OcrEngine``: one page end to end, and throughput under concurrency.

- ``test_page``: ``engine.ocr(page, max_tokens=N)`` on a decoded A4 page (PIL image): load,
  preprocess, encode, prefill, N greedy tokens, detokenise — what transformers' ``generate``
  does in ``test_baseline_transformers.py::test_page``. Each round uses a different page, and
  the embedding cache is off, so every round encodes.
- ``test_throughput[pages-cN]``: N distinct pages submitted at once (``engine.submit``), timed
  until the last result; the engine batches their decoding (continuous batching, ``max_slots`` =
  8). Every page is encoded, so on few cores the encoder bounds the gain.
- ``test_throughput[regions-cN]``: N requests for N different regions (``box``) of one page, at
  once, with the embedding cache starting empty: the page is encoded once, its prompt KV (text
  prefix + image rows) is computed once and copied to the other sequences, then the N prompts
  decode together. The HTTP version of both is the server's ``test_server_load.py``.

The engine's own timings (preprocess / encode / prefill / decode ms) of the last round go into
``extra_info``: make_results.py shows where a page's time goes.
"""

from __future__ import annotations

import os

import pytest

from harness import SETTINGS, construct, make_page, need, need_attr, run_rounds, tag

PAGE_DTYPES = ["f16", "q8_0", "q4_k_m"]
VISION_PRECISION = os.environ.get("GOTOCR_BENCH_VISION_PRECISION", "f32")
"""The page engines' vision arithmetic (``EngineConfig.vision_precision``): f32 (the default) or bf16."""
THROUGHPUT_DTYPE = os.environ.get("GOTOCR_BENCH_ENGINE_DTYPE", "f16")
CONCURRENCY = [1, 2, 4, 8]


def page_label(dtype: str) -> str:
    """A page configuration's name in the results: the text weight type, and bf16 vision if set."""
    return dtype if VISION_PRECISION == "f32" else f"{dtype}+{VISION_PRECISION}-vision"


def _engine(model_files, dtype: str, max_slots: int, embed_cache_bytes: int = 0, vision_precision: str = "f32"):
    need("llama_cpp", hint="pip install llama-cpp-python==0.3.36")
    OcrEngine = need_attr("gotocr_fast", "OcrEngine")
    files = model_files(dtype)
    # n_ctx is per request: the prompt (~290 tokens for one view) + max_tokens fits in 1024.
    return construct(OcrEngine, files.folder, n_threads=SETTINGS.threads, n_ctx=1024,
                     max_slots=max_slots, embed_cache_bytes=embed_cache_bytes, vision_precision=vision_precision)


@pytest.fixture(scope="module", params=PAGE_DTYPES)
def page_engine(request, model_files):
    eng = _engine(model_files, request.param, max_slots=1, vision_precision=VISION_PRECISION)
    yield request.param, eng
    eng.close()


@pytest.fixture(scope="module")
def batch_engine(model_files):
    # the cache holds one page's embeddings for the regions workload (the pages never repeat)
    eng = _engine(model_files, THROUGHPUT_DTYPE, max_slots=max(CONCURRENCY), embed_cache_bytes=64 << 20)
    # warm up once (first encode and decode allocate their buffers), so c1's single round is
    # not slower than steady state, which would inflate every scaling ratio
    eng.ocr(make_page(10_000), max_tokens=8)
    yield THROUGHPUT_DTYPE, eng
    eng.close()


def _timings(result) -> dict:
    t = result.timings
    return {"preprocess_ms": round(t.preprocess_ms, 1), "encode_ms": round(t.encode_ms, 1),
            "prefill_ms": round(t.prefill_ms, 1), "decode_ms": round(t.decode_ms, 1),
            "completion_tokens": result.completion_tokens, "prompt_tokens": result.prompt_tokens}


def test_page(benchmark, page_engine, pages):
    dtype, eng = page_engine
    n = SETTINGS.tokens
    rounds = SETTINGS.rounds_or(3)
    imgs = iter(pages(rounds + 2))
    results = []

    def ocr(page):
        results.append(eng.ocr(page, max_tokens=n))

    tag(benchmark, "page", "ours", page_label(dtype), units=1, unit="page")
    run_rounds(benchmark, ocr, rounds=rounds, setup=lambda: ((next(imgs),), {}))
    benchmark.extra_info.update(_timings(results[-1]))
    benchmark.extra_info["finish_reasons"] = sorted({r.finish_reason for r in results})


def _regions(page, n: int) -> list[tuple[int, int, int, int]]:
    """n different boxes: horizontal bands of the page."""
    w, h = page.size
    return [(0, h * i // n, w, h * (i + 1) // n) for i in range(n)]


@pytest.mark.parametrize("workload", ["pages", "regions"])
@pytest.mark.parametrize("concurrency", CONCURRENCY, ids=[f"c{c}" for c in CONCURRENCY])
def test_throughput(benchmark, batch_engine, pages, concurrency, workload):
    dtype, eng = batch_engine
    n = SETTINGS.tokens
    rounds = SETTINGS.rounds_or(1)  # a round is 30 s (c1) to minutes (c8) of steady work
    if workload == "pages":
        batches = iter([[(p, {}) for p in pages(concurrency * rounds)[i * concurrency:(i + 1) * concurrency]]
                        for i in range(rounds)])
    else:
        batches = iter([[(p, {"box": b}) for b in _regions(p, concurrency)]
                        for p in pages(rounds)])
    done = []

    def run(batch):
        reqs = [eng.submit(p, max_tokens=n, **opts) for p, opts in batch]
        done.append([r.result() for r in reqs])

    def setup():
        eng.cache.clear()  # every round encodes its pages (regions: once)
        return (next(batches),), {}

    tag(benchmark, "throughput", "ours", dtype, units=concurrency, unit="request",
        concurrency=concurrency, workload=workload)
    # no warm-up round: the fixture warmed the engine up, and a c8 round is minutes long
    run_rounds(benchmark, run, rounds=rounds, warmup=0, setup=setup)
    last = done[-1]
    benchmark.extra_info["completion_tokens"] = sum(r.completion_tokens for r in last)
    benchmark.extra_info["encodes"] = sum(not r.cache_hit for r in last)
    benchmark.extra_info["encode_ms_mean"] = round(sum(r.timings.encode_ms for r in last) / len(last), 1)
    benchmark.extra_info["share_cpu"] = type(eng.cpu_turns).__name__ == "CpuTurns"
