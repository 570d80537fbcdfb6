"""Repetition control of one sequence: the no-repeat n-gram ban and the loop guard (numpy only).

``NgramBan`` is transformers' ``NoRepeatNGramLogitsProcessor`` for one sequence: it looks at the
whole ``input_ids`` — the prompt, GOT's ``<imgpad>`` placeholders included, plus every token
generated so far — and, once the sequence holds at least ``n`` ids, bans each next token that
would complete an n-gram already present. transformers rescans the sequence at every step; here
an index of (n-1)-gram → next tokens is built once from the prompt and updated with each new
token, so a step costs one tuple hash whatever the length.

``LoopGuard`` watches the generated ids for a cycle that repeats to the end of the text (the way
GOT loops on a page: one line or phrase again and again until the token budget is gone). For
every period ``p <= max_period`` it keeps ``run[p]``, how many of the latest tokens equal the
token ``p`` positions earlier; the last ``run[p] + p`` tokens then repeat a cycle of ``p``. It
fires when that periodic tail reaches ``min_repeats`` cycles and ``min_span`` tokens. The text
kept is everything before the loop plus its first cycle (one copy of the repeated line).

While any ``run[p]`` is positive the tokens it covers may be the start of a loop, so the guard
tells the caller to hold them back from a text stream (``hold_from``); they are released as soon
as the repetition breaks. That way a client that streams sees exactly the final text, never
repeats that are then taken back. Normal text holds a token or two now and then (a repeated
word); a long run of repeats is held until it breaks or the guard fires.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["NgramBan", "LoopGuard", "LoopGuardParams", "LoopCut"]


class NgramBan:
    """Banned next tokens of one sequence under transformers' no-repeat n-gram rule."""

    __slots__ = ("n", "_ids", "_next")

    def __init__(self, n: int, prompt_ids: Iterable[int]):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"no_repeat_ngram_size must be an integer >= 1; got {n!r}")
        self.n = n
        self._ids: list[int] = []
        self._next: dict[tuple[int, ...], set[int]] = {}
        for t in prompt_ids:
            self.append(int(t))

    def __len__(self) -> int:
        return len(self._ids)

    def append(self, token: int) -> None:
        """Add the sequence's next id: the n-gram it completes joins the index."""
        ids = self._ids
        ids.append(token)
        n = self.n
        if len(ids) >= n:
            key = tuple(ids[len(ids) - n : -1])
            nxt = self._next.get(key)
            if nxt is None:
                self._next[key] = {token}
            else:
                nxt.add(token)

    def banned(self) -> set[int] | tuple[()]:
        """Tokens that may not come next (the set is the index's own: do not modify it)."""
        ids = self._ids
        if len(ids) < self.n:
            return ()
        return self._next.get(tuple(ids[len(ids) - self.n + 1 :]), ())


@dataclass(frozen=True)
class LoopGuardParams:
    """When the loop guard fires (see the module doc); ``min_span`` 0 turns it off."""

    min_span: int = 256
    max_period: int = 256
    min_repeats: int = 8

    def __post_init__(self) -> None:
        for name, lo in (("min_span", 0), ("max_period", 1), ("min_repeats", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"loop guard {name} must be an integer >= {lo}; got {v!r}")

    @property
    def enabled(self) -> bool:
        return self.min_span > 0


@dataclass(frozen=True)
class LoopCut:
    """A detected loop: ``keep`` generated tokens stay (the text before the loop + one cycle)."""

    period: int
    keep: int
    repeats: float


class LoopGuard:
    """Incremental detection of a repeating cycle at the end of the generated tokens."""

    __slots__ = ("params", "_hist", "_n", "_run", "_periods", "_need", "_max_p")

    def __init__(self, params: LoopGuardParams, capacity: int = 256):
        if not params.enabled:
            raise ValueError("the loop guard is off (min_span 0): do not build one")
        self.params = params
        self._max_p = params.max_period
        self._hist = np.zeros(max(capacity, 2 * self._max_p + 2), dtype=np.int64)
        self._n = 0
        self._run = np.zeros(self._max_p, dtype=np.int64)  # _run[p-1]: trailing matches at period p
        self._periods = np.arange(1, self._max_p + 1, dtype=np.int64)
        # fire when run[p] + p >= max(min_span, min_repeats * p)
        self._need = np.maximum(params.min_span, params.min_repeats * self._periods) - self._periods

    @property
    def n_tokens(self) -> int:
        return self._n

    def push(self, token: int) -> LoopCut | None:
        """Record the next generated token; a ``LoopCut`` when the tail has become a loop."""
        n = self._n
        if n == self._hist.shape[0]:
            self._hist = np.concatenate([self._hist, np.zeros_like(self._hist)])
        hist = self._hist
        hist[n] = token
        self._n = n + 1
        run = self._run
        m = min(self._max_p, n)  # periods with a token p positions back
        if m:
            # hist[n-1], hist[n-2], ..., hist[n-m]: the token p positions back for p = 1..m
            earlier = hist[n - m : n][::-1]
            match = earlier == token
            run[:m] += 1
            run[:m] *= match
        if m < self._max_p:
            run[m:] = 0
        hits = np.flatnonzero(run >= self._need)
        if hits.size == 0:
            return None
        p = int(hits[0]) + 1  # the shortest period: its multiples repeat too
        length = int(run[p - 1]) + p
        return LoopCut(period=p, keep=self._n - length + p, repeats=length / p)

    def hold_from(self) -> int:
        """Generated tokens before this index are safe to stream; later ones may be a loop's start."""
        return self._n - int(self._run.max())
