"""The llama.cpp model parameters every text-model load in gotocr_fast uses (engine, CLI, server,
tests and the bench's stock llama.cpp baseline): one place decides them.

The one decision so far: llama.cpp's *extra buffer types* (``llama_model_params.use_extra_bufts``),
the CPU backend's weight-repacking buffers. On a CPU backend built with AMX int8 (llama-cpp-python
compiles ggml with ``-march=native``, so every install on a Sapphire Rapids or newer Xeon has it),
the AMX buffer type takes q8_0 (and q4) weights, and its matrix multiply kills the process
(SIGILL at ``tileloadd`` or SIGSEGV, with 1 thread too: the AMX permission and tile configuration
are not set up where the kernel runs; upstream llama.cpp PR #26954). So:

* ``GOTOCR_EXTRA_BUFTS=auto`` (default): off when the CPU backend reports ``AMX_INT8``, on
  otherwise (the AVX2 / AVX-512 repacked q8_0 / q4 kernels are safe and faster). With them off,
  the q4_K layer weights still go to the one extra type that is safe there, ``CPU_REPACK`` (the
  AVX2 q4_K 8x8 kernels; on an AMX Xeon, paired: decode 4-12 % faster, prefill 14 % slower, so a
  page gains a few percent), named tensor by tensor through ``tensor_buft_overrides``;
* ``on`` / ``off``: force either choice (``off``: no extra buffer type at all).

Only q4_K is routed that way because an override bypasses llama.cpp's own check of what a buffer
type can hold: the pinned llama.cpp has no x86 repacking for q8_0, q5_K or q6_K, and a tensor of
such a type forced into ``CPU_REPACK`` crashes the load (SIGSEGV; that, not the repacking, was what
killed an earlier attempt that routed every layer weight there).

f16 / f32 weights use no extra buffer type either way, so the choice only changes quantized models.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ENV_VAR", "ExtraBufts", "decide_extra_bufts", "extra_bufts", "model_params", "open_stock_llama",
           "repacked_tensors"]

ENV_VAR = "GOTOCR_EXTRA_BUFTS"
_MODES = ("auto", "on", "off")
_AMX_FEATURE = "AMX_INT8"

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_logged: set[tuple[bool, str]] = set()


_REPACK_BUFT = "CPU_REPACK"
_REPACK_TYPE = 12  # GGML_TYPE_Q4_K
_REPACK_ROWS = 8  # the 8x8 layout interleaves 8 rows: llama.cpp repacks only row counts it divides


@dataclass(frozen=True)
class ExtraBufts:
    enabled: bool
    reason: str
    repack_q4_k: bool = False
    """With ``enabled`` False: route the q4_K layer weights to ``CPU_REPACK`` anyway."""


def decide_extra_bufts(mode: str | None, cpu_features: dict[str, str]) -> ExtraBufts:
    """The choice for ``mode`` (the environment value; None = auto) on a backend with ``cpu_features``."""
    m = (mode or "auto").strip().lower()
    if m not in _MODES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(_MODES)}; got {mode!r}")
    if m == "on":
        return ExtraBufts(True, f"{ENV_VAR}=on")
    if m == "off":
        return ExtraBufts(False, f"{ENV_VAR}=off")
    if _has(cpu_features, _AMX_FEATURE):
        repack = _has(cpu_features, "AVX2")
        return ExtraBufts(False, (
            "llama.cpp's CPU backend has AMX int8, whose q8_0/q4 matrix multiply crashes the process "
            "(llama.cpp PR #26954): weights load without the AMX buffer type"
            + ("; q4_K layer weights are repacked for the AVX2 kernels (CPU_REPACK)" if repack else " (no repacking)")
            + f"; {ENV_VAR}=on forces llama.cpp's default"
        ), repack_q4_k=repack)
    return ExtraBufts(True, "auto: no AMX int8 in llama.cpp's CPU backend")


def _has(cpu_features: dict[str, str], name: str) -> bool:
    return cpu_features.get(name, "0") not in ("0", "")


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


def repacked_tensors(path: str | os.PathLike) -> list[str]:
    """Names of the text GGUF's layer weights that ``CPU_REPACK`` can hold: q4_K matrices whose
    row count is a multiple of 8. [] for a file that is not a readable GGUF (llama.cpp then reports
    the error when it loads it)."""
    from .gguf_tensors import layer_matrices, read_tensor_table

    try:
        table = read_tensor_table(path)
    except (OSError, ValueError):  # not a readable GGUF: no overrides, llama.cpp says why
        return []
    return [t.name for t in layer_matrices(table)
            if t.ggml_type == _REPACK_TYPE and t.ne[1] % _REPACK_ROWS == 0]


_buft_lock = threading.Lock()
_repack_buft: list[int | None] = []  # found once per process


def _cpu_repack_buft() -> int | None:
    """The address of ggml's ``CPU_REPACK`` buffer type, or None where the CPU backend lacks it."""
    with _buft_lock:
        if not _repack_buft:
            _repack_buft.append(_find_extra_buft(_REPACK_BUFT))
        return _repack_buft[0]


def _find_extra_buft(name: str) -> int | None:
    import llama_cpp

    vp = ctypes.c_void_p
    # the libggml llama-cpp-python loaded (and our extensions link): one ggml per process
    ggml = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml.so"))
    base = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    ggml.ggml_backend_dev_by_type.restype, ggml.ggml_backend_dev_by_type.argtypes = vp, [ctypes.c_int]
    base.ggml_backend_dev_backend_reg.restype, base.ggml_backend_dev_backend_reg.argtypes = vp, [vp]
    base.ggml_backend_reg_get_proc_address.restype = vp
    base.ggml_backend_reg_get_proc_address.argtypes = [vp, ctypes.c_char_p]
    base.ggml_backend_buft_name.restype, base.ggml_backend_buft_name.argtypes = ctypes.c_char_p, [vp]
    dev = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    if not dev:
        return None
    proc = base.ggml_backend_reg_get_proc_address(base.ggml_backend_dev_backend_reg(dev), b"ggml_backend_dev_get_extra_bufts")
    if not proc:
        return None
    bufts = ctypes.CFUNCTYPE(ctypes.POINTER(vp), vp)(proc)(dev)
    i = 0
    while bufts and bufts[i]:
        if base.ggml_backend_buft_name(bufts[i]) == name.encode():
            return int(bufts[i])
        i += 1
    return None


class _BuftOverride(ctypes.Structure):
    # struct llama_model_tensor_buft_override of the pinned llama.h
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _route_to_repack(params: Any, path: str | os.PathLike) -> int:
    """Set ``params.tensor_buft_overrides`` to send :func:`repacked_tensors` to ``CPU_REPACK``;
    returns how many. The override array lives on ``params`` (llama.cpp reads it while loading)."""
    names = repacked_tensors(path)
    buft = _cpu_repack_buft() if names else None
    if not names or buft is None:
        return 0
    patterns = [("^" + re.escape(n) + "$").encode() for n in names]
    table = (_BuftOverride * (len(patterns) + 1))(*[_BuftOverride(p, buft) for p in patterns], _BuftOverride(None, None))
    params.tensor_buft_overrides = ctypes.cast(table, ctypes.c_void_p)
    params._gotocr_overrides = (table, patterns)
    return len(patterns)


def model_params(ll, path: str | os.PathLike | None = None) -> Any:
    """``llama_model_default_params()`` of the ``llama_cpp`` module ``ll``, with our choices applied
    (the q4_K routing needs the model's ``path``)."""
    params = ll.llama_model_default_params()
    choice = extra_bufts()
    params.use_extra_bufts = choice.enabled
    if choice.repack_q4_k and path is not None:
        _route_to_repack(params, path)
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

    choice = extra_bufts()
    enabled = choice.enabled
    path = kwargs.get("model_path") if choice.repack_q4_k else None
    with _stock_lock, _default_params_with(lib, enabled, path):
        llm = llama_cpp.Llama(**kwargs)
    if bool(llm.model_params.use_extra_bufts) != enabled:  # a llama-cpp-python that builds its params otherwise
        llm.close()
        raise RuntimeError("llama_cpp.Llama did not take gotocr_fast's model parameters")
    return llm


@contextlib.contextmanager
def _default_params_with(lib, use_extra_bufts: bool, repack_path: str | None = None):
    original = lib.llama_model_default_params

    def ours():
        params = original()
        params.use_extra_bufts = use_extra_bufts
        if repack_path is not None:
            _route_to_repack(params, repack_path)
        return params

    lib.llama_model_default_params = ours
    try:
        yield
    finally:
        lib.llama_model_default_params = original
