"""Running the app under uvicorn: the one place the server process's uvicorn settings live
(``gotocr serve`` and the tests' scripted server both use it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn

from .settings import ServerSettings

__all__ = ["GracefulServer", "run_server"]


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises the SIGTERM/SIGINT it handled once shutdown is over, so a clean drain ends
    with status 143 (130), which supervisors read as a crash. Here the signal is the request to
    stop: once the server has stopped cleanly the process exits 0. A shutdown that fails keeps
    uvicorn's behaviour.

    When it stops accepting connections it tells the app (``begin_drain``), so a request it
    cancels once ``--shutdown-timeout`` is over is answered 503 ``shutting_down`` (a stream ends
    with an error event and ``[DONE]``) instead of uvicorn's plain-text 500."""

    async def shutdown(self, sockets: Any = None) -> None:
        begin_drain = getattr(self.config.app, "begin_drain", None)
        if begin_drain is not None:
            begin_drain()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()


def run_server(app: Any, settings: ServerSettings) -> None:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_timeout) or None,
        # The body limit is enforced by the app (413 JSON); this bounds slow-loris style clients.
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 * 1024,
        server_header=False,
        lifespan="on",
    )
    GracefulServer(config).run()
