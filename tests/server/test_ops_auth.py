"""With ``--api-key`` the operational pages that reveal the service's traffic and surface
(``/metrics``, ``/docs`` and its OpenAPI schema) need the key like ``/v1`` does; ``--public-ops``
opens them again; ``/health`` is open either way (load balancers carry no key)."""

from __future__ import annotations

import httpx

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
OPS = ("/metrics", "/docs/openapi.json", "/docs")


def test_api_key_protects_metrics_and_docs(start_server):
    s = start_server(env={"GOTOCR_API_KEY": KEY})
    for path in (*OPS, "/v1/models"):
        r = httpx.get(s.url + path)
        assert r.status_code == 401, (path, r.status_code)
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(s.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        assert httpx.get(s.url + path, headers=AUTH).status_code == 200, path
    assert httpx.get(s.url + "/health").status_code == 200
    # the scrape with the key counts the refused ones
    assert 'gotocr_http_requests_total{route="/metrics",status="401"} 2.0' in httpx.get(
        s.url + "/metrics", headers=AUTH).text


def test_public_ops_opens_metrics_and_docs_only(start_server):
    s = start_server("--public-ops", env={"GOTOCR_API_KEY": KEY})
    for path in OPS:
        assert httpx.get(s.url + path).status_code == 200, path
    assert httpx.get(s.url + "/v1/models").status_code == 401
    assert httpx.get(s.url + "/health").status_code == 200
