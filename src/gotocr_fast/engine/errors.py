"""Engine errors: every failure a caller can act on has its own type (the server maps them to HTTP)."""

from __future__ import annotations

__all__ = ["OcrError", "InvalidRequest", "ContextOverflow", "Overloaded", "Cancelled", "EngineClosed", "ModelError"]


class OcrError(Exception):
    """Base of every engine error."""


class InvalidRequest(OcrError, ValueError):
    """Bad arguments (mode, box, sampling options, image); raised before any work (HTTP 4xx).

    ``code`` is a stable machine name of the fault (the server's error ``code``)."""

    def __init__(self, message: str, *, code: str = "invalid_request"):
        super().__init__(message)
        self.code = code


class ContextOverflow(InvalidRequest):
    """prompt tokens + max_tokens exceed the per-slot context (HTTP 400/413)."""

    def __init__(self, message: str, *, prompt_tokens: int, max_tokens: int, n_ctx: int):
        super().__init__(message, code="context_length_exceeded")
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx


class Overloaded(OcrError):
    """The request queue is full (HTTP 429/503): retry later."""


class Cancelled(OcrError):
    """The request was cancelled before it finished."""


class EngineClosed(OcrError):
    """The engine was closed (or its scheduler died) before the request finished."""


class ModelError(OcrError, RuntimeError):
    """The model files could not be loaded, or llama.cpp failed while decoding (HTTP 5xx)."""
