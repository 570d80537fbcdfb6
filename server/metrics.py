"""Prometheus metrics in the text exposition format (no client library needed for this little).

Updated from the event loop and from worker threads, so every mutation takes the registry lock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

__all__ = ["Metrics", "STAGES"]

STAGES = ("input", "preprocess", "encode", "prefill", "decode", "total")
"""Latency stages: input = resolve/fetch/decode the request's images (server); preprocess, encode,
prefill, decode = the engine's timings per item; total = the whole HTTP request."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _fmt(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Family:
    def __init__(self, name: str, help_: str, kind: str, labelnames: Sequence[str], lock: threading.RLock):
        self.name, self.help, self.kind, self.labelnames, self._lock = name, help_, kind, tuple(labelnames), lock

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Family):
    def __init__(self, *args):
        super().__init__(*args)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = self.header()
        values = dict(self._values)
        if not self.labelnames and not values:
            # an unlabelled counter exists from the start: scrapers see 0, not a missing series
            values[()] = 0.0
        for labels, v in sorted(values.items()):
            lines.append(f"{self.name}{_labels(self.labelnames, labels)} {_fmt(v)}")
        return lines


class Gauge(_Family):
    def __init__(self, *args, source: Callable[[], float] | None = None):
        super().__init__(*args)
        self._value = 0.0
        self._source = source

    def set(self, v: float) -> None:
        with self._lock:
            self._value = v

    def add(self, v: float) -> None:
        with self._lock:
            self._value += v

    def value(self) -> float:
        if self._source is not None:
            return float(self._source())
        with self._lock:
            return self._value

    def render(self) -> list[str]:
        return [*self.header(), f"{self.name} {_fmt(self.value())}"]


class Histogram(_Family):
    def __init__(self, *args, buckets: Iterable[float] = _LATENCY_BUCKETS):
        super().__init__(*args)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._data: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., sum, count

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            row = self._data.setdefault(labels, [0.0] * (len(self.buckets) + 2))
            for i, b in enumerate(self.buckets):
                if value <= b:
                    row[i] += 1
            row[-2] += value
            row[-1] += 1

    def count(self, *labels: str) -> int:
        with self._lock:
            row = self._data.get(labels)
            return int(row[-1]) if row else 0

    def render(self) -> list[str]:
        lines = self.header()
        for labels, row in sorted(self._data.items()):
            for i, b in enumerate(self.buckets):
                le = 'le="' + _fmt(b) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, labels, le)} {_fmt(row[i])}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, labels)} {_fmt(row[-2])}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, labels)} {_fmt(row[-1])}")
        return lines


class Metrics:
    """The server's metrics (names follow Prometheus conventions, prefix ``gotocr_``)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # render() holds it while families take it again
        lock = self._lock
        self.requests = Counter("gotocr_http_requests_total", "HTTP requests by route and status.", "counter",
                                ("route", "status"), lock)
        self.in_flight = Gauge("gotocr_http_requests_in_flight", "HTTP requests being handled.", "gauge", (), lock)
        self.queue_depth = Gauge("gotocr_queue_depth", "OCR items waiting for a decode slot.", "gauge", (), lock)
        self.active_slots = Gauge("gotocr_active_slots", "OCR items holding a decode slot.", "gauge", (), lock)
        self.slots = Gauge("gotocr_slots", "Decode slots configured.", "gauge", (), lock)
        self.model_ready = Gauge("gotocr_model_ready", "1 once the model is loaded.", "gauge", (), lock)
        self.items = Counter("gotocr_ocr_items_total", "OCR items finished, by finish reason.", "counter",
                             ("finish_reason",), lock)
        self.rejected = Counter("gotocr_rejected_total", "Requests refused for back-pressure.", "counter",
                                ("reason",), lock)
        self.cancelled = Counter("gotocr_cancelled_total", "OCR items cancelled (client disconnect).", "counter",
                                 (), lock)
        self.prompt_tokens = Counter("gotocr_prompt_tokens_total", "Prompt tokens processed.", "counter", (), lock)
        self.completion_tokens = Counter("gotocr_completion_tokens_total", "Tokens generated.", "counter", (), lock)
        self.stage_seconds = Histogram("gotocr_stage_seconds", "Latency per stage (" + ", ".join(STAGES) + ").",
                                       "histogram", ("stage",), lock)
        self._families = (
            self.requests, self.in_flight, self.queue_depth, self.active_slots, self.slots, self.model_ready,
            self.items, self.rejected, self.cancelled, self.prompt_tokens, self.completion_tokens,
            self.stage_seconds,
        )

    def add_gauge(self, name: str, help_: str, source: Callable[[], float]) -> Gauge:
        """A gauge read from ``source`` at scrape time (e.g. engine statistics)."""
        gauge = Gauge(name, help_, "gauge", (), self._lock, source=source)
        self._families = (*self._families, gauge)
        return gauge

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for family in self._families:
                lines.extend(family.render())
        return "\n".join(lines) + "\n"
