"""The llama.cpp model parameters every text-model load in gotocr_fast uses (engine, CLI, server,
tests and the bench's stock llama.cpp baseline): one place decides them.

The one decision so far: llama.cpp's *extra buffer types* (``llama_model_params.use_extra_bufts``),
the CPU backend's weight-repacking buffers. On a CPU backend built with AMX int8 (llama-cpp-python
compiles ggml with ``-march=native``, so every install on a Sapphire Rapids or newer Xeon has it),
the AMX buffer type takes q8_0 (and q4) weights, and its matrix multiply kills the process
(SIGILL at ``tileloadd`` or SIGSEGV, with 1 thread too: the AMX permission and tile configuration
are not set up where the kernel runs; upstream llama.cpp PR #26954). So:

* ``GOTOCR_EXTRA_BUFTS=auto`` (default): off when the CPU backend reports ``AMX_INT8``, on
  otherwise (the AVX2 / AVX-512 repacked q8_0 / q4 kernels are safe and faster);
* ``on`` / ``off``: force either choice.

f16 / f32 weights use no extra buffer type either way, so the choice only changes quantized models.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["ENV_VAR", "ExtraBufts", "decide_extra_bufts", "extra_bufts", "model_params", "open_stock_llama"]

ENV_VAR = "GOTOCR_EXTRA_BUFTS"
_MODES = ("auto", "on", "off")
_AMX_FEATURE = "AMX_INT8"

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_logged: set[tuple[bool, str]] = set()


@dataclass(frozen=True)
class ExtraBufts:
    enabled: bool
    reason: str


def decide_extra_bufts(mode: str | None, cpu_features: dict[str, str]) -> ExtraBufts:
    """The choice for ``mode`` (the environment value; None = auto) on a backend with ``cpu_features``."""
    m = (mode or "auto").strip().lower()
    if m not in _MODES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(_MODES)}; got {mode!r}")
    if m == "on":
        return ExtraBufts(True, f"{ENV_VAR}=on")
    if m == "off":
        return ExtraBufts(False, f"{ENV_VAR}=off")
    if cpu_features.get(_AMX_FEATURE, "0") not in ("0", ""):
        return ExtraBufts(False, (
            "llama.cpp's CPU backend has AMX int8, whose q8_0/q4 matrix multiply crashes the process "
            "(llama.cpp PR #26954): weights load without extra buffer types (no repacking); "
            f"{ENV_VAR}=on forces them"
        ))
    return ExtraBufts(True, "auto: no AMX int8 in llama.cpp's CPU backend")


def _cpu_features() -> dict[str, str]:
    from ._preprocess import ggml_info

    return ggml_info()["cpu_features"]


def extra_bufts() -> ExtraBufts:
    """The choice for this process's environment and CPU backend; logged once (INFO) when it is off."""
    choice = decide_extra_bufts(os.environ.get(ENV_VAR), _cpu_features())
    key = (choice.enabled, choice.reason)
    with _lock:
        first = key not in _logged
        _logged.add(key)
    if first and not choice.enabled:
        _log.info("text model: extra buffer types off: %s", choice.reason)
    return choice


def model_params(ll) -> Any:
    """``llama_model_default_params()`` of the ``llama_cpp`` module ``ll``, with our choices applied."""
    params = ll.llama_model_default_params()
    params.use_extra_bufts = extra_bufts().enabled
    return params


_stock_lock = threading.Lock()


def open_stock_llama(**kwargs) -> Any:
    """llama-cpp-python's own ``Llama(**kwargs)``, loaded with :func:`model_params`' choices.

    ``Llama`` has no argument for ``use_extra_bufts``: while it is constructed, the
    ``llama_model_default_params`` it calls returns ours (one construction at a time).
    """
    from .llama_log import llama_cpp_module

    llama_cpp = llama_cpp_module()
    import llama_cpp.llama_cpp as lib

    enabled = extra_bufts().enabled
    with _stock_lock, _default_params_with(lib, enabled):
        llm = llama_cpp.Llama(**kwargs)
    if bool(llm.model_params.use_extra_bufts) != enabled:  # a llama-cpp-python that builds its params otherwise
        llm.close()
        raise RuntimeError("llama_cpp.Llama did not take gotocr_fast's model parameters")
    return llm


@contextlib.contextmanager
def _default_params_with(lib, use_extra_bufts: bool):
    original = lib.llama_model_default_params

    def ours():
        params = original()
        params.use_extra_bufts = use_extra_bufts
        return params

    lib.llama_model_default_params = ours
    try:
        yield
    finally:
        lib.llama_model_default_params = original
