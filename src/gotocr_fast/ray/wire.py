"""What an engine replica streams back for one request, and how engine errors cross processes.

One request is one streaming call. Its items are ``(kind, payload)`` tuples:

* ``(ACCEPTED, None)`` — first, once ``OcrEngine.submit`` accepted the request (so validation
  errors keep their meaning: they arrive instead of it, before any text);
* ``(DELTA, text)`` — text as it is generated (deltas that piled up meanwhile are joined);
* ``(RESULT, OcrResult)`` — last, on success;
* ``(ERROR, packed error)`` — last, on failure (at submission or later).

Errors travel as data, not as raised exceptions: Ray would wrap a raised one (its message then
carries the replica's traceback), and some engine errors cannot be rebuilt by pickle (keyword-only
constructor arguments). :func:`pack_error` / :func:`unpack_error` rebuild the engine's own type
with its message and plain attributes, so the HTTP layer maps it to the same status as locally.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ACCEPTED", "DELTA", "RESULT", "ERROR", "pack_error", "unpack_error"]

ACCEPTED, DELTA, RESULT, ERROR = "accepted", "delta", "result", "error"

_PLAIN = (int, float, str, bool, type(None))


def pack_error(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    state = {k: v for k, v in vars(exc).items() if isinstance(v, _PLAIN)}
    return {"module": cls.__module__, "name": cls.__qualname__, "message": str(exc), "state": state}


def unpack_error(packed: dict[str, Any]) -> BaseException:
    """The engine's exception type again when it is one of ours; otherwise a ModelError that names it."""
    from gotocr_fast.engine.errors import ModelError

    module, name, message = packed.get("module", ""), packed.get("name", ""), packed.get("message", "")
    cls: Any = None
    # only our own exception classes are rebuilt: the payload names a class to import
    if module == "gotocr_fast" or module.startswith("gotocr_fast."):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return ModelError(f"{name}: {message}" if name else message)
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    for key, value in (packed.get("state") or {}).items():
        setattr(exc, key, value)
    return exc
