"""Cap glibc's malloc arenas in the server process.

glibc gives threads that allocate concurrently arenas of their own (up to 8 per core), and memory
freed into an arena stays with it: a server whose worker threads come and go holds more than it
uses. Measured over 4,000 requests, the resident size grew 382 → 474 MB before it levelled off;
with two arenas it stayed at 352–364 MB. ``MALLOC_ARENA_MAX`` in the environment takes precedence.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["SERVER_ARENA_MAX", "limit_malloc_arenas"]

SERVER_ARENA_MAX = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit_malloc_arenas(arenas: int = SERVER_ARENA_MAX) -> bool:
    """Set glibc's ``M_ARENA_MAX``; True when it was set. Does nothing (False) on other C libraries
    or when ``MALLOC_ARENA_MAX`` is already in the environment (the operator's choice wins)."""
    if os.environ.get("MALLOC_ARENA_MAX") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return libc.mallopt(_M_ARENA_MAX, int(arenas)) == 1
