"""The HTTP ingress deployment: ``gotocr serve``'s Litestar app with a remote engine.

Ray Serve builds the ASGI app in the replica (``__serve_build_asgi_app__``), after ``__init__``
captured the replica's event loop: :class:`~.remote.RemoteEngine` runs its streaming calls there.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from .remote import RemoteEngine

__all__ = ["HttpIngress"]


@serve.ingress()
class HttpIngress:
    async def __init__(self, settings: Any, engine_handle: Any) -> None:
        self._settings = settings
        self._engine = RemoteEngine(engine_handle, asyncio.get_running_loop(), settings.engine_config())

    def __serve_build_asgi_app__(self) -> Any:
        from gotocr_fast.server.app import create_app

        return create_app(self._settings, engine_factory=lambda: self._engine)
