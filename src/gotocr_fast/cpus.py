"""Facts about the CPU this process runs on: how many CPUs it may use, and what Linux reports of
the processor (its model name and feature flags, for choosing kernels and labelling benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_cpus", "cpu_flags", "cpu_info"]


def available_cpus() -> int:
    """CPUs in this process's affinity mask (not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API on this platform
        return max(1, os.cpu_count() or 1)


def cpu_info(path: str | Path = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor block of Linux's ``/proc/cpuinfo`` as a dict (``model name``,
    ``flags``, ...); empty where the file does not exist (off Linux)."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux names them (``avx2``, ``avx512_bf16``, ``amx_bf16``, ...)."""
    return frozenset(cpu_info(path).get("flags", "").split())
