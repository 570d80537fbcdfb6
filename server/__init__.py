"""The HTTP service (Litestar): seed-compatible ``/v1/ocr``, OpenAI chat completions, ops endpoints.

``create_app(settings)`` builds the ASGI app; ``gotocr serve`` (``server.cli.main``) runs it.
"""

from __future__ import annotations

__all__ = ["create_app", "ServerSettings"]


def __getattr__(name: str):
    # Lazy: importing gotocr_fast.server must not import Litestar until the app is needed.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServerSettings":
        from .settings import ServerSettings

        return ServerSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
