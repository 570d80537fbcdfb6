"""The ``render`` option of ``/v1/ocr``: format answers as standalone HTML documents."""

from __future__ import annotations

from .errors import ApiError

__all__ = ["check_render"]


def check_render(render: str | None, ocr_type: str) -> None:
    """400 before any work when a request asks to render what is not format output."""
    if render is not None and ocr_type != "format":
        raise ApiError(400, 'render needs type "format" (plain text has no markup to render)', "invalid_request")

