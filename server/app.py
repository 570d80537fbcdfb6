"""The Litestar application: routes, dependency injection, lifecycle, errors, metrics.

``create_app(settings)`` returns an ASGI app (the Litestar app wrapped by :class:`ObservedApp`,
which counts every request — 404s included — by route template and status). Shared objects live in
one :class:`Runtime` handed to handlers by dependency injection (``rt``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Litestar, Router
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import Message, Receive, Scope, Send

from gotocr_fast import __version__

from . import routes_ocr, routes_openai, routes_ops, routes_web
from .errors import ApiError, error_body, error_event, exception_handlers, shutting_down
from .fetch import UrlFetcher
from .inputs import InputLimits, InputResolver
from .metrics import Metrics
from .runner import EngineHolder, OcrService, cancelled_by_shutdown
from .runtime import Runtime
from .settings import ServerSettings

__all__ = ["Runtime", "create_app", "default_engine_factory", "ObservedApp"]

log = logging.getLogger("gotocr_fast.server")


def default_engine_factory(settings: ServerSettings) -> Callable[[], Any]:
    def load() -> Any:
        from gotocr_fast import OcrEngine

        return OcrEngine(settings.engine_config())

    return load


def _api_key_guard(settings: ServerSettings) -> Callable[[ASGIConnection, BaseRouteHandler], None]:
    # Compare digests, not the strings: constant time, and independent of the key's length.
    expected = hashlib.sha256((settings.api_key or "").encode()).digest()

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        ok = hmac.compare_digest(given, expected)
        if not (ok and scheme.lower() == "bearer"):
            raise ApiError(401, "missing or invalid API key (Authorization: Bearer <key>)", "invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    return guard


def create_app(
    settings: ServerSettings,
    *,
    engine_factory: Callable[[], Any] | None = None,
    fetcher: UrlFetcher | None = None,
) -> "ObservedApp":
    """Build the app. ``engine_factory`` (called in a worker thread at startup) and ``fetcher`` are
    injectable for tests; by default the engine is ``OcrEngine(settings.model, ...)`` and URL
    fetching is on only with ``settings.allow_urls``."""
    metrics = Metrics()
    holder = EngineHolder(engine_factory or default_engine_factory(settings), metrics)
    metrics.slots.set(settings.slots)
    if fetcher is None and settings.allow_urls:
        fetcher = UrlFetcher(
            max_bytes=settings.max_input_bytes,
            timeout=settings.fetch_timeout,
            max_redirects=settings.fetch_max_redirects,
        )
    resolver = InputResolver(
        InputLimits(
            max_images=settings.max_images,
            max_pdf_pages=settings.max_pdf_pages,
            max_image_pixels=settings.max_image_pixels,
            max_input_bytes=settings.max_input_bytes,
            pdf_dpi=settings.pdf_dpi,
        ),
        settings.allowed_root,
        fetcher,
    )
    runtime = Runtime(
        settings=settings,
        engine_config=settings.engine_config(),
        metrics=metrics,
        holder=holder,
        service=OcrService(holder, metrics),
        resolver=resolver,
        model_name=settings.served_model_name,
    )

    def _engine_gauge(key: str) -> Callable[[], float]:
        def read() -> float:
            engine = holder.engine
            try:
                return float(engine.stats()[key]) if engine is not None else 0.0
            except Exception:  # noqa: BLE001 - a metric must never fail the scrape
                return 0.0

        return read

    metrics.add_gauge("gotocr_engine_running", "Sequences decoding in the engine's slots.", _engine_gauge("running"))
    metrics.add_gauge("gotocr_engine_waiting", "Sequences queued or encoding in the engine.", _engine_gauge("waiting"))
    # the names dashboards know; the engine's queue is the only one, so they read the same counts
    metrics.add_gauge("gotocr_active_slots", "OCR items holding a decode slot.", _engine_gauge("running"))
    metrics.add_gauge("gotocr_queue_depth", "OCR items waiting for a decode slot.", _engine_gauge("waiting"))

    async def on_startup() -> None:
        holder.start()

    async def on_shutdown() -> None:
        await holder.stop()  # requests cut off by the drain timeout first send their 503

    guards = [_api_key_guard(settings)] if settings.api_key else []
    v1 = Router(
        path="/v1",
        route_handlers=[routes_ocr.ocr, routes_openai.chat_completions, routes_ops.list_models],
        guards=guards,
        security=[{"bearer": []}] if settings.api_key else None,
    )
    # /metrics and the OpenAPI pages describe the service's traffic and surface: behind the key too,
    # unless the operator opens them (/health stays open for load balancers)
    ops_guards = [] if settings.public_ops else guards
    components = []
    if settings.api_key:
        components.append(Components(security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}))
    app = Litestar(
        route_handlers=[v1, routes_ops.health, routes_ops.version,
                        Router(path="/", route_handlers=[routes_ops.metrics], guards=ops_guards),
                        *([routes_web.web_router()] if settings.ui else [])],
        dependencies={"rt": Provide(lambda: runtime, use_cache=True, sync_to_thread=False)},
        exception_handlers=exception_handlers,
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        request_max_body_size=settings.max_body_bytes,
        multipart_form_part_limit=settings.max_images + 32,
        openapi_config=OpenAPIConfig(
            title="gotocr_fast",
            version=__version__,
            description="GOT-OCR2 OCR service: seed-compatible /v1/ocr and OpenAI-compatible chat completions.",
            components=components,
            openapi_router=Router(path="/docs", route_handlers=[], guards=ops_guards, include_in_schema=False),
        ),
        debug=False,
    )
    app.state.runtime = runtime
    return ObservedApp(app, metrics, holder)


class ObservedApp:
    """ASGI wrapper around the Litestar app: request counts by route template and status, the
    in-flight gauge and the ``total`` latency. It sees every request, unmatched routes included
    (Litestar's own middleware runs only for matched routes)."""

    def __init__(self, app: Litestar, metrics: Metrics, holder: EngineHolder) -> None:
        self.app = app
        self.metrics = metrics
        self.holder = holder

    def begin_drain(self) -> None:
        """Called by the server when it stops accepting connections (SIGTERM/SIGINT)."""
        self.holder.begin_drain()

    @property
    def runtime(self) -> Runtime:
        return self.app.state.runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        event_stream = False
        t0 = time.perf_counter()

        async def send_observed(message: Message) -> None:
            nonlocal status, event_stream
            if message["type"] == "http.response.start":
                status = message["status"]
                event_stream = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                                   for k, v in message.get("headers", ()))
            await send(message)

        self.metrics.in_flight.add(1)
        self.holder.request_started()
        try:
            await self.app(scope, receive, send_observed)
        except asyncio.CancelledError:
            if not cancelled_by_shutdown(self.holder):
                raise
            # the drain timeout is over: answer what can still be answered, never a bare 500
            api = shutting_down()
            if not status:
                body = msgspec.json.encode(error_body(api))
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                           *((k.lower().encode(), v.encode()) for k, v in api.headers.items())]
                await send_observed({"type": "http.response.start", "status": api.status, "headers": headers})
                await send({"type": "http.response.body", "body": body, "more_body": False})
            elif event_stream:
                await send({"type": "http.response.body", "body": error_event(api) + b"data: [DONE]\n\n",
                            "more_body": False})
        finally:
            self.holder.request_finished()
            self.metrics.in_flight.add(-1)
            route = scope.get("path_template") or "unmatched"
            label = str(status) if status else "499"  # nothing sent: the client went away
            self.metrics.requests.inc(route, label)
            if route.startswith("/v1/") and route != "/v1/models":
                self.metrics.stage_seconds.observe(time.perf_counter() - t0, "total")
