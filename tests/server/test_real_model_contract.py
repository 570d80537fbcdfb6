"""The real server (tiny random-weight model, real HTTP on loopback) against its own OpenAPI
document (schemathesis), and ``/health`` while the engine is busy.

Needs the native build (skipped without it) and the ``schemathesis`` CLI for the contract run.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import gotocr_fast._vision  # noqa: E402,F401 - required: a broken build fails, never skips
import gotocr_fast._llama  # noqa: E402,F401 - required: a broken build fails, never skips

SLOTS = 8


@pytest.fixture(scope="module")
def model_server(start_module_server, tiny_model_dir, module_image_root):
    return start_module_server("--model", str(tiny_model_dir), "--allowed-root", str(module_image_root),
                               "--slots", str(SLOTS), "--threads", "2", "--n-ctx", "1024",
                               "--default-max-tokens", "16", fake=False, timeout=300)


def _schemathesis_cmd() -> list[str] | None:
    exe = shutil.which("schemathesis") or shutil.which("st")
    if exe is not None:
        return [exe]
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "schemathesis.cli"]


def test_schemathesis_contract(model_server, tmp_path: Path):
    """Every operation, generated positive and negative requests: no 5xx, and every response's
    status, content type, headers and body conform to the served schema.

    ``positive_data_acceptance`` is left out on purpose: a schema-valid ``image_file`` is any
    non-empty string, and a random string names no file under the allowed root (400) or no
    decodable image (415), so "valid data must be accepted" cannot hold for this API. The schema's
    request examples (real data-URI images) do run end to end through the model and are checked.
    """
    cmd = _schemathesis_cmd()
    if cmd is None:
        pytest.skip("schemathesis not installed")
    seed = os.environ.get("GOTOCR_SCHEMATHESIS_SEED", "1")
    run = [
        *cmd, "run", model_server.url + "/docs/openapi.json",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", "15", "--seed", seed, "--workers", "1",
        "--request-timeout", "30", "--generation-database", "none", "--no-color",
        "--suppress-health-check", "too_slow,filter_too_much",
        "--report", "junit", "--report-dir", str(tmp_path / "report"),
    ]
    t0 = time.monotonic()
    proc = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1"})
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"schemathesis failed (seed {seed}, {elapsed:.0f} s):\n{out[-6000:]}"
    # it really ran: every operation was tested, and the examples went through the model
    assert "Tested: 6" in out, out[-3000:]
    assert "Examples" in out and "2 passed" in out, out[-3000:]
    assert model_server.proc.poll() is None, "the server died during the run"


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)


def test_health_fast_while_8_requests_generate(model_server):
    url = model_server.url
    done: list[float] = []
    results: list[httpx.Response | BaseException] = []
    lock = threading.Lock()

    def generate(i: int) -> None:
        try:
            # long generations: greedy with random weights rarely stops early; n_ctx bounds it
            r = httpx.post(url + "/v1/ocr", json={"image_file": "a.png", "max_tokens": 900, "seed": i},
                           timeout=300)
        except BaseException as exc:  # noqa: BLE001 - reported below
            r = exc
        with lock:
            results.append(r)
            done.append(time.monotonic())

    threads = [threading.Thread(target=generate, args=(i,), daemon=True) for i in range(SLOTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while _metric(url, "gotocr_engine_running") < SLOTS:
        assert time.monotonic() < deadline and not done, "the 8 requests never ran together"
        time.sleep(0.02)

    latencies = []
    probe_start = time.monotonic()
    with httpx.Client(timeout=10) as client:
        while time.monotonic() - probe_start < 2.0:
            t0 = time.perf_counter()
            r = client.get(url + "/health")
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "ready"
            time.sleep(0.02)
    probe_end = time.monotonic()
    running_after = _metric(url, "gotocr_engine_running")

    for t in threads:
        t.join(300)
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results), results
    # the probes really ran under load: all 8 were still generating when they ended
    assert running_after == SLOTS and min(done) > probe_end, (running_after, min(done) - probe_end)
    assert len(latencies) >= 10
    print(f"health under load: n={len(latencies)} median={statistics.median(latencies) * 1000:.1f} ms "
          f"max={max(latencies) * 1000:.1f} ms")
    assert max(latencies) < 1.0 and statistics.median(latencies) < 0.25, sorted(latencies)[-5:]
