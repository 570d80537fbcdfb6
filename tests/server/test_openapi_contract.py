"""The served OpenAPI document describes what the server really answers (scripted engine).

Each check here is one that schemathesis (``test_schemathesis.py``) found broken against the real
server: undocumented error statuses and Litestar's ``{"status_code", "detail"}`` error schema,
an un-matchable ``oneOf`` for the chat 200, SSE served as ``application/json``, lax coercion of
chat fields ("8" → 8, 0 → false) while ``/v1/ocr`` is strict.
"""

from __future__ import annotations

import json

import httpx
import pytest

from .conftest import png_bytes
from .test_http import data_uri

jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def server(start_module_server, module_image_root):
    return start_module_server("--allowed-root", str(module_image_root))


@pytest.fixture(scope="module")
def spec(server):
    return httpx.get(server.url + "/docs/openapi.json").json()


def _resolve(spec: dict, node: dict) -> dict:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = spec["components"]["schemas"][name]
    return node


def _validator(spec: dict, schema: dict) -> jsonschema.Draft202012Validator:
    # components.schemas referenced as "#/components/schemas/X": validate inside the whole document
    doc = {**spec, **schema}
    return jsonschema.Draft202012Validator(doc)


def _response_schema(spec: dict, path: str, method: str, status: int, media: str = "application/json") -> dict:
    responses = spec["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path}: {status} not documented ({sorted(responses)})"
    return responses[str(status)]["content"][media]["schema"]


def _chat_body(**extra) -> dict:
    return {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "OCR"}, {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}}]}], **extra}


@pytest.mark.parametrize(
    "path, body, status",
    [
        ("/v1/ocr", {"image_file": "../outside.png"}, 403),
        ("/v1/ocr", {"image_file": "missing.png"}, 400),
        ("/v1/ocr", {"image_file": data_uri(b"not an image")}, 415),
        ("/v1/ocr", {"image_file": "a.png", "temperature": 5}, 400),
        ("/v1/chat/completions", {"messages": []}, 400),
        ("/v1/chat/completions", {"messages": [{"role": "tool"}]}, 400),
    ],
)
def test_error_responses_are_documented_with_their_real_shape(server, spec, path, body, status):
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    schema = _response_schema(spec, path, "post", status)
    assert "error" in _resolve(spec, schema)["properties"]  # ours, not Litestar's {"status_code","detail"}
    _validator(spec, schema).validate(r.json())


def test_ocr_and_chat_document_every_client_error(spec):
    for path in ("/v1/ocr", "/v1/chat/completions"):
        documented = set(spec["paths"][path]["post"]["responses"])
        assert {"200", "400", "403", "413", "415", "429", "503"} <= documented, (path, documented)
    assert {"200", "503"} <= set(spec["paths"]["/health"]["get"]["responses"])


def test_chat_200_validates_and_stream_is_event_stream(server, spec):
    r = httpx.post(server.url + "/v1/chat/completions", json=_chat_body(), timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    _validator(spec, _response_schema(spec, "/v1/chat/completions", "post", 200)).validate(r.json())

    with httpx.stream("POST", server.url + "/v1/chat/completions", json=_chat_body(stream=True), timeout=30) as s:
        assert s.status_code == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[0])["object"] == "chat.completion.chunk"
    assert "text/event-stream" in spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]


def test_ocr_200_validates(server, spec):
    r = httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png"}, timeout=30)
    assert r.status_code == 200, r.text
    _validator(spec, _response_schema(spec, "/v1/ocr", "post", 200)).validate(r.json())


@pytest.mark.parametrize("extra", [{"crop": 0}, {"max_tokens": "8"}, {"stream": "true"}, {"temperature": "0"}])
def test_chat_fields_are_not_coerced(server, extra):
    r = httpx.post(server.url + "/v1/chat/completions", json=_chat_body(**extra), timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("image_file", ["", [], [[]], [""], [["a.png", ""]]])
def test_request_schema_refuses_what_the_server_refuses(server, spec, image_file):
    schema = spec["paths"]["/v1/ocr"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body = {"image_file": image_file}
    assert not _validator(spec, schema).is_valid(body)
    r = httpx.post(server.url + "/v1/ocr", json=body, timeout=30)
    assert r.status_code == 400, r.text


def test_request_examples_are_accepted(server, spec):
    for path in ("/v1/ocr", "/v1/chat/completions"):
        media = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        (example,) = media["examples"].values()
        r = httpx.post(server.url + path, json=example["value"], timeout=30)
        assert r.status_code == 200, (path, r.text)
