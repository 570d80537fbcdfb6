"""Checkpoint → GGUF conversion for GOT-OCR2 (``gotocr convert``).

``convert_checkpoint(src_dir, out_dir, outtype=None)`` (``gguf_io.DEFAULT_OUTTYPE`` unless given)
reads a GOT checkpoint in the original GOT-OCR2.0 layout or the transformers layout and writes
the text GGUF (llama.cpp ``qwen2``) and the vision GGUF (``got-vision``, see docs/ARCHITECTURE.md).

The heavy modules (gguf, numpy, safetensors) load on first use of the converter, so importing
``gotocr_fast.convert.vocab`` or the error type stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConvertError

if TYPE_CHECKING:
    from .checkpoint import ModelFiles, convert_checkpoint

__all__ = ["ConvertError", "ModelFiles", "convert_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in ("ModelFiles", "convert_checkpoint"):
        from . import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
