"""The OCR engine: model loading, scheduling, sampling and the public API (imported lazily)."""

from __future__ import annotations

from .errors import Cancelled, ContextOverflow, EngineClosed, InvalidRequest, ModelError, OcrError, Overloaded

__all__ = [
    "OcrEngine",
    "EngineConfig",
    "OcrOptions",
    "OcrHandle",
    "AsyncOcrStream",
    "OcrResult",
    "Timings",
    "OcrError",
    "InvalidRequest",
    "ContextOverflow",
    "Overloaded",
    "Cancelled",
    "EngineClosed",
    "ModelError",
]

_LAZY = {"OcrEngine": ".api", "AsyncOcrStream": ".api", "EngineConfig": ".options", "OcrOptions": ".options", "OcrHandle": ".request",
         "OcrResult": ".request", "Timings": ".request"}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value
