"""Giving an idle engine's untouched memory back to the operating system (Linux).

llama.cpp zeroes the whole KV pool when it creates a context, which makes every page of it
resident from start-up, and pages a request wrote stay resident after it ends. When no sequence
holds a cell, the pool's contents are never read again before being written (llama.cpp masks
empty cells), and the state it was created in is all zeros. ``madvise(MADV_DONTNEED)`` on a private
anonymous mapping returns exactly that state: the pages leave memory and read back as zeros when
next touched. So an idle engine holds only the cells its requests touch while they run.

llama.cpp does not expose its buffers, so the pool is found from the outside: it is one heap
block of exactly the pool's size, and a block that large is a memory mapping of its own, which
glibc heads with its chunk header (the mapping's length with the "mmapped" bit). The kernel may
merge that mapping with the compute buffers mapped next to it, so the block is looked for at both
ends of every anonymous mapping that appeared while the context was created, and accepted only if
exactly one header matches. Anywhere this does not hold (another C library, another allocator),
nothing is released: the engine works as before, with the pool resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import mmap
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_MADV_DONTNEED = 4
_MAPS = Path("/proc/self/maps")


def anonymous_mappings() -> set[tuple[int, int]]:
    """(start, end) of this process's private anonymous read-write mappings; empty where
    ``/proc/self/maps`` does not exist."""
    try:
        text = _MAPS.read_text()
    except OSError:
        return set()
    out = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[1].startswith("rw") and fields[1].endswith("p"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            out.add((start, end))
    return out


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library with ``madvise`` typed, or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.madvise.restype = ctypes.c_int
    return libc


class IdleRegion:
    """One anonymous mapping whose pages may be dropped while nothing in it is in use."""

    def __init__(self, start: int, end: int):
        page = mmap.PAGESIZE
        self.start = (start + page - 1) // page * page
        self.end = end // page * page
        self._libc = _libc()

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)

    def release(self) -> bool:
        """Drop the region's pages (they read back as zeros). False when the call failed."""
        if self._libc is None or self.size == 0:
            return False
        if self._libc.madvise(self.start, self.size, _MADV_DONTNEED) != 0:
            log.warning("madvise failed (%s): the KV pool stays resident", os.strerror(ctypes.get_errno()))
            return False
        return True


_IS_MMAPPED = 0x2
_MAX_HEADER_LEAD = 64
"""An aligned allocation's header may sit a few words into its mapping (glibc's memalign)."""


def _word(address: int) -> int:
    return ctypes.c_uint64.from_address(address).value


def _mmapped_block_at(start: int, size: int, limit: int) -> int:
    """Length of the glibc mmapped block that begins at ``start`` (page-aligned) and holds
    ``size`` bytes, or 0 if the words there are not such a header."""
    page = mmap.PAGESIZE
    for lead in range(0, _MAX_HEADER_LEAD, 16):
        head = _word(start + lead + 8)
        length = (head & ~0x7) + lead
        if (head & 0x7) == _IS_MMAPPED and length % page == 0 and size < length <= size + 2 * page \
                and start + length <= limit and _word(start + lead) == lead:
            return length
    return 0


def find_pool(before: set[tuple[int, int]], size: int) -> IdleRegion | None:
    """The KV pool's pages: inside the one mmapped block of ``size`` bytes at an end of an
    anonymous mapping not in ``before``; None when there is not exactly one."""
    if _libc() is None or size < 4 * mmap.PAGESIZE:
        return None
    page = mmap.PAGESIZE
    found = set()
    for lo, hi in anonymous_mappings() - before:
        if hi - lo < size:
            continue
        candidates = {lo} | {hi - size - k * page for k in (1, 2) if hi - size - k * page >= lo}
        for at in candidates:
            if _mmapped_block_at(at, size, hi):
                found.add(at)
    if len(found) != 1:
        log.debug("KV pool not identified (%d candidates): it stays resident", len(found))
        return None
    at = found.pop()
    # The data begins within the first page (after the header) and fills whole pages after it.
    return IdleRegion(at + page, at + size)


def trim_heap() -> None:
    """Give the C heap's free pages back (glibc ``malloc_trim``); nothing elsewhere."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim(0)


def resident_bytes() -> int:
    """This process's resident memory (``VmRSS``), 0 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
