"""Ours over Ray: replicas against one engine, and what Ray itself costs per request and per page.

One local Ray cluster for the suite (``GOTOCR_BENCH_THREADS`` CPUs, default 2), started and stopped
here. Needs the ``ray`` extra (skipped with the reason otherwise).

- ``test_ray_pages[local-1x2]``: the baseline, one ``OcrEngine`` with 2 threads; a round submits N
  distinct pages at once and waits for the last (``test_engine.py::test_throughput`` shape).
- ``test_ray_pages[serve-2x1]``: the same N pages, in the same run, sent at once to 2 Serve
  replicas of 1 CPU / 1 thread each (``gotocr serve --ray --replicas 2 --replica-cpus 1``'s engine
  deployment, called through a handle: HTTP costs the same in both cases and is measured by
  ``test_server_load.py``). The ratio of the two is the replicas' gain on this machine.
- ``test_ray_overhead[request-*]`` (tiny model, whatever the config): one short request (same
  image, embeddings cached, 8 tokens) on a local engine, then through a 1-replica deployment:
  the difference is Ray Serve's cost per request (routing, the streaming call, pickling).
- ``test_ray_overhead[batch-*]`` (tiny model): K small image files OCR'd by a local engine
  (read + submit all + wait), then by ``gotocr batch --ray``'s pipeline with one actor
  (``run_batch``: listing, actor start and model load, per-batch calls, the driver's writes):
  (difference) / K is Ray Data's cost per page, its fixed start cost spread over K pages.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from harness import SETTINGS, cached_dir, make_page, need, run_rounds, source_hash, tag

PAGES_PER_ROUND = 4
PAGES_DTYPE = os.environ.get("GOTOCR_BENCH_ENGINE_DTYPE", "f16")  # as test_engine.py's throughput
OVERHEAD_TOKENS = 8
BATCH_PAGES = 32


@pytest.fixture(scope="module")
def ray_cluster():
    need("ray", hint="install the ray extra: pip install '.[ray]'")
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=SETTINGS.threads, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024 * 1024)
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    """The tiny random-weight model (f32), cached like the suite's other models."""
    from gotocr_fast import synth

    need("gotocr_fast.convert")
    import gotocr_fast.convert as convert

    def build(tmp: Path) -> None:
        ckpt = synth.write_checkpoint(tmp / "ckpt", "tiny", "hf", seed=0)
        convert.convert_checkpoint(ckpt, tmp / "model", outtype="f32", progress=False)

    key = "tiny-ray-" + source_hash(Path(synth.__file__), Path(convert.__file__).parent)
    return cached_dir(key, build, prune_prefix="tiny-ray-") / "model"


def _deploy_engines(model: Path, replicas: int, slots: int, name: str):
    """The engine deployment of ``gotocr serve --ray`` alone, 1 CPU and 1 thread per replica."""
    from ray import serve

    from gotocr_fast.ray.replica import EngineReplica
    from gotocr_fast.server.settings import ServerSettings

    settings = ServerSettings(model=str(model), threads=1, slots=slots, n_ctx=1024)
    app = serve.deployment(EngineReplica).options(
        name="OcrEngine", num_replicas=replicas, max_ongoing_requests=slots, ray_actor_options={"num_cpus": 1},
    ).bind(settings)
    return serve.run(app, name=name, route_prefix=None).options(stream=True)


def _remote_ocr(handle, image, max_tokens: int):
    from gotocr_fast.ray import wire

    for kind, payload in handle.generate.remote(image, {"max_tokens": max_tokens}):
        if kind == wire.RESULT:
            return payload
        if kind == wire.ERROR:
            raise wire.unpack_error(payload)
    raise RuntimeError("no result")


def _all_at_once(fn, items) -> list:
    results: list = [None] * len(items)

    def run(i: int) -> None:
        results[i] = fn(items[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("setup", ["local-1x2", "serve-2x1"])
def test_ray_pages(benchmark, setup, ray_cluster, model_files, pages):
    from gotocr_fast import OcrEngine

    n, tokens = PAGES_PER_ROUND, SETTINGS.tokens
    rounds = SETTINGS.rounds_or(1)
    folder = model_files(PAGES_DTYPE).folder
    # distinct pages in every round and both setups (no embedding-cache hit anywhere)
    offset = 0 if setup == "local-1x2" else 100
    batches = iter([pages(offset + n * (r + 1))[offset + n * r:] for r in range(rounds)])
    warm = [make_page(10_000 + offset + i) for i in range(n)]
    results: list = []
    if setup == "local-1x2":
        engine = OcrEngine(folder, n_threads=2, n_ctx=1024, max_slots=n)
        engine.ocr(warm[0], max_tokens=8)  # first encode and decode allocate their buffers

        def one_round(batch):
            reqs = [engine.submit(p, stream=False, max_tokens=tokens) for p in batch]
            results.extend(r.result() for r in reqs)
    else:
        handle = _deploy_engines(folder, replicas=2, slots=n // 2, name="bench-pages")
        # n at once, n/2 slots per replica: each replica warms up
        _all_at_once(lambda p: _remote_ocr(handle, p, 8), warm)

        def one_round(batch):
            results.extend(_all_at_once(lambda p: _remote_ocr(handle, p, tokens), batch))

    tag(benchmark, "ray_pages", "ours", PAGES_DTYPE, units=n, unit="page", setup=setup)
    try:
        run_rounds(benchmark, one_round, rounds=rounds, warmup=0, setup=lambda: ((next(batches),), {}))
    finally:
        if setup == "local-1x2":
            engine.close()
        else:
            from ray import serve

            serve.delete("bench-pages")
    benchmark.extra_info["completion_tokens"] = sorted({r.completion_tokens for r in results})


@pytest.mark.parametrize("path", ["request-local", "request-serve"])
def test_ray_overhead_request(benchmark, path, ray_cluster, tiny_model):
    from PIL import Image

    from gotocr_fast import OcrEngine

    image = Image.new("RGB", (200, 150), (30, 120, 200))
    if path == "request-local":
        engine = OcrEngine(tiny_model, n_threads=1, n_ctx=1024, max_slots=1)

        def one():
            return engine.ocr(image, max_tokens=OVERHEAD_TOKENS)
    else:
        handle = _deploy_engines(tiny_model, replicas=1, slots=1, name="bench-request")

        def one():
            return _remote_ocr(handle, image, OVERHEAD_TOKENS)

    tag(benchmark, "ray_overhead", "ours", "f32", units=1, unit="request", path=path, config="tiny")
    try:
        for _ in range(3):
            one()  # warm-up: buffers, embedding cache, the replica's first call
        result = run_rounds(benchmark, one, rounds=20, warmup=2)
    finally:
        if path == "request-local":
            engine.close()
        else:
            from ray import serve

            serve.delete("bench-request")
    assert result.completion_tokens == OVERHEAD_TOKENS or result.finish_reason == "stop"


@pytest.fixture(scope="module")
def batch_inputs(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("ray-batch-in")
    for i in range(BATCH_PAGES):
        Image.new("RGB", (120 + i, 90), (i * 7 % 256, 60, 180)).save(folder / f"p{i:03d}.png")
    return folder


@pytest.mark.parametrize("path", ["batch-local", "batch-ray"])
def test_ray_overhead_batch(benchmark, path, ray_cluster, tiny_model, batch_inputs, tmp_path_factory):
    from gotocr_fast import OcrEngine
    from gotocr_fast.ray.batch import BatchJob, run_batch

    files = sorted(batch_inputs.iterdir())
    options = {"max_tokens": OVERHEAD_TOKENS}
    if path == "batch-local":
        engine = OcrEngine(tiny_model, n_threads=1, n_ctx=1024, max_slots=4)

        def one():
            reqs = [engine.submit(f.read_bytes(), stream=False, **options) for f in files]
            return [r.result() for r in reqs]
    else:
        def one():
            job = BatchJob(sources=[str(batch_inputs)], out=tmp_path_factory.mktemp("ray-batch-out"),
                           engine_args={"model_dir_or_text_gguf": str(tiny_model), "n_threads": 1, "n_ctx": 1024,
                                        "max_slots": 4},
                           options=options, concurrency=1, actor_cpus=1, batch_size=4, progress=False)
            report = run_batch(job)
            assert len(report.written) == len(files) and not report.failures
            return report

    tag(benchmark, "ray_overhead", "ours", "f32", units=len(files), unit="page", path=path, config="tiny")
    try:
        run_rounds(benchmark, one, rounds=3, warmup=1)
    finally:
        if path == "batch-local":
            engine.close()
