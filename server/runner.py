"""The request lifecycle between HTTP and the engine (vLLM's shape): admitted → queued → running in
a decode slot → streamed → finished, or aborted when the client goes away.

* :class:`EngineHolder` loads the model in a worker thread at startup (``/health`` says 503 until
  it is ready) and closes it at shutdown.
* :class:`Admission` is the bounded queue in front of the engine: at most ``slots`` prompts run,
  at most ``queue`` wait, the next one is refused (429 + Retry-After). Its counts are the
  ``gotocr_active_slots`` / ``gotocr_queue_depth`` gauges.
* :class:`OcrService` submits one prompt to the engine and waits without blocking the event loop;
  a cancelled wait (client disconnect, shutdown) cancels the engine request, which frees its slot.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from litestar.types import Receive

import anyio

from .errors import ApiError, ClientDisconnected
from .metrics import Metrics

__all__ = ["Admission", "EngineHolder", "OcrService", "until_disconnect"]

log = logging.getLogger("gotocr_fast.server")

LOADING, READY, FAILED, STOPPING = "loading", "ready", "failed", "stopping"


class EngineHolder:
    """The engine and its state: loading → ready | failed, → stopping at shutdown."""

    def __init__(self, factory: Callable[[], Any], metrics: Metrics) -> None:
        self._factory = factory
        self._metrics = metrics
        self.state = LOADING
        self.error: str | None = None
        self.engine: Any = None
        self._task: asyncio.Task[None] | None = None

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
            raise ApiError(503, "the server is shutting down", "shutting_down", headers={"Retry-After": "5"})
        raise ApiError(503, "the model failed to load (see the server log)", "model_unavailable",
                       type="server_error")

    async def stop(self) -> None:
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


class Admission:
    """A FIFO with ``slots`` places running and ``queue`` places waiting (event-loop only)."""

    def __init__(self, slots: int, queue: int, metrics: Metrics) -> None:
        self.slots = slots
        self.queue = queue
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._metrics = metrics
        metrics.slots.set(slots)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _publish(self) -> None:
        self._metrics.active_slots.set(self.active)
        self._metrics.queue_depth.set(len(self._waiters))

    async def acquire(self) -> None:
        """Take a running place, waiting in FIFO order; 429 when ``queue`` are already waiting."""
        if self.active < self.slots and not self._waiters:
            self.active += 1
            self._publish()
            return
        if len(self._waiters) >= self.queue:
            self._metrics.rejected.inc("queue_full")
            raise ApiError(429, f"server busy: {self.queue} requests already waiting; retry later", "queue_full",
                           headers={"Retry-After": "1"})
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._publish()
        try:
            await fut  # release() hands its place over (active is not decremented in between)
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # granted and cancelled at the same time: pass the place on
            else:
                self._waiters.remove(fut)
                self._publish()
            raise
        self._publish()

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        else:
            self.active -= 1
        self._publish()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()


class OcrService:
    """Runs prompts on the engine from async code."""

    def __init__(self, holder: EngineHolder, admission: Admission, metrics: Metrics) -> None:
        self.holder = holder
        self.admission = admission
        self.metrics = metrics

    async def run(self, pages: list[Any], options: dict[str, Any]) -> Any:
        """One prompt → OcrResult. Cancelling the caller cancels the engine request."""
        async with self.admission.slot():
            request = await self._submit(pages, options)
            done = asyncio.Event()
            loop = asyncio.get_running_loop()

            def on_event(delta: object) -> None:
                if delta is None:
                    loop.call_soon_threadsafe(done.set)

            try:
                request.add_listener(on_event)
                await done.wait()
            except BaseException:
                request.cancel()
                self.metrics.cancelled.inc()
                raise
            result = request.result(0)
        self.observe(result)
        return result

    async def open_stream(self, pages: list[Any], options: dict[str, Any]) -> "TextStream":
        """Admit and submit (errors surface here, before any response byte) and return the stream.

        The caller must ``close()`` it (in a ``finally``): that cancels the engine request if it
        has not finished and frees the slot.
        """
        await self.admission.acquire()
        try:
            request = await self._submit(pages, options)
        except BaseException:
            self.admission.release()
            raise
        return TextStream(request, self)

    async def _submit(self, pages: list[Any], options: dict[str, Any]) -> Any:
        engine = self.holder.require()
        source = pages[0] if len(pages) == 1 else pages
        # Shielded: once the engine accepted the request we must hold its handle to cancel it.
        # (submit decodes and resizes the pages: a worker thread, never the event loop.)
        with anyio.CancelScope(shield=True):
            request = await anyio.to_thread.run_sync(lambda: engine.submit(source, **options))
        return request

    def observe(self, result: Any) -> None:
        m = self.metrics
        m.items.inc(result.finish_reason)
        m.prompt_tokens.inc(amount=result.prompt_tokens)
        m.completion_tokens.inc(amount=result.completion_tokens)
        t = result.timings
        for stage, ms in (("preprocess", t.preprocess_ms), ("encode", t.encode_ms),
                          ("prefill", t.prefill_ms), ("decode", t.decode_ms)):
            m.stage_seconds.observe(ms / 1000.0, stage)


_END = object()


class TextStream:
    """Async iteration over an engine request's text deltas; ``result`` once it has finished.

    A pump thread drains the request's own delta queue (which holds every delta from the start),
    so nothing emitted before we attached is lost. At most ``slots`` such threads exist.
    """

    def __init__(self, request: Any, service: OcrService) -> None:
        self.request = request
        self.result: Any = None
        self._service = service
        self._closed = False
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def pump() -> None:
            error: BaseException | None = None
            try:
                for delta in request:
                    loop.call_soon_threadsafe(self._queue.put_nowait, delta)
            except BaseException as exc:  # noqa: BLE001 - handed to the async side
                error = exc
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, error if error is not None else _END)
            except RuntimeError:  # loop closed (shutdown)
                pass

        self._thread = threading.Thread(target=pump, name="gotocr-stream-pump", daemon=True)
        self._thread.start()

    def __aiter__(self) -> "TextStream":
        return self

    async def __anext__(self) -> str:
        item = await self._queue.get()
        if item is _END:
            self.result = self.request.result(0)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Cancel the request unless it finished, free the slot, record metrics. Idempotent and
        synchronous: safe in the ``finally`` of a cancelled generator."""
        if self._closed:
            return
        self._closed = True
        if not self.request.done():
            self.request.cancel()
            self._service.metrics.cancelled.inc()
        self._service.admission.release()
        if self.result is not None:
            self._service.observe(self.result)


T = TypeVar("T")


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
