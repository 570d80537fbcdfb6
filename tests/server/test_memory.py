"""The server's malloc arena cap: checked by counting glibc's arenas (``malloc_info``) after many
threads allocated at once, in a fresh interpreter each time."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

COUNT_ARENAS = r"""
import ctypes, sys, threading
from gotocr_fast.server.memory import limit_malloc_arenas
print(limit_malloc_arenas() if sys.argv[1] == "cap" else None)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
start = threading.Barrier(16)
def work():
    start.wait()
    blocks = [libc.malloc(256) for _ in range(20000)]
    for b in blocks:
        libc.free(b)
threads = [threading.Thread(target=work) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
libc.tmpfile.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fflush.argtypes = [ctypes.c_void_p]
libc.rewind.argtypes = [ctypes.c_void_p]
libc.fread.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p]
fp = libc.tmpfile()
libc.malloc_info(0, fp); libc.fflush(fp); libc.rewind(fp)
buf = ctypes.create_string_buffer(1 << 20)
n = libc.fread(buf, 1, len(buf), fp)
print(buf.raw[:n].decode().count("<heap nr="))
"""


def arenas(mode: str, env: dict[str, str]) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", COUNT_ARENAS, mode], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    return out[0], int(out[1])


def test_arena_cap_holds_under_many_allocating_threads():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    set_, capped = arenas("cap", env)
    assert set_ == "True" and 1 <= capped <= 2
    _, free = arenas("none", env)
    assert free > 2  # without the cap the same threads do spread over more arenas


def test_environment_setting_wins():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    set_, n = arenas("cap", {**env, "MALLOC_ARENA_MAX": "1"})
    assert set_ == "False" and n == 1
