"""gotocr_fast: fast self-hosted OCR with the GOT-OCR2 model (ggml vision encoder + llama.cpp LM).

``import gotocr_fast`` is cheap: it loads no native code, no numpy and no model. The public API
names (``OcrEngine``, its ``EngineConfig`` and per-request ``OcrOptions``, ``OcrResult``, the
error types, ...) resolve on first attribute access, from ``gotocr_fast.engine``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .openmp import default_spin_count

SPIN_COUNT_SET_HERE = default_spin_count()
"""Whether importing gotocr_fast set ``GOMP_SPINCOUNT`` (gotocr_fast.openmp says why)."""

# The single source of the package version (pyproject.toml reads it from here).
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .engine import (
        AsyncOcrStream,
        Cancelled,
        ContextOverflow,
        EngineClosed,
        InvalidRequest,
        EngineConfig,
        ModelError,
        OcrEngine,
        OcrError,
        OcrHandle,
        OcrOptions,
        OcrResult,
        Overloaded,
        Timings,
    )

_ENGINE_NAMES = frozenset(
    {
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
    }
)

__all__ = ["__version__", *sorted(_ENGINE_NAMES)]


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from . import engine

        value = getattr(engine, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _ENGINE_NAMES)
