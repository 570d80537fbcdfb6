"""The request lifecycle between HTTP and the engine (vLLM's shape): admitted → queued → running in
a decode slot → streamed → finished, or aborted when the client goes away.

* :class:`EngineHolder` loads the model in a worker thread at startup (``/health`` says 503 until
  it is ready) and closes it at shutdown.
* The engine's queue is the only one: at most ``slots`` sequences decode and ``queue`` wait, the
  next request is refused by the engine (``Overloaded``: 429 + Retry-After). Its counts are the
  ``gotocr_active_slots`` / ``gotocr_queue_depth`` gauges (read from ``engine.stats()``).
* :class:`OcrService` runs one prompt through the engine's asyncio API (``aocr``,
  ``aopen_stream``): a cancelled wait (client disconnect, shutdown) cancels the engine request,
  which frees its slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from litestar.types import Receive

import anyio

from gotocr_fast import OcrOptions, OcrResult, Overloaded

from .errors import ApiError, ClientDisconnected, shutting_down
from .metrics import Metrics

if TYPE_CHECKING:
    from gotocr_fast import AsyncOcrStream

__all__ = ["EngineHolder", "OcrService", "ServedStream", "cancelled_by_shutdown", "until_disconnect"]

log = logging.getLogger("gotocr_fast.server")

LOADING, READY, FAILED, STOPPING = "loading", "ready", "failed", "stopping"

SHUTDOWN_ANSWER_SECONDS = 5.0
"""At shutdown, how long requests cut off by the drain timeout get to send their 503 / error event."""



class EngineHolder:
    """The engine and its state: loading → ready | failed, → stopping at shutdown."""

    def __init__(self, factory: Callable[[], Any], metrics: Metrics) -> None:
        self._factory = factory
        self._metrics = metrics
        self.state = LOADING
        self.error: str | None = None
        self.engine: Any = None
        self.draining = False
        """The server stopped accepting connections and lets in-flight requests finish."""
        self._task: asyncio.Task[None] | None = None
        self._active = 0  # HTTP requests in progress (ObservedApp counts them)
        self._idle: asyncio.Event | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._load(), name="gotocr-model-load")

    async def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            engine = await anyio.to_thread.run_sync(self._factory, abandon_on_cancel=True)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - any load failure is reported by /health
            self.state, self.error = FAILED, f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.error, exc_info=exc)
            return
        if self.state == STOPPING:  # shut down while loading
            await anyio.to_thread.run_sync(_close, engine)
            return
        self.engine, self.state = engine, READY
        self._metrics.model_ready.set(1)
        log.info("model ready in %.1f s", time.perf_counter() - t0)

    def require(self) -> Any:
        if self.state == READY:
            return self.engine
        if self.state == LOADING:
            raise ApiError(503, "the model is still loading; retry shortly", "model_loading",
                           headers={"Retry-After": "5"})
        if self.state == STOPPING:
            raise shutting_down()
        raise ApiError(503, "the model failed to load (see the server log)", "model_unavailable",
                       type="server_error")

    def begin_drain(self) -> None:
        """The process was told to stop: from now on a cancelled request is one the server gave
        up on (see :func:`cancelled_by_shutdown`)."""
        self.draining = True

    def request_started(self) -> None:
        self._active += 1

    def request_finished(self) -> None:
        self._active -= 1
        if self._active == 0 and self._idle is not None:
            self._idle.set()

    async def _wait_idle(self, timeout: float) -> None:
        """Let requests the server gave up on send their error before the engine closes."""
        if self._active == 0:
            return
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("%d request(s) still open at shutdown", self._active)

    async def stop(self) -> None:
        await self._wait_idle(SHUTDOWN_ANSWER_SECONDS)
        self.state = STOPPING
        self._metrics.model_ready.set(0)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the loading thread runs on; _load closes what it returns
        engine, self.engine = self.engine, None
        if engine is not None:
            await anyio.to_thread.run_sync(_close, engine)


def _close(engine: Any) -> None:
    try:
        engine.close()
    except Exception:  # noqa: BLE001
        log.exception("error while closing the engine")


class OcrService:
    """Runs prompts on the engine from async code (the engine's asyncio API)."""

    def __init__(self, holder: EngineHolder, metrics: Metrics) -> None:
        self.holder = holder
        self.metrics = metrics

    async def run(self, pages: list[Any], options: OcrOptions) -> OcrResult:
        """One prompt → OcrResult. Cancelling the caller cancels the engine request."""
        engine = self.holder.require()
        try:
            result = await engine.aocr(_source(pages), options)
        except Overloaded:
            self.metrics.rejected.inc("queue_full")
            raise
        except asyncio.CancelledError:
            self.metrics.cancelled.inc()
            raise
        self.observe(result)
        return result

    async def open_stream(self, pages: list[Any], options: OcrOptions) -> "ServedStream":
        """Submit (errors surface here, before any response byte) and return the stream.

        The caller must ``close()`` it (in a ``finally``): that cancels the engine request if it
        has not finished.
        """
        engine = self.holder.require()
        try:
            stream = await engine.aopen_stream(_source(pages), options)
        except Overloaded:
            self.metrics.rejected.inc("queue_full")
            raise
        return ServedStream(stream, self)

    def observe(self, result: OcrResult) -> None:
        m = self.metrics
        m.items.inc(result.finish_reason)
        m.prompt_tokens.inc(amount=result.prompt_tokens)
        m.completion_tokens.inc(amount=result.completion_tokens)
        t = result.timings
        for stage, ms in (("preprocess", t.preprocess_ms), ("encode", t.encode_ms),
                          ("prefill", t.prefill_ms), ("decode", t.decode_ms)):
            m.stage_seconds.observe(ms / 1000.0, stage)


def _source(pages: list[Any]) -> Any:
    """One page is an image; several are one multi-page prompt."""
    return pages[0] if len(pages) == 1 else pages


class ServedStream:
    """The engine's async delta stream, with the server's metrics recorded at ``close()``."""

    def __init__(self, stream: AsyncOcrStream, service: OcrService) -> None:
        self._stream = stream
        self._service = service
        self._closed = False

    def __aiter__(self) -> "ServedStream":
        return self

    async def __anext__(self) -> str:
        return await self._stream.__anext__()

    @property
    def result(self) -> OcrResult | None:
        return self._stream.result

    def close(self) -> None:
        """Cancel the request unless it finished, record metrics. Idempotent and synchronous: safe
        in the ``finally`` of a cancelled generator."""
        if self._closed:
            return
        self._closed = True
        if not self._stream.request.done():
            self._stream.close()
            self._service.metrics.cancelled.inc()
        if self._stream.result is not None:
            self._service.observe(self._stream.result)


T = TypeVar("T")


def cancelled_by_shutdown(holder: EngineHolder) -> bool:
    """Whether the CancelledError being handled is the server giving up on this request at
    shutdown (uvicorn cancels what is still running when ``--shutdown-timeout`` is over). If so,
    the cancellation is absorbed so the request can still be answered 503 ``shutting_down`` (or
    its stream ended with an error event); the engine request was cancelled on the way out."""
    task = asyncio.current_task()
    if holder.draining and task is not None and task.cancelling():
        task.uncancel()
        return True
    return False


async def until_disconnect(receive: Receive, work: Callable[[], Awaitable[T]]) -> T:
    """Await ``work()``, cancelling it when the client disconnects (then raise ClientDisconnected).

    Servers do not cancel a handler whose client went away; after the body has been read, the
    next ASGI ``receive()`` returns ``http.disconnect`` exactly when that happens.
    """
    host = asyncio.current_task()
    assert host is not None
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
                host.cancel()
                return

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work()
    except asyncio.CancelledError:
        if disconnected:
            host.uncancel()
            raise ClientDisconnected() from None
        raise
    finally:
        watcher.cancel()
