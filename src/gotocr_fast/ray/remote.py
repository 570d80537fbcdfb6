"""The ingress side: an engine for the HTTP handlers (``aocr``, ``aopen_stream``, ``stats``,
``close``: the calling conventions of :class:`gotocr_fast.engine.api.EngineBase`), backed by engine
replicas behind a Ray Serve ``DeploymentHandle``.

Its requests have the caller-side methods of ``OcrEngine``'s :class:`~gotocr_fast.OcrHandle`
(``add_listener``, iteration, ``result``, ``done``, ``cancel``). The streaming call itself runs as
a task on the ingress's event loop (the documented way to use a handle); :class:`RemoteRequest`
hands its items to the listeners.

Replica failures: a call whose replica dies before it produced any text is sent again (another
replica, or the same one restarted), up to ``retries`` times; one that dies after text went out
cannot be replayed without duplicating it, and fails with HTTP 503 "replica lost, retry".
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from gotocr_fast.engine.api import EngineBase

from . import wire

__all__ = ["RemoteEngine", "RemoteRequest", "DEFAULT_RETRIES"]

DEFAULT_RETRIES = 2
"""Resubmissions of a request whose replica died before it produced text."""

_ids = itertools.count(1)
_END = object()


def _replica_lost_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import RayActorError

    return (RayActorError,)


def _replica_lost(message: str) -> BaseException:
    from gotocr_fast.server.errors import ApiError

    return ApiError(503, message, "replica_unavailable", headers={"Retry-After": "1"})


class RemoteEngine(EngineBase):
    """``OcrEngine``'s calling surface over a handle to :class:`~.replica.EngineReplica`.

    ``config`` is the replicas' engine configuration (its request defaults and limits apply here)."""

    def __init__(self, handle: Any, loop: asyncio.AbstractEventLoop, config: Any, *,
                 retries: int = DEFAULT_RETRIES) -> None:
        self.config = config
        self._handle = handle.options(stream=True)
        self._loop = loop
        self.retries = retries
        self._closed = False
        self._lock = threading.Lock()
        self.starting = 0  # submitted, not yet accepted by a replica
        self.running = 0  # accepted, not finished

    def _submit(self, image_or_pages: Any, options: Any, *, stream: bool, logits_hook: Any = None,
                listener: Any = None, handoff: Any = None) -> "RemoteRequest":
        """Send one request to a replica; returns once a replica accepted it, or raises the
        engine's error for it (invalid options, unreadable image, queue full, ...).

        Call from any thread but the ingress's event loop (``aocr`` uses a worker thread)."""
        from gotocr_fast import EngineClosed, InvalidRequest, Overloaded

        if self._closed:
            raise EngineClosed("the engine is closed")
        with self._lock:  # the bound OcrEngine keeps: max_slots running (here: all replicas) + max_queue
            if self.running + self.starting >= self.config.max_slots + self.config.max_queue:
                raise Overloaded(f"queue full ({self.config.max_queue} waiting); retry later")
        if logits_hook is not None:
            raise InvalidRequest("a logits hook needs the engine in this process")
        request = RemoteRequest(self, image_or_pages, dataclasses.asdict(options))
        if listener is not None:  # before the call starts: it sees every delta
            request.add_listener(listener)
        asyncio.run_coroutine_threadsafe(request._start(), self._loop).result()
        if handoff is not None:
            handoff.bind(request)
        return request

    def stats(self) -> dict[str, int]:
        """This ingress's view: requests accepted by replicas and not finished (``running``),
        submitted and not yet accepted (``waiting``). Each replica's own engine statistics are
        its ``stats`` method (``EngineReplica.stats``)."""
        with self._lock:
            return {"running": self.running, "waiting": self.starting}

    def close(self) -> None:
        self._closed = True

    def _count(self, field: str, delta: int) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + delta)


class RemoteRequest:
    """One request on a replica, with ``OcrHandle``'s caller-side methods (thread-safe)."""

    def __init__(self, engine: RemoteEngine, source: Any, options: dict[str, Any]) -> None:
        self.id = f"ray-ocr-{next(_ids)}"
        self._engine = engine
        self._source = source
        self._options = options
        self._loop = engine._loop
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._deltas: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._listeners: list[Callable[[object], None]] = []
        self._emitted = False
        self._cancelled = False
        self._call: Any = None  # the streaming call (DeploymentResponseGenerator) being read
        self._task: asyncio.Task[None] | None = None

    # --- caller side (any thread) --------------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} not finished after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stop the request; the replica cancels the engine request (its slot frees at once)."""
        from gotocr_fast.engine.errors import Cancelled

        with self._lock:
            if self._done.is_set() or self._cancelled:
                return
            self._cancelled = True
        try:
            self._loop.call_soon_threadsafe(self._stop_call)
        except RuntimeError:  # the loop is closed: nothing is running any more
            pass
        self._finish(error=Cancelled(f"request {self.id} was cancelled"))

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._deltas.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item  # type: ignore[misc]

    def add_listener(self, fn: Callable[[object], None]) -> None:
        """``fn(text)`` per delta and ``fn(None)`` at the end, as ``OcrHandle.add_listener``."""
        with self._lock:
            self._listeners.append(fn)
            done = self._done.is_set()
        if done:
            fn(None)

    # --- the streaming call (ingress event loop) --------------------------------------------------
    async def _start(self) -> None:
        """Open the call and wait for the replica to accept (or refuse) the request."""
        self._engine._count("starting", 1)
        try:
            await self._open()
        finally:
            self._engine._count("starting", -1)
        self._engine._count("running", 1)
        self._task = self._loop.create_task(self._consume(), name=f"gotocr-{self.id}")

    async def _open(self) -> None:
        lost = _replica_lost_errors()
        for attempt in range(self._engine.retries + 1):
            self._call = self._engine._handle.generate.remote(self._source, self._options)
            try:
                kind, payload = await self._call.__anext__()
            except lost:
                if attempt == self._engine.retries:
                    raise _replica_lost("no engine replica could take the request; retry") from None
                continue
            if kind == wire.ERROR:
                raise wire.unpack_error(payload)
            if kind != wire.ACCEPTED:  # pragma: no cover - protocol violation
                raise RuntimeError(f"replica answered {kind!r} before accepting")
            return

    async def _consume(self) -> None:
        lost = _replica_lost_errors()
        retries = self._engine.retries
        try:
            while True:
                try:
                    kind, payload = await self._call.__anext__()
                except StopAsyncIteration:
                    raise _replica_lost("the engine replica ended the request without a result") from None
                except lost:
                    if self._emitted or retries == 0:
                        raise _replica_lost("the engine replica was lost while generating; retry") from None
                    retries -= 1
                    await self._open()  # nothing was sent yet: start over elsewhere
                    continue
                if kind == wire.DELTA:
                    self._emit(payload)
                elif kind == wire.RESULT:
                    self._finish(result=payload)
                    return
                elif kind == wire.ERROR:
                    self._finish(error=wire.unpack_error(payload))
                    return
        except asyncio.CancelledError:
            self._stop_call()
            raise
        except BaseException as exc:  # noqa: BLE001 - becomes the request's error
            self._stop_call()
            self._finish(error=exc)
        finally:
            self._engine._count("running", -1)

    def _stop_call(self) -> None:
        call = self._call
        if call is not None:
            call.cancel()  # Serve cancels the replica's generator: its finally cancels the engine request
        if self._task is not None and not self._task.done() and asyncio.current_task() is not self._task:
            self._task.cancel()

    def _emit(self, text: str) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._emitted = True
            listeners = list(self._listeners)
        self._deltas.put(text)
        for fn in listeners:
            fn(text)

    def _finish(self, *, result: Any = None, error: BaseException | None = None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._result, self._error = result, error
            self._done.set()
            listeners = list(self._listeners)
        self._deltas.put(_END)
        for fn in listeners:
            fn(None)
