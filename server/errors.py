"""Every error the server returns, and the one place exceptions become HTTP responses.

The body is always OpenAI's shape ``{"error": {"message", "type", "code"}}``. Client faults get
4xx (docs/HTTP.md, "Errors"): 400 invalid request, 401 missing/bad API key, 403 path outside the allowed root or
blocked URL, 413 too large, 415 not an image, 429 queue full, 503 model not ready. Anything else is
a 500 whose message never carries a traceback or internal detail (that goes to the log).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from gotocr_fast import Cancelled, EngineClosed, InvalidRequest, OcrError, Overloaded
from gotocr_fast.inputs import ImageError, ImageTooLarge

__all__ = ["ApiError", "ClientDisconnected", "error_body", "error_event", "exception_handlers", "error_response",
           "shutting_down"]

log = logging.getLogger("gotocr_fast.server")

# OpenAI's error "type" per status.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "invalid_request_error",
    500: "server_error",
    503: "overloaded_error",
}


class ApiError(Exception):
    """An error with its HTTP status, OpenAI error type and a stable machine ``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        type: str | None = None,  # noqa: A002 - OpenAI's field name
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}


class ClientDisconnected(Exception):
    """The client went away before its answer was ready (logged as 499; nothing is sent)."""


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    code: str | None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


def error_body(exc: ApiError) -> ErrorBody:
    return ErrorBody(ErrorDetail(exc.message, exc.type, exc.code))


def error_response(exc: ApiError) -> Response[ErrorBody]:
    return Response(error_body(exc), status_code=exc.status, headers=exc.headers, media_type="application/json")


_INVALID_STATUS = {"image_too_large": 413, "invalid_image": 415}
"""HTTP status of an engine ``InvalidRequest`` by its code (400 otherwise)."""


def _retry_headers(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


def shutting_down() -> ApiError:
    """The answer to a request the server cannot finish because it is stopping."""
    return ApiError(503, "the server is shutting down", "shutting_down", headers=_retry_headers(5))


def to_api_error(exc: BaseException) -> ApiError:
    """Map any exception to the ApiError the client sees."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ClientDisconnected):
        return ApiError(499, "client closed the connection", "client_disconnected")
    if isinstance(exc, InvalidRequest):  # the engine names the fault; the status follows from it
        return ApiError(_INVALID_STATUS.get(exc.code, 400), str(exc), exc.code)
    if isinstance(exc, Overloaded):
        return ApiError(429, str(exc) or "server busy: request queue is full", "queue_full", headers=_retry_headers(1))
    if isinstance(exc, (EngineClosed, Cancelled)):
        return shutting_down()
    if isinstance(exc, ImageTooLarge):
        return ApiError(413, f"image too large: {exc}", "image_too_large")
    if isinstance(exc, ImageError):
        return ApiError(415, f"not a usable image: {exc}", "invalid_image")
    if isinstance(exc, ValidationException):
        return ApiError(400, _validation_message(exc), "invalid_request")
    if isinstance(exc, HTTPException):
        status = exc.status_code
        code = {
            400: "invalid_request",
            401: "invalid_api_key",
            404: "not_found",
            405: "method_not_allowed",
            413: "request_too_large",
            415: "unsupported_media_type",
        }.get(status, "http_error")
        message = exc.detail or "error"
        if status == 413:
            message = "request body too large"
        if status >= 500:
            return ApiError(500, "internal server error", "internal_error")
        return ApiError(status, message, code, headers=dict(exc.headers or {}))
    if isinstance(exc, OcrError):  # ModelError and any other engine failure
        return ApiError(500, "the model failed while processing the request", "model_error")
    return ApiError(500, "internal server error", "internal_error")


def _validation_message(exc: ValidationException) -> str:
    extra = exc.extra
    if isinstance(extra, list) and extra:
        parts = []
        for item in extra:
            if isinstance(item, dict):
                key = item.get("key")
                msg = item.get("message", "")
                parts.append(f"{key}: {msg}" if key else str(msg))
        if parts:
            return f"{exc.detail}: " + "; ".join(parts)
    return exc.detail or "invalid request"


def error_event(api: ApiError) -> bytes:
    """The error as one Server-Sent Event (a stream's status line is gone: errors travel in-band)."""
    return b"data: " + msgspec.json.encode(error_body(api)) + b"\n\n"


def _handle(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    api = to_api_error(exc)
    if api.status >= 500 and not isinstance(exc, ApiError):  # an ApiError is an answer, not a fault
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(api)


exception_handlers: dict[type[Exception] | int, Any] = {Exception: _handle}
"""Litestar's exception handler map: one handler for everything (HTTPException included)."""
