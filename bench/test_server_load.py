"""The HTTP server under load: ``gotocr serve`` in a child process, N concurrent clients.

One round: ``concurrency`` client threads each send one ``POST /v1/ocr`` (a page as a data URI,
``max_tokens`` = GOTOCR_BENCH_TOKENS), timed until the last answer. Every request of the module
sends a page no earlier request sent, so the server's embedding cache never answers and every
request encodes: the HTTP version of ``test_engine.py::test_throughput[pages]``. ``extra_info``
records requests/s and the p50/p95 request latency of the last round.

One round per case by default (a c8 round is minutes of work); the server is warmed up once, by
a request in the fixture, instead of a warm-up round per case.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import SETTINGS, free_port, need, run_rounds, stop_server, tag, wait_until_healthy

CONCURRENCY = [1, 2, 4, 8]
REQUESTS_PER_CLIENT = 1
DTYPE = os.environ.get("GOTOCR_BENCH_ENGINE_DTYPE", "f16")


@pytest.fixture(scope="module")
def server(model_files, tmp_path_factory, fresh_pages):
    need("httpx", "uvicorn", "litestar", "llama_cpp", hint="pip install '.[test]'")
    import httpx

    folder = model_files(DTYPE).folder
    port = free_port()
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
        not_ready = wait_until_healthy(proc, url)
        if not_ready:
            pytest.fail(f"{not_ready}:\n{log_tail()}")
        r = httpx.post(url + "/v1/ocr", json={"image_file": _data_uri(fresh_pages(1)[0]), "max_tokens": 8},
                       timeout=600)
        if r.status_code != 200:
            pytest.fail(f"warm-up request failed ({r.status_code}): {r.text[:300]}\n{log_tail()}")
        yield SimpleNamespace(url=url, pid=proc.pid)
    finally:
        stop_server(proc)
        log.close()


@pytest.fixture(scope="module")
def fresh_pages(pages):
    """``fresh_pages(n)`` → n pages that no earlier call of this module returned."""
    used = 0

    def get(n: int):
        nonlocal used
        out = pages(used + n)[used:]
        used += n
        return out

    return get


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of process ``pid`` (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
def test_server_load(benchmark, server, fresh_pages, concurrency):
    import httpx

    n_rounds = SETTINGS.rounds_or(1)
    batches = iter([[_data_uri(p) for p in fresh_pages(concurrency * REQUESTS_PER_CLIENT)]
                    for _ in range(n_rounds)])
    n_tokens = SETTINGS.tokens
    server_url = server.url
    rounds: list[dict] = []

    def one_round(uris: list[str]) -> None:
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            with httpx.Client(base_url=server_url, timeout=600) as http:
                for k in range(REQUESTS_PER_CLIENT):
                    t0 = time.perf_counter()
                    uri = uris[i * REQUESTS_PER_CLIENT + k]
                    r = http.post("/v1/ocr", json={"image_file": uri, "max_tokens": n_tokens})
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt)
                        if r.status_code != 200:
                            errors.append(r.text[:200])

        t0 = time.perf_counter()
        cpu0, server_cpu0 = time.process_time(), _cpu_seconds(server.pid)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        client_cpu = time.process_time() - cpu0
        server_cpu = _cpu_seconds(server.pid) - server_cpu0
        assert not errors, errors
        rounds.append({"wall": wall, "latencies": latencies, "client_cpu": client_cpu, "server_cpu": server_cpu})

    tag(benchmark, "server", "ours", DTYPE, units=concurrency * REQUESTS_PER_CLIENT, unit="request",
        concurrency=concurrency)
    run_rounds(benchmark, one_round, rounds=n_rounds, warmup=0, setup=lambda: ((next(batches),), {}))
    last = rounds[-1]
    n = len(last["latencies"])
    benchmark.extra_info["requests_per_s"] = round(n / last["wall"], 3)
    benchmark.extra_info["latency_p50_s"] = round(_percentile(last["latencies"], 0.50), 3)
    benchmark.extra_info["latency_p95_s"] = round(_percentile(last["latencies"], 0.95), 3)
    # CPU use during the round, in cores: the server's should be near the thread count, the
    # client side's (this process: HTTP clients, nothing else) near zero
    benchmark.extra_info["server_cpu_cores"] = round(last["server_cpu"] / last["wall"], 2)
    benchmark.extra_info["client_cpu_cores"] = round(last["client_cpu"] / last["wall"], 2)
