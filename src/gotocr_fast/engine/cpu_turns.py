"""Takes turns on the CPU between the vision encoder and the LM decode loop.

Both run ggml graphs whose worker threads spin at a barrier after every op. When the encoder's
threads and llama.cpp's threads together exceed the cores, the two teams preempt each other
mid-barrier and both crawl (measured on 2 cores: 8 concurrent pages ran no faster than one at a
time). Running them in turns, each with every core, does the same total work without that waste.

Taking turns is not enough on its own: the turns must also run on one thread. The CPU backend of
llama-cpp-python's ggml parallelises each graph with OpenMP, and GNU libgomp keeps a team of
worker threads for every thread that has started a parallel region. Once the process holds more
such workers than it may use CPUs, libgomp stops spinning at its barriers and parks the threads in
the kernel at every op instead. An encoder thread and a decode thread each owning a team crosses
that line on 2 cores: a q4_k_m decode step of the full-size model took 49.5 ms instead of 29.7
(AMX Xeon, 2 threads; the prefill and the encode slowed by 10-20 %). So :meth:`CpuTurns.run`
runs every turn on one compute thread, whose single team of workers stays within the CPUs.

The policy favours throughput: when both parties want the CPU they alternate (one encode, one
decode step, one encode, ...), so a backlog of new pages is encoded and prefilled quickly and
their decoding then runs in one big batch. The price: while a backlog of encodes lasts, running
streams advance one token per encode (seconds) instead of per step.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

__all__ = ["CpuTurns", "NoTurns"]


class CpuTurns:
    """Mutual exclusion between named parties that alternates when more than one is waiting.

    A party that has just had its turn yields to any other party already waiting, so neither can
    starve the other however fast it comes back.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._holder: str | None = None
        self._waiting: dict[str, int] = {}
        self._last: str | None = None
        self.turns: dict[str, int] = {}  # turns taken per party (for tests and stats)
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gotocr-compute")

    def run(self, who: str, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` in ``who``'s turn, on the compute thread (see the module's docstring);
        its result or exception comes back to the caller."""
        with self.turn(who):
            return self._compute.submit(fn, *args).result()

    def close(self) -> None:
        """Stop the compute thread once the turn it runs (if any) is over."""
        self._compute.shutdown(wait=True)

    def _may_take(self, who: str) -> bool:
        if self._holder is not None:
            return False
        others_waiting = any(n for w, n in self._waiting.items() if w != who)
        return not (others_waiting and self._last == who)

    @contextlib.contextmanager
    def turn(self, who: str) -> Iterator[None]:
        with self._cv:
            self._waiting[who] = self._waiting.get(who, 0) + 1
            try:
                while not self._may_take(who):
                    self._cv.wait()
            finally:
                self._waiting[who] -= 1
            self._holder = who
            self.turns[who] = self.turns.get(who, 0) + 1
        try:
            yield
        finally:
            with self._cv:
                self._holder = None
                self._last = who
                self._cv.notify_all()

    @property
    def holder(self) -> str | None:
        return self._holder


class NoTurns:
    """Stand-in when the parties have enough cores to run at the same time."""

    def __init__(self) -> None:
        self.turns: dict[str, int] = {}

    def run(self, who: str, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` on the caller's thread: the parties' thread teams fit in the CPUs together."""
        return fn(*args)

    def close(self) -> None:
        pass

    @contextlib.contextmanager
    def turn(self, who: str) -> Iterator[None]:
        yield

    @property
    def holder(self) -> None:
        return None
