"""The server over real HTTP (uvicorn in a child process) with the scripted engine of fake_engine.py.

What is under test is the HTTP layer: request parsing, every error status and body, limits, auth,
back-pressure, disconnects, streaming, metrics, OpenAPI. The engine's answer describes the pages it
received (see fake_engine.describe), so expected texts are written out here by hand.
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

OCR_FIELDS = {"id", "object", "created", "model", "choices", "usage"}


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in r.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def metric(base: str, name: str) -> float:
    text = httpx.get(base + "/metrics").text
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"{name} not in /metrics"
    return total


@pytest.fixture(scope="module")
def server(start_module_server, module_image_root):
    return start_module_server("--allowed-root", str(module_image_root), "--max-images", "6",
                               "--max-body-bytes", "200000")


def test_seed_client_request_and_response_shape(server):
    # exactly what the seed README's python example sends (json string, explicit headers)
    payload = json.dumps({"image_file": "a.png", "type": "format", "max_tokens": 2048, "temperature": 0,
                          "top_p": 0.9, "repetition_penalty": 1})
    r = httpx.post(server.url + "/v1/ocr", content=payload,
                   headers={"Content-Type": "application/json", "Accept": "*/*", "Connection": "keep-alive"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == OCR_FIELDS and body["object"] == "text_completion" and body["id"].startswith("ocr-")
    assert body["model"] == "fake-model"
    text = "format|-|-|crop=0|40x30#10,20,30"
    assert body["choices"] == [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop",
                                "stop_reason": 151645, "prompt_logprobs": None}]
    # fake engine: 30 + 256 per page prompt tokens, one per character + <|im_end|>
    assert body["usage"] == {"prompt_tokens": 286, "completion_tokens": len(text) + 1,
                             "total_tokens": 286 + len(text) + 1}


def test_every_field_reaches_the_engine(server):
    r = httpx.post(server.url + "/v1/ocr", json={
        "image_file": ["a.png", ["pages/p1.png", "pages/p2.png"], "sub/b.jpg"],
        "type": "plain", "color": "green", "crop": True, "max_tokens": 200, "temperature": 0.7,
        "top_p": 0.5, "repetition_penalty": 1.2, "seed": 42})
    assert r.status_code == 200, r.text
    texts = [c["text"] for c in r.json()["choices"]]
    assert [c["index"] for c in r.json()["choices"]] == [0, 1, 2]
    assert texts[0] == "plain|green|-|crop=1|40x30#10,20,30"
    assert texts[1] == "plain|green|-|crop=1|11x10#1,1,1;12x10#2,2,2"  # one multi-page prompt
    assert texts[2].startswith("plain|green|-|crop=1|20x10#")
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == 286 + (30 + 512) + 286
    assert usage["completion_tokens"] == sum(len(t) + 1 for t in texts)
    r = httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png", "box": [0, 0, 20, 15], "max_tokens": 7})
    c = r.json()["choices"][0]
    assert (c["text"], c["finish_reason"], c["stop_reason"]) == ("plain|-", "length", None)
    r = httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png", "box": [[0, 0, 20, 15], [1, 1, 5, 5]]})
    assert r.json()["choices"][0]["text"].startswith("plain|-|[[0,0,20,15],[1,1,5,5]]|")


def test_folder_and_pdf_expand_to_choices(server):
    r = httpx.post(server.url + "/v1/ocr", json={"image_file": ["pages", "doc.pdf"]})
    assert r.status_code == 200, r.text
    sizes = [c["text"].split("|")[-1].split("#")[0] for c in r.json()["choices"]]
    # pages/: p1, p2, p10 (natural order); doc.pdf rendered at 200 dpi: 50x40 pt → 139x111 px
    assert sizes[:3] == ["11x10", "12x10", "20x10"]
    assert len(sizes) == 5


def test_multipart_upload(server):
    files = [("file", ("x.png", png_bytes((9, 8), (4, 5, 6)), "image/png")),
             ("file", ("y.png", png_bytes((3, 2), (7, 8, 9)), "image/png"))]
    r = httpx.post(server.url + "/v1/ocr", files=files,
                   data={"type": "format", "max_tokens": "100", "box": "[0,0,2,2]", "crop": "false"})
    assert r.status_code == 200, r.text
    assert [c["text"] for c in r.json()["choices"]] == ["format|-|[0,0,2,2]|crop=0|9x8#4,5,6",
                                                         "format|-|[0,0,2,2]|crop=0|3x2#7,8,9"]
    r = httpx.post(server.url + "/v1/ocr", files=[("file", ("z.txt", b"hello", "text/plain"))])
    assert_error(r, 415, "invalid_image")
    r = httpx.post(server.url + "/v1/ocr", files=[("file", ("x.png", png_bytes(), "image/png"))],
                   data={"max_tokens": "lots"})
    assert_error(r, 400, "invalid_request")


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"image_file": "../secret.png"}, 403, "path_outside_root"),
        ({"image_file": "/etc/passwd"}, 403, "path_outside_root"),
        ({"image_file": "missing.png"}, 400, "file_not_found"),
        ({"image_file": "http://127.0.0.1:1/x.png"}, 403, "urls_disabled"),
        ({"image_file": "data:image/png;base64,AAAA"}, 415, "invalid_image"),
        ({"image_file": "data:image/png;base64,"}, 415, "empty_input"),
        ({"image_file": "data:image/png;base64,!!"}, 400, "invalid_data_uri"),
        ({"image_file": 5}, 400, "invalid_request"),
        ({}, 400, "invalid_request"),
        ({"image_file": "a.png", "type": "fancy"}, 400, "invalid_request"),
        ({"image_file": "a.png", "color": "pink"}, 400, "invalid_request"),
        ({"image_file": "a.png", "temperature": 3}, 400, "invalid_request"),
        ({"image_file": "a.png", "top_p": 0}, 400, "invalid_request"),
        ({"image_file": "a.png", "max_tokens": 0}, 400, "invalid_request"),
        ({"image_file": "a.png", "max_tokens": 100000}, 400, "max_tokens_too_large"),
        ({"image_file": "a.png", "box": [1, 2, 3]}, 400, "invalid_box"),
        ({"image_file": [["a.png", "a.png"]], "box": [0, 0, 5, 5]}, 400, "invalid_request"),  # engine refuses
        ({"image_file": ["a.png"] * 7}, 413, "too_many_images"),
        ({"image_file": []}, 400, "missing_image"),
    ],
)
def test_client_errors_are_json_4xx(server, body, status, code):
    assert_error(httpx.post(server.url + "/v1/ocr", json=body), status, code)


def test_malformed_bodies_and_limits(server):
    url = server.url + "/v1/ocr"
    assert_error(httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"}), 400,
                 "invalid_json")
    assert_error(httpx.post(url, content=b"", headers={"Content-Type": "application/json"}), 400, "invalid_json")
    assert_error(httpx.post(url, content=b"a=b", headers={"Content-Type": "application/x-www-form-urlencoded"}),
                 415, "unsupported_media_type")
    big = json.dumps({"image_file": data_uri(b"\0" * 300_000)})
    assert_error(httpx.post(url, content=big, headers={"Content-Type": "application/json"}), 413)
    assert_error(httpx.get(url), 405)
    assert_error(httpx.get(server.url + "/v1/nothing"), 404)
    bomb = _png_header(50_000, 50_000)
    assert_error(httpx.post(url, json={"image_file": data_uri(bomb)}), 413, "image_too_large")


def _png_header(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_body_limit_without_content_length(server):
    def gen():
        for _ in range(50):
            yield b"x" * 10_000

    r = httpx.post(server.url + "/v1/ocr", content=gen(), headers={"Content-Type": "application/json"})
    assert_error(r, 413)


def test_api_key(start_server, image_root):
    s = start_server("--allowed-root", str(image_root), env={"GOTOCR_API_KEY": "s3cret"})
    url = s.url + "/v1/ocr"
    body = {"image_file": "a.png"}
    assert_error(httpx.post(url, json=body), 401, "invalid_api_key")
    assert_error(httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(httpx.post(url, json=body, headers={"Authorization": "Bearer s3cret-and-more"}), 401)
    assert_error(httpx.post(url, json=body, headers={"Authorization": "Basic s3cret"}), 401)
    assert_error(httpx.get(s.url + "/v1/models"), 401)
    assert_error(httpx.post(s.url + "/v1/chat/completions", json={}), 401)
    ok = httpx.post(url, json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200, ok.text
    assert httpx.get(s.url + "/health").status_code == 200  # ops endpoints stay open
    models = httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer s3cret"}).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "fake-model"


def test_health_is_503_while_loading(start_server, image_root):
    s = start_server("--allowed-root", str(image_root), env={"FAKE_LOAD_DELAY": "2"}, ready=False)
    r = httpx.get(s.url + "/health")
    assert r.status_code == 503 and r.json()["status"] == "loading" and "retry-after" in r.headers
    assert_error(httpx.post(s.url + "/v1/ocr", json={"image_file": "a.png"}), 503, "model_loading")
    assert httpx.get(s.url + "/version").status_code == 200
    s.wait_ready(30)
    assert httpx.get(s.url + "/health").json()["status"] == "ready"
    assert httpx.post(s.url + "/v1/ocr", json={"image_file": "a.png"}).status_code == 200


def test_concurrency_16_parallel_same_answers(server):
    alone = httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png"}).json()["choices"][0]["text"]
    results: list = [None] * 16

    def worker(i: int) -> None:
        results[i] = httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png"}, timeout=60)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]
    assert {r.json()["choices"][0]["text"] for r in results} == {alone}
    assert metric(server.url, "gotocr_active_slots") == 0 and metric(server.url, "gotocr_queue_depth") == 0


def test_backpressure_429_with_retry_after(start_server, image_root):
    s = start_server("--allowed-root", str(image_root), "--slots", "1", "--queue", "1",
                     env={"FAKE_TOKEN_DELAY": "0.05"})
    results: list = []

    def worker() -> None:
        results.append(httpx.post(s.url + "/v1/ocr", json={"image_file": "a.png"}, timeout=60))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 200, 429, 429], statuses
    refused = [r for r in results if r.status_code == 429]
    for r in refused:
        assert_error(r, 429, "queue_full")
        assert r.headers["retry-after"] == "1"
    assert metric(s.url, "gotocr_rejected_total") == 2


def _raw_post_and_drop(url: str, body: bytes, wait: float) -> None:
    """Send a request, wait, then close the socket without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/ocr HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(wait)


def _wait_metric(base: str, name: str, value: float, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(base, name) == value:
            return
        time.sleep(0.05)
    assert metric(base, name) == value


def test_client_disconnect_frees_the_slot(start_server, image_root):
    s = start_server("--allowed-root", str(image_root), "--slots", "1", env={"FAKE_TOKEN_DELAY": "0.2"})
    _raw_post_and_drop(s.url, json.dumps({"image_file": "a.png"}).encode(), wait=0.6)
    _wait_metric(s.url, "gotocr_cancelled_total", 1)
    _wait_metric(s.url, "gotocr_active_slots", 0)
    _wait_metric(s.url, "gotocr_engine_running", 0)  # the engine stopped decoding it
    # the slot is usable again at once (it would otherwise be busy for ~6 s more)
    t0 = time.monotonic()
    r = httpx.post(s.url + "/v1/ocr", json={"image_file": "a.png", "max_tokens": 3}, timeout=30)
    assert r.status_code == 200 and time.monotonic() - t0 < 3


def test_streaming_disconnect_frees_the_slot(start_server, image_root):
    s = start_server("--allowed-root", str(image_root), "--slots", "1", env={"FAKE_TOKEN_DELAY": "0.2"})
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}}]}], "stream": True}
    with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
    _wait_metric(s.url, "gotocr_cancelled_total", 1)
    _wait_metric(s.url, "gotocr_active_slots", 0)
    _wait_metric(s.url, "gotocr_engine_running", 0)


def test_openai_client_chat_and_stream(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    uri = data_uri(png_bytes((12, 7), (3, 2, 1)))
    content = [{"type": "text", "text": "OCR with format, color: blue"},
               {"type": "image_url", "image_url": {"url": uri}}]
    resp = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": content}],
                                          max_tokens=500, temperature=0)
    expected = "format|blue|-|crop=0|12x7#3,2,1"
    assert resp.choices[0].message.content == expected
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 286 and resp.usage.completion_tokens == len(expected) + 1
    stream = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": content}],
                                            stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == expected and finish == "stop"
    assert usage.completion_tokens == len(expected) + 1
    # explicit fields (extra_body) override the text
    resp = client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": content}],
        extra_body={"ocr_type": "plain", "box": [0, 0, 6, 6], "color": "red"})
    assert resp.choices[0].message.content == "plain|red|[0,0,6,6]|crop=0|12x7#3,2,1"
    models = client.models.list()
    assert [m.id for m in models.data] == ["fake-model"]


def test_chat_errors(server):
    url = server.url + "/v1/chat/completions"
    assert_error(httpx.post(url, json={"messages": [{"role": "user", "content": "hi"}]}), 400, "missing_image")
    assert_error(httpx.post(url, json={"messages": []}), 400)
    assert_error(httpx.post(url, json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]}), 400, "invalid_image_url")
    assert_error(httpx.post(url, json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}}]}]}), 403, "urls_disabled")
    assert_error(httpx.post(url, json={"n": 2, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}}]}]}), 400)
    assert_error(httpx.post(url, content=b"[", headers={"Content-Type": "application/json"}), 400)


def test_metrics_and_version_and_openapi(server):
    httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png"})
    httpx.post(server.url + "/v1/ocr", json={"image_file": "../x"})
    text = httpx.get(server.url + "/metrics").text
    assert 'gotocr_http_requests_total{route="/v1/ocr",status="200"}' in text
    assert 'gotocr_http_requests_total{route="/v1/ocr",status="403"}' in text
    for stage in ("input", "preprocess", "encode", "prefill", "decode", "total"):
        assert f'gotocr_stage_seconds_count{{stage="{stage}"}}' in text, stage
    assert metric(server.url, "gotocr_prompt_tokens_total") >= 286
    v = httpx.get(server.url + "/version").json()
    assert set(v) == {"version", "model"}
    spec = httpx.get(server.url + "/docs/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    ocr_body = spec["paths"]["/v1/ocr"]["post"]["requestBody"]["content"]
    assert set(ocr_body) == {"application/json", "multipart/form-data"}
    assert ocr_body["application/json"]["schema"]["required"] == ["image_file"]
    assert "/v1/chat/completions" in spec["paths"] and "/health" in spec["paths"]
    # every $ref resolves
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    for ref in refs:
        assert ref.split("/")[-1] in spec["components"]["schemas"], ref


def test_graceful_shutdown_finishes_in_flight(start_server, image_root):
    s = start_server("--allowed-root", str(image_root), env={"FAKE_TOKEN_DELAY": "0.03"})
    result = {}

    def worker() -> None:
        result["r"] = httpx.post(s.url + "/v1/ocr", json={"image_file": "a.png"}, timeout=30)

    t = threading.Thread(target=worker)
    t.start()
    _wait_metric(s.url, "gotocr_active_slots", 1)  # the request is decoding when the signal comes
    rc = s.stop()
    t.join()
    assert result["r"].status_code == 200 and result["r"].json()["choices"][0]["finish_reason"] == "stop"
    log = s.log_path.read_text(errors="replace")
    assert rc == 0, (rc, log)  # a clean drain is a normal exit, not death by SIGTERM (143)
    assert "Traceback" not in log


def test_shutdown_timeout_answers_503_and_ends_streams(start_server, image_root):
    # each answer takes ~10 s to decode, the drain allows 1 s: the server has to give up on both
    s = start_server("--allowed-root", str(image_root), "--shutdown-timeout", "1",
                     env={"FAKE_TOKEN_DELAY": "0.4"})
    results: dict[str, object] = {}

    def plain() -> None:
        results["ocr"] = httpx.post(s.url + "/v1/ocr", json={"image_file": "a.png"}, timeout=60)

    def stream() -> None:
        body = {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}}]}], "stream": True}
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=60) as r:
            results["stream_status"] = r.status_code
            results["events"] = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]

    threads = [threading.Thread(target=plain), threading.Thread(target=stream)]
    for t in threads:
        t.start()
    _wait_metric(s.url, "gotocr_active_slots", 2)  # both are decoding when the signal comes
    rc = s.stop()
    for t in threads:
        t.join()
    log = s.log_path.read_text(errors="replace")
    r = results["ocr"]
    assert isinstance(r, httpx.Response)
    assert r.headers["content-type"].startswith("application/json"), (r.status_code, r.text, log)
    assert_error(r, 503, "shutting_down")
    assert results["stream_status"] == 200
    events = results["events"]
    assert isinstance(events, list) and events[-1] == "[DONE]", (events, log)
    assert json.loads(events[-2])["error"]["code"] == "shutting_down", events
    assert all("error" not in json.loads(e) for e in events[:-2])  # the text that came before is intact
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert rc == 0, (rc, log)
