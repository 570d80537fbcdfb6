"""The decoding options over HTTP (scripted engine): ``no_repeat_ngram_size`` and ``loop_guard`` reach
the engine from /v1/ocr (JSON and multipart) and chat completions (extra body fields), the server's
``--loop-guard`` default applies to requests that give none, and ``finish_reason: "repetition"``
(the loop guard's stop) comes back in every response shape and is what the OpenAPI document says.

The scripted engine (fake_engine.py) appends ``|ngram=<n>`` / ``|guard=<n>`` to its answer when it
receives those options, and stops at ``loop_guard`` characters with finish_reason "repetition".
"""

from __future__ import annotations

import json

import httpx
import pytest

from .conftest import png_bytes
from .test_http import assert_error, data_uri

BASE = "plain|-|-|crop=0|40x30#10,20,30"  # the scripted answer for a.png


@pytest.fixture(scope="module")
def server(start_module_server, module_image_root):
    return start_module_server("--allowed-root", str(module_image_root))


@pytest.fixture(scope="module")
def spec(server):
    return httpx.get(server.url + "/docs/openapi.json").json()


def _chat(server, **extra):
    uri = data_uri(png_bytes((12, 7), (3, 2, 1)))
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "OCR"},
                                                      {"type": "image_url", "image_url": {"url": uri}}]}], **extra}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)


def test_ocr_json_fields_reach_the_engine(server):
    r = httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png", "no_repeat_ngram_size": 0,
                                                 "loop_guard": 500}, timeout=30)
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    assert (c["text"], c["finish_reason"], c["stop_reason"]) == (BASE + "|ngram=0|guard=500", "stop", 151645)
    # not given: left to the engine's per-mode defaults (nothing sent)
    r = httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png"}, timeout=30)
    assert r.json()["choices"][0]["text"] == BASE


def test_ocr_multipart_fields_reach_the_engine(server):
    r = httpx.post(server.url + "/v1/ocr", files={"file": ("x.png", png_bytes(), "image/png")},
                   data={"no_repeat_ngram_size": "20", "loop_guard": "0"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == BASE + "|ngram=20|guard=0"


def test_repetition_finish_reason_in_ocr_responses(server, spec):
    r = httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png", "loop_guard": 9}, timeout=30)
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    assert (c["text"], c["finish_reason"], c["stop_reason"]) == (BASE[:9], "repetition", None)
    assert r.json()["usage"]["completion_tokens"] == 9
    schema = spec["paths"]["/v1/ocr"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    from .test_openapi_contract import _validator

    _validator(spec, schema).validate(r.json())
    broken = json.loads(r.text)
    broken["choices"][0]["finish_reason"] = "looped"
    assert not _validator(spec, schema).is_valid(broken)  # the document lists the reasons exactly


@pytest.mark.parametrize("body, field", [
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ({"no_repeat_ngram_size": 2.5}, "no_repeat_ngram_size"),
    ({"loop_guard": -5}, "loop_guard"),
    ({"loop_guard": "64"}, "loop_guard"),
])
def test_bad_values_are_400(server, body, field):
    err = assert_error(httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png", **body}, timeout=30), 400)
    assert field in err["message"]
    err = assert_error(_chat(server, **body), 400)
    assert field in err["message"]


def test_chat_extra_body_and_repetition(server, spec):
    r = _chat(server, no_repeat_ngram_size=3, loop_guard=400)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "plain|-|-|crop=0|12x7#3,2,1|ngram=3|guard=400"

    r = _chat(server, loop_guard=5)
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("plain", "repetition")
    schema = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    from .test_openapi_contract import _validator

    _validator(spec, schema).validate(r.json())

    uri = data_uri(png_bytes((12, 7), (3, 2, 1)))
    body = {"stream": True, "loop_guard": 5, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}}]}]}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as s:
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert text == "plain" and finishes == ["repetition"] and events[-1] == "[DONE]"


def test_openai_client_passes_extra_body(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    uri = data_uri(png_bytes((12, 7), (3, 2, 1)))
    resp = client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]}],
        extra_body={"no_repeat_ngram_size": 20, "loop_guard": 7})
    assert resp.choices[0].finish_reason == "repetition" and resp.choices[0].message.content == "plain|-"


def test_server_loop_guard_setting_is_the_default(start_server, image_root):
    server = start_server("--allowed-root", str(image_root), "--loop-guard", "12")
    r = httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png"}, timeout=30)
    c = r.json()["choices"][0]
    assert (c["text"], c["finish_reason"]) == (BASE[:12], "repetition")
    # a request's own value wins, 0 included
    r = httpx.post(server.url + "/v1/ocr", json={"image_file": "a.png", "loop_guard": 0}, timeout=30)
    assert r.json()["choices"][0]["text"] == BASE + "|guard=0"
    r = _chat(server)
    assert r.json()["choices"][0]["finish_reason"] == "repetition"


def test_schema_documents_the_options(spec):
    body = spec["paths"]["/v1/ocr"]["post"]["requestBody"]["content"]
    for media in ("application/json", "multipart/form-data"):
        props = body[media]["schema"]["properties"]
        assert {"no_repeat_ngram_size", "loop_guard"} <= set(props), media
    chat = json.dumps(spec["paths"]["/v1/chat/completions"]["post"]["requestBody"])
    components = json.dumps(spec["components"]["schemas"])
    assert "no_repeat_ngram_size" in components and "loop_guard" in components, chat[:200]
    assert "repetition" in components
