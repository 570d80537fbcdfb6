"""One engine replica: an ``OcrEngine`` in a Ray Serve replica, answering streaming calls.

The replica runs the engine exactly as ``gotocr serve`` would (the server's own engine factory,
so the options mean the same). Each call of :meth:`EngineReplica.generate` submits one request and
streams it back as ``wire`` items; when the caller cancels the call (client disconnect, replica
retry), Ray Serve cancels the generator and its ``finally`` cancels the engine request, which frees
its slot at once.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

from . import wire

__all__ = ["EngineReplica"]

_END = object()


class EngineReplica:
    """The deployment class (``serve.deployment`` is applied by :mod:`.serve`)."""

    def __init__(self, settings: Any) -> None:
        from gotocr_fast.server.app import default_engine_factory

        self.engine = default_engine_factory(settings)()
        self.accepted = 0  # requests this replica's engine accepted
        self.cancelled = 0  # of those, cancelled because their caller went away

    async def generate(self, source: Any, options: dict[str, Any]) -> AsyncIterator[tuple[str, Any]]:
        loop = asyncio.get_running_loop()
        # submit decodes and preprocesses the image: off the event loop
        submitted = loop.run_in_executor(None, functools.partial(self.engine.submit, source, **options))
        try:
            request = await asyncio.shield(submitted)
        except asyncio.CancelledError:
            # the caller left while the engine was accepting: cancel what it accepted
            submitted.add_done_callback(_cancel_submitted)
            raise
        except Exception as exc:  # noqa: BLE001 - every submission error goes back to the caller
            yield (wire.ERROR, wire.pack_error(exc))
            return
        self.accepted += 1
        yield (wire.ACCEPTED, None)

        # The request keeps every delta from its start; one thread drains it into this loop.
        items: asyncio.Queue[object] = asyncio.Queue()

        def pump() -> None:
            end: object = _END
            try:
                for delta in request:
                    loop.call_soon_threadsafe(items.put_nowait, delta)
            except BaseException as exc:  # noqa: BLE001 - handed to the generator
                end = exc
            try:
                loop.call_soon_threadsafe(items.put_nowait, end)
            except RuntimeError:  # the replica's loop is gone (shutdown)
                pass

        threading.Thread(target=pump, name="gotocr-replica-pump", daemon=True).start()
        try:
            while True:
                item = await items.get()
                # join what piled up meanwhile: one streamed item per loop turn, not per token
                text: list[str] = []
                while isinstance(item, str):
                    text.append(item)
                    item = items.get_nowait() if not items.empty() else None
                if text:
                    yield (wire.DELTA, "".join(text))
                if item is None:
                    continue
                if item is _END:
                    yield (wire.RESULT, request.result(0))
                    return
                yield (wire.ERROR, wire.pack_error(item))  # type: ignore[arg-type]
                return
        finally:
            if not request.done():
                request.cancel()
                self.cancelled += 1

    def stats(self) -> dict[str, Any]:
        """The engine's statistics, with this replica's process id and request counts."""
        return {**self.engine.stats(), "pid": os.getpid(), "accepted": self.accepted, "cancelled": self.cancelled}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def _cancel_submitted(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().cancel()
