"""The HTTP server under load: ``gotocr serve`` in a child process, N concurrent clients.

One round: ``concurrency`` client threads each send ``REQUESTS_PER_CLIENT`` ``POST /v1/ocr``
requests one after another (a page as a data URI, ``max_tokens`` = GOTOCR_BENCH_TOKENS), timed
until the last answer. ``extra_info`` records requests/s and the p50/p95 request latency of the
last round; compare with ``test_engine.py::test_throughput`` (the same work without HTTP).
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from harness import SETTINGS, need, run_rounds, tag

CONCURRENCY = [1, 2, 4, 8]
REQUESTS_PER_CLIENT = 2
DTYPE = os.environ.get("GOTOCR_BENCH_ENGINE_DTYPE", "f16")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(model_files, tmp_path_factory):
    need("httpx", "uvicorn", "litestar", "llama_cpp", hint="pip install '.[test]'")
    import httpx

    folder = model_files(DTYPE).folder
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = open(log_path, "wb")

    def log_tail() -> str:
        log.flush()
        return log_path.read_text(errors="replace")[-3000:]

    proc = subprocess.Popen(
        [sys.executable, "-m", "gotocr_fast", "serve", "--model", str(folder), "--host", "127.0.0.1",
         "--port", str(port), "--slots", str(max(CONCURRENCY)), "--threads", str(SETTINGS.threads),
         "--n-ctx", "1024", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_tail()}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in 600 s:\n{log_tail()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _data_uri(page) -> str:
    buf = io.BytesIO()
    page.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@pytest.mark.parametrize("concurrency", CONCURRENCY, ids=[f"c{c}" for c in CONCURRENCY])
def test_server_load(benchmark, server_url, pages, concurrency):
    import httpx

    uris = [_data_uri(p) for p in pages(concurrency)]
    n_tokens = SETTINGS.tokens
    rounds: list[dict] = []

    def one_round() -> None:
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            with httpx.Client(base_url=server_url, timeout=600) as http:
                for _ in range(REQUESTS_PER_CLIENT):
                    t0 = time.perf_counter()
                    r = http.post("/v1/ocr", json={"image_file": uris[i], "max_tokens": n_tokens})
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt)
                        if r.status_code != 200:
                            errors.append(r.text[:200])

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        assert not errors, errors
        rounds.append({"wall": wall, "latencies": latencies})

    tag(benchmark, "server", "ours", DTYPE, units=concurrency * REQUESTS_PER_CLIENT, unit="request",
        concurrency=concurrency)
    run_rounds(benchmark, one_round, rounds=2)
    last = rounds[-1]
    n = len(last["latencies"])
    benchmark.extra_info["requests_per_s"] = round(n / last["wall"], 3)
    benchmark.extra_info["latency_p50_s"] = round(_percentile(last["latencies"], 0.50), 3)
    benchmark.extra_info["latency_p95_s"] = round(_percentile(last["latencies"], 0.95), 3)
