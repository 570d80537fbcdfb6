"""``/metrics`` read the way Prometheus reads it: the text goes through prometheus_client's own
exposition-format parser, and the values must match the requests this test made."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict:
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(r.text)}


def samples(family, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == name}


def test_metrics_parse_as_prometheus_text(start_server, image_root):
    s = start_server("--allowed-root", str(image_root), "--slots", "3")
    assert httpx.post(s.url + "/v1/ocr", json={"image_file": "a.png"}).status_code == 200
    assert httpx.post(s.url + "/v1/ocr", json={"image_file": "sub/b.jpg"}).status_code == 200
    assert httpx.post(s.url + "/v1/ocr", json={"image_file": "../secret.png"}).status_code == 403
    families = scrape(s.url)

    kinds = {name: f.type for name, f in families.items() if name.startswith("gotocr_")}
    expected = {
        "gotocr_http_requests": "counter", "gotocr_http_requests_in_flight": "gauge",
        "gotocr_queue_depth": "gauge", "gotocr_active_slots": "gauge", "gotocr_slots": "gauge",
        "gotocr_model_ready": "gauge", "gotocr_ocr_items": "counter", "gotocr_rejected": "counter",
        "gotocr_cancelled": "counter", "gotocr_prompt_tokens": "counter", "gotocr_completion_tokens": "counter",
        "gotocr_stage_seconds": "histogram", "gotocr_engine_running": "gauge", "gotocr_engine_waiting": "gauge",
    }
    assert {k: kinds.get(k) for k in expected} == expected

    requests = samples(families["gotocr_http_requests"], "gotocr_http_requests_total")
    assert requests[(("route", "/v1/ocr"), ("status", "200"))] == 2
    assert requests[(("route", "/v1/ocr"), ("status", "403"))] == 1
    assert samples(families["gotocr_ocr_items"], "gotocr_ocr_items_total") == {(("finish_reason", "stop"),): 2}
    assert samples(families["gotocr_slots"], "gotocr_slots") == {(): 3}
    assert samples(families["gotocr_model_ready"], "gotocr_model_ready") == {(): 1}
    assert samples(families["gotocr_cancelled"], "gotocr_cancelled_total") == {(): 0}
    assert samples(families["gotocr_rejected"], "gotocr_rejected_total") == {}
    # the scrape itself is the one request in flight
    assert samples(families["gotocr_http_requests_in_flight"], "gotocr_http_requests_in_flight") == {(): 1}

    stage = families["gotocr_stage_seconds"]
    for name in ("input", "preprocess", "encode", "prefill", "decode", "total"):
        buckets = sorted(
            ((float(s.labels["le"]), s.value) for s in stage.samples
             if s.name == "gotocr_stage_seconds_bucket" and s.labels["stage"] == name))
        counts = [c for _, c in buckets]
        assert buckets[-1][0] == float("inf") and counts == sorted(counts), name  # cumulative
        count = samples(stage, "gotocr_stage_seconds_count")[(("stage", name),)]
        assert counts[-1] == count, name
        # every request has a total; the 403 has no input time (refused while resolving) nor item stages
        assert count == (3 if name == "total" else 2), name
        assert samples(stage, "gotocr_stage_seconds_sum")[(("stage", name),)] >= 0
