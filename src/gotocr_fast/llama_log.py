"""llama.cpp's and ggml's log, as gotocr_fast shows it: errors always, everything else on request.

llama-cpp-python installs a log callback when it is imported, but 0.3.36 maps ggml's log levels
with an older numbering: a warning (3) counts as an error and is printed, an error (4) counts as
debug and is hidden. So a harmless load-time warning (GOT's vocabulary has a ``</s>`` that looks
like a control token) appeared in every user-facing command's output while real failures stayed
silent. :func:`llama_cpp_module` installs a callback with ggml's actual levels instead.

``llama_log_set`` also sets ggml's logger, so this covers the ggml that our vision encoder runs on
too (one ggml per process). The setting is process-wide, like llama.cpp's own.
"""

from __future__ import annotations

import ctypes
import sys
import threading

__all__ = ["llama_cpp_module", "set_llama_verbose"]

# enum ggml_log_level (ggml.h of the pinned llama.cpp)
_LEVEL_ERROR = 4
_LEVEL_CONT = 5  # continues the previous message

_lock = threading.Lock()
_verbose = False
_last_shown = False  # whether the message a CONT line continues was shown
_callback = None  # the ctypes callback must stay alive as long as llama.cpp may call it


def _show(level: int, text: bytes) -> None:
    global _last_shown
    shown = _last_shown if level == _LEVEL_CONT else (_verbose or level == _LEVEL_ERROR)
    _last_shown = shown
    if shown:
        try:
            sys.stderr.write(text.decode("utf-8", errors="replace"))
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed: nowhere left to report to
            pass


def llama_cpp_module(verbose: bool | None = None):
    """Import llama-cpp-python with our log callback installed; ``verbose`` (if given) sets whether
    llama.cpp's info/warning/debug lines are shown. Returns the ``llama_cpp`` module."""
    global _callback
    import llama_cpp

    with _lock:
        if _callback is None:
            _callback = llama_cpp.llama_log_callback(lambda level, text, _user: _show(level, text))
            llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    if verbose is not None:
        set_llama_verbose(verbose)
    return llama_cpp


def set_llama_verbose(verbose: bool) -> None:
    """Show every llama.cpp / ggml log line (True) or only errors (False) from now on."""
    global _verbose
    with _lock:
        _verbose = bool(verbose)
