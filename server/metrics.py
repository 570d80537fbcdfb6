"""The server's Prometheus metrics, kept in a registry of its own through ``prometheus_client``.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (several apps in one process,
as in the tests, never share counters) and ``render()`` writes it in the text exposition format
0.0.4. The wrappers below keep the call sites short (``requests.inc(route, status)``); the
library's metric objects are thread-safe, so worker threads and the event loop may both update them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import prometheus_client as prom

__all__ = ["Metrics", "STAGES", "CONTENT_TYPE"]

STAGES = ("input", "preprocess", "encode", "prefill", "decode", "total")
"""Latency stages: input = resolve/fetch/decode the request's images (server); preprocess, encode,
prefill, decode = the engine's timings per item; total = the whole HTTP request."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The media type of ``Metrics.render()``'s text (what ``generate_latest`` writes)."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Counter:
    """A counter with positional label values: ``inc("/v1/ocr", "200")``."""

    def __init__(self, metric: prom.Counter, labelnames: Sequence[str]) -> None:
        self._metric, self._labelled = metric, bool(labelnames)

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        (self._metric.labels(*labels) if self._labelled else self._metric).inc(amount)


class Gauge:
    def __init__(self, metric: prom.Gauge) -> None:
        self._metric = metric

    def set(self, value: float) -> None:
        self._metric.set(value)

    def add(self, value: float) -> None:
        self._metric.inc(value)


class Histogram:
    """A histogram with positional label values after the observation: ``observe(0.2, "encode")``."""

    def __init__(self, metric: prom.Histogram) -> None:
        self._metric = metric

    def observe(self, value: float, *labels: str) -> None:
        self._metric.labels(*labels).observe(value)


class Metrics:
    """The server's metrics (names follow Prometheus conventions, prefix ``gotocr_``)."""

    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.requests = self._counter("gotocr_http_requests_total", "HTTP requests by route and status.",
                                      ("route", "status"))
        self.in_flight = self._gauge("gotocr_http_requests_in_flight", "HTTP requests being handled.")
        self.slots = self._gauge("gotocr_slots", "Decode slots configured.")
        self.model_ready = self._gauge("gotocr_model_ready", "1 once the model is loaded.")
        self.items = self._counter("gotocr_ocr_items_total", "OCR items finished, by finish reason.",
                                   ("finish_reason",))
        self.rejected = self._counter("gotocr_rejected_total", "Requests refused for back-pressure.", ("reason",))
        self.cancelled = self._counter("gotocr_cancelled_total", "OCR items cancelled (client disconnect).")
        self.prompt_tokens = self._counter("gotocr_prompt_tokens_total", "Prompt tokens processed.")
        self.completion_tokens = self._counter("gotocr_completion_tokens_total", "Tokens generated.")
        self.stage_seconds = Histogram(prom.Histogram(
            "gotocr_stage_seconds", "Latency per stage (" + ", ".join(STAGES) + ").", ("stage",),
            buckets=_LATENCY_BUCKETS, registry=self.registry))

    def _counter(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> Counter:
        # prometheus_client appends "_total" to a counter's samples itself
        metric = prom.Counter(name.removesuffix("_total"), help_, labelnames, registry=self.registry)
        return Counter(metric, labelnames)

    def _gauge(self, name: str, help_: str) -> Gauge:
        return Gauge(prom.Gauge(name, help_, registry=self.registry))

    def add_gauge(self, name: str, help_: str, source: Callable[[], float]) -> None:
        """A gauge read from ``source`` at scrape time (e.g. engine statistics)."""
        prom.Gauge(name, help_, registry=self.registry).set_function(source)

    def render(self) -> str:
        return prom.generate_latest(self.registry).decode("utf-8")
