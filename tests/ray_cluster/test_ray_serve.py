"""``gotocr serve --ray ADDRESS --replicas 2`` on a local Ray cluster, with the tiny random model.

The command runs as its own process (the one a user starts), joined to the test's cluster; the
test talks HTTP to it and reads each engine replica's counters through a Serve handle. Expected
texts come from an ``OcrEngine`` in this process (greedy decoding: the same text wherever it runs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ray_helpers import free_port, png_bytes

pytest.importorskip("ray", reason="Ray is not installed: pip install '.[ray]'")

import gotocr_fast._llama  # noqa: E402,F401 - required: a broken build fails, never skips
import gotocr_fast._vision  # noqa: E402,F401

from gotocr_fast.ray.serve import APP_NAME, ENGINE_DEPLOYMENT  # noqa: E402

MAX_TOKENS = 24
IMAGES = {f"{c}.png": ((60 + 9 * i, 40 + 5 * i), (30 * i, 200 - 20 * i, 90)) for i, c in enumerate("abcd")}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-serve-images")
    for name, (size, color) in IMAGES.items():
        (root / name).write_bytes(png_bytes(size, color))
    return root


@pytest.fixture(scope="module")
def reference(tiny_model_dir, image_root):
    from PIL import Image

    from gotocr_fast import OcrEngine

    engine = OcrEngine(str(tiny_model_dir), n_threads=1, n_ctx=1024, max_slots=1)
    cache: dict = {}

    def ocr(name: str, max_tokens: int = MAX_TOKENS):
        if (name, max_tokens) not in cache:
            cache[name, max_tokens] = engine.ocr(Image.open(image_root / name), max_tokens=max_tokens)
        return cache[name, max_tokens]

    try:
        yield ocr
    finally:
        engine.close()


class RayServer:
    def __init__(self, address: str, model: Path, root: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb")
        cmd = [sys.executable, "-m", "gotocr_fast", "serve", "--ray", address, "--replicas", "2",
               "--model", str(model), "--allowed-root", str(root), "--host", "127.0.0.1", "--port", str(self.port),
               "--slots", "2", "--n-ctx", "1024", "--default-max-tokens", str(MAX_TOKENS), "--log-level", "warning",
               "--shutdown-timeout", "5"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gotocr serve --ray exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"not ready within {timeout} s:\n{self.log()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(ray_cluster, tiny_model_dir, image_root, tmp_path_factory):
    s = RayServer(ray_cluster, tiny_model_dir, image_root, tmp_path_factory.mktemp("ray-serve-log") / "serve.log")
    try:
        s.wait_ready(240)
        yield s
    finally:
        code = s.stop()
    assert code == 0, s.log()  # SIGTERM: the app is deleted and the command exits cleanly


@pytest.fixture(scope="module")
def engines(server):
    """``stats()`` of every engine replica, by pid (asks until both answered)."""
    from ray import serve

    handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name=APP_NAME)

    def stats(n: int = 2, timeout: float = 60.0) -> dict[int, dict]:
        seen: dict[int, dict] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < n and time.monotonic() < deadline:
            try:
                s = handle.stats.remote().result(timeout_s=10)
            except Exception:  # noqa: BLE001 - a replica being replaced; ask again
                time.sleep(0.2)
                continue
            seen[s["pid"]] = s
        return seen

    return stats


def post_ocr(server, name: str, max_tokens: int = MAX_TOKENS) -> httpx.Response:
    return httpx.post(server.url + "/v1/ocr", json={"image_file": name, "max_tokens": max_tokens}, timeout=180)


def test_two_replicas_answer_as_the_local_engine(server, engines, reference):
    before = engines()
    assert len(before) == 2, before
    names = list(IMAGES) * 2
    results: list = [None] * len(names)

    def worker(i: int) -> None:
        results[i] = post_ocr(server, names[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, r in zip(names, results):
        assert r.status_code == 200, r.text
        want = reference(name)
        body = r.json()
        assert body["choices"][0]["text"] == want.text
        assert body["usage"]["completion_tokens"] == want.completion_tokens
        assert body["usage"]["prompt_tokens"] == want.prompt_tokens
    after = engines()
    assert after.keys() == before.keys()
    served = {pid: after[pid]["accepted"] - before[pid]["accepted"] for pid in after}
    assert sum(served.values()) == len(names)
    # 8 requests at once, 2 slots per replica: Serve must have spread them over both
    assert all(n > 0 for n in served.values()), served


def test_contract_routes(server, tiny_model_dir):
    assert httpx.get(server.url + "/health").json()["status"] == "ready"
    models = httpx.get(server.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == [Path(tiny_model_dir).name]
    r = httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png", "max_tokens": 5000})
    assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_request", "context_length_exceeded")
    r = httpx.post(server.url + "/v1/ocr", json={"image_file": "missing.png"})
    assert 400 <= r.status_code < 500
    metrics = httpx.get(server.url + "/metrics").text
    assert 'gotocr_http_requests_total{route="/v1/ocr",status="200"}' in metrics


def test_chat_completions_and_stream(server, reference, image_root):
    openai = pytest.importorskip("openai")
    import base64

    want = reference("b.png", max_tokens=20)
    uri = "data:image/png;base64," + base64.b64encode((image_root / "b.png").read_bytes()).decode()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    msgs = [{"role": "user", "content": [{"type": "text", "text": "OCR"}, {"type": "image_url", "image_url": {"url": uri}}]}]
    resp = client.chat.completions.create(model="x", messages=msgs, max_tokens=20)
    assert resp.choices[0].message.content == want.text
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model="x", messages=msgs, max_tokens=20, stream=True):
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == want.text
    assert finish == want.finish_reason


def _total(stats: dict[int, dict], key: str) -> int:
    return sum(s[key] for s in stats.values())


def test_client_disconnect_cancels_on_the_replica(server, engines, reference):
    # (if the request had finished by itself, nothing would be cancelled and the test fails)
    before = _total(engines(), "cancelled")
    body = json.dumps({"image_file": "c.png", "max_tokens": 900}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/ocr HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(1.5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = engines()
        if _total(now, "cancelled") == before + 1 and _total(now, "running") == 0:
            break
        time.sleep(0.2)
    assert _total(now, "cancelled") == before + 1, now
    assert _total(now, "running") == 0, now


def _stream_events(server, uri: str, max_tokens: int, first: threading.Event, out: list) -> None:
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]}]
    body = {"model": "x", "messages": msgs, "max_tokens": max_tokens, "stream": True}
    events = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=180) as r:
        out.append(r.status_code)
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                chunk = json.loads(line[6:]) if line != "data: [DONE]" else {}
                if any(c["delta"].get("content") for c in chunk.get("choices", ())):
                    first.set()
    first.set()
    out.append(events)


def test_replica_killed_while_serving(server, engines, reference, image_root):
    import base64

    from ray import serve

    pids = engines()
    assert len(pids) == 2
    victim = sorted(pids)[0]
    names = list(IMAGES)  # 4 streams, 2 slots per replica: two run on each replica
    outs: list[list] = [[] for _ in names]
    firsts = [threading.Event() for _ in names]
    threads = []
    for name, first, out in zip(names, firsts, outs):
        uri = "data:image/png;base64," + base64.b64encode((image_root / name).read_bytes()).decode()
        threads.append(threading.Thread(target=_stream_events, args=(server, uri, 300, first, out)))
    for t in threads:
        t.start()
    for f in firsts:
        assert f.wait(120)
    os.kill(victim, signal.SIGKILL)  # every stream has produced text: none can be replayed
    for t in threads:
        t.join(180)
    failed = 0
    for name, (status, events) in zip(names, outs):
        assert status == 200
        assert events[-1] == "[DONE]"
        error = [json.loads(e)["error"] for e in events[:-1] if '"error"' in e]
        if error:
            failed += 1
            assert error[0]["code"] == "replica_unavailable", error
        else:
            text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                           for e in events[:-1] if json.loads(e)["choices"])
            assert text == reference(name, max_tokens=300).text
    assert failed >= 1  # the victim held streams: they end with an error, never hang

    # the deployment recovers: a new replica replaces the killed one, and requests succeed
    r = post_ocr(server, "d.png")
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == reference("d.png").text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = engines(timeout=10)
        status = serve.status().applications[APP_NAME].deployments[ENGINE_DEPLOYMENT].status
        if len(now) == 2 and victim not in now and status == "HEALTHY":
            break
        time.sleep(0.5)
    assert len(now) == 2 and victim not in now, now
    assert status == "HEALTHY"
    results = [post_ocr(server, n) for n in names]
    assert [r.json()["choices"][0]["text"] for r in results] == [reference(n).text for n in names]
