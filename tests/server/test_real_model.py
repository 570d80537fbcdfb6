"""``gotocr serve`` with the real engine and a tiny random-weight model, over real HTTP.

The expected texts come from the engine itself called in this process (``OcrEngine.ocr``), not from
the server: the server must return exactly what the library returns, alone or under load, and the
usage must be the engine's token counts. Needs the native build (skipped without it).
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time

import httpx
import pytest

from .conftest import png_bytes

import gotocr_fast._vision  # noqa: E402,F401 - required: a broken build fails, never skips
import gotocr_fast._llama  # noqa: E402,F401 - required: a broken build fails, never skips


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def model_server(start_module_server, tiny_model_dir, module_image_root):
    return start_module_server("--model", str(tiny_model_dir), "--allowed-root", str(module_image_root),
                               "--slots", "4", "--threads", "2", "--n-ctx", "1024",
                               "--default-max-tokens", "24", fake=False, timeout=300)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, module_image_root):
    from PIL import Image

    from gotocr_fast import OcrEngine

    engine = OcrEngine(str(tiny_model_dir), n_threads=2, n_ctx=1024, max_slots=1)
    try:
        def ocr(name: str, **options):
            return engine.ocr(Image.open(module_image_root / name).convert("RGB"), **options)

        yield ocr
    finally:
        engine.close()


def test_ocr_matches_the_library(model_server, reference):
    want = reference("a.png", max_tokens=24)
    r = httpx.post(model_server.url + "/v1/ocr", json={"image_file": "a.png", "max_tokens": 24}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert choice["text"] == want.text and choice["finish_reason"] == want.finish_reason
    assert body["usage"] == {"prompt_tokens": want.prompt_tokens, "completion_tokens": want.completion_tokens,
                             "total_tokens": want.prompt_tokens + want.completion_tokens}
    assert choice["stop_reason"] == (151645 if want.finish_reason == "stop" else None)
    fmt = reference("a.png", max_tokens=24, type="format")
    r = httpx.post(model_server.url + "/v1/ocr", json={"image_file": "a.png", "max_tokens": 24, "type": "format"},
                   timeout=120)
    assert r.json()["choices"][0]["text"] == fmt.text
    assert r.json()["usage"]["prompt_tokens"] == fmt.prompt_tokens  # " with format" is in the prompt


def test_16_parallel_same_greedy_text(model_server, reference):
    want = reference("a.png", max_tokens=16).text
    results: list = [None] * 16

    def worker(i: int) -> None:
        results[i] = httpx.post(model_server.url + "/v1/ocr", json={"image_file": "a.png", "max_tokens": 16},
                                timeout=300)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 16, [r.text for r in results if r.status_code != 200]
    assert [r.json()["choices"][0]["text"] for r in results] == [want] * 16


def test_chat_stream_matches_the_library(model_server, reference, module_image_root):
    openai = pytest.importorskip("openai")
    want = reference("a.png", max_tokens=20)
    client = openai.OpenAI(base_url=model_server.url + "/v1", api_key="unused")
    uri = data_uri((module_image_root / "a.png").read_bytes())
    msgs = [{"role": "user", "content": [{"type": "text", "text": "OCR"}, {"type": "image_url", "image_url": {"url": uri}}]}]
    resp = client.chat.completions.create(model="x", messages=msgs, max_tokens=20)
    assert resp.choices[0].message.content == want.text
    assert resp.usage.completion_tokens == want.completion_tokens
    pieces = []
    for chunk in client.chat.completions.create(model="x", messages=msgs, max_tokens=20, stream=True):
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
    assert "".join(pieces) == want.text


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)


def _metric_sum(url: str, name: str) -> float:
    """A counter summed over its labels."""
    return sum(float(line.split()[1]) for line in httpx.get(url + "/metrics").text.splitlines()
               if line.startswith(name + "{"))


def test_disconnect_frees_slot_with_real_engine(model_server):
    # fits the 1024-token context (the prompt is under 100 tokens); the loop guard off, so only
    # the model's own stop token could end it before the client leaves
    body = json.dumps({"image_file": "a.png", "max_tokens": 900, "loop_guard": 0}).encode()
    host, port = model_server.url.removeprefix("http://").split(":")
    before = _metric(model_server.url, "gotocr_cancelled_total")
    finished_before = _metric_sum(model_server.url, "gotocr_ocr_items_total")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/ocr HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(1.0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (_metric(model_server.url, "gotocr_active_slots") == 0
                and _metric(model_server.url, "gotocr_engine_running") == 0):
            break
        time.sleep(0.1)
    assert _metric(model_server.url, "gotocr_active_slots") == 0
    assert _metric(model_server.url, "gotocr_engine_running") == 0
    # the request ran and has exactly one outcome: cancelled when the client left, or finished
    # (the tiny model stopped within the second); a refused request would have neither
    outcome = (_metric(model_server.url, "gotocr_cancelled_total") - before,
               _metric_sum(model_server.url, "gotocr_ocr_items_total") - finished_before)
    assert outcome in ((1, 0), (0, 1)), outcome


def test_corrupt_image_is_415_not_500(model_server):
    r = httpx.post(model_server.url + "/v1/ocr", json={"image_file": data_uri(png_bytes()[:50])}, timeout=60)
    assert r.status_code == 415 and r.json()["error"]["code"] == "invalid_image"
