"""Token selection on one logits row, with transformers ``generate`` semantics (numpy only).

transformers applies, in this order (``GenerationMixin._get_logits_processor``):

1. ``RepetitionPenaltyLogitsProcessor`` — for every id present in ``input_ids`` (the whole prompt,
   GOT's ``<imgpad>`` placeholders included, plus the ids generated so far; each id once):
   ``logit / penalty`` if the logit is positive (``>= 0``), ``logit * penalty`` if negative.
   It is a *processor*, so greedy decoding applies it too.
2. ``NoRepeatNGramLogitsProcessor`` (``no_repeat_ngram_size`` n > 0): ``-inf`` for every token
   that would complete an n-gram already in ``input_ids`` (prompt with its ``<imgpad>`` ids, plus
   the generated ids); see ``repetition.NgramBan``. A processor too: greedy applies it.
3. Only when sampling (``do_sample``; here: ``temperature > 0``): ``TemperatureLogitsWarper``
   (``logits / temperature``), ``TopKLogitsWarper`` (only if ``top_k > 0``; transformers'
   GenerationConfig default is 50, our API default is 0 = off, as in OpenAI/vLLM), then
   ``TopPLogitsWarper``: sort ascending, remove tokens whose ascending cumulative probability is
   ``<= 1 - top_p``, always keep the most likely one.
4. softmax and one multinomial draw.

The RNG is per request (``numpy.random.Generator(PCG64(seed))``): same seed → same tokens; the
draws are not torch's, only the distribution is the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .repetition import NgramBan

__all__ = ["SamplingParams", "Sampler", "apply_repetition_penalty", "ban_tokens", "process_logits", "top_p_mask"]

_TOP_P_CANDIDATES = 2048
"""Candidates taken by argpartition before the exact top-p sort (falls back to a full sort)."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    no_repeat_ngram_size: int = 0  # 0: off (the engine's per-mode default is in defaults.py)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def number(name: str, v: object) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number; got {v!r}")
            return float(v)

        t = number("temperature", self.temperature)
        if not 0.0 <= t <= 2.0:
            raise ValueError(f"temperature must be in [0, 2]; got {t}")
        p = number("top_p", self.top_p)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1]; got {p}")
        r = number("repetition_penalty", self.repetition_penalty)
        if not r > 0.0:
            raise ValueError(f"repetition_penalty must be > 0; got {r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0; got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer; got {self.seed!r}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0; got {self.seed}")
        n = self.no_repeat_ngram_size
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"no_repeat_ngram_size must be an integer >= 0 (0 = off); got {n!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def apply_repetition_penalty(logits: np.ndarray, ids: np.ndarray, penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor on one row, in place; ``ids`` unique, in range."""
    if penalty == 1.0 or ids.size == 0:
        return logits
    sel = logits[ids]
    logits[ids] = np.where(sel < 0, sel * np.float32(penalty), sel / np.float32(penalty))
    return logits


def top_p_mask(logits: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the tokens transformers' TopPLogitsWarper keeps (descending probability order).

    A token is kept iff the probability mass of the tokens ranked strictly above it is < top_p
    (≡ its ascending cumulative probability > 1 - top_p); the top token is always kept.
    """
    n = logits.shape[0]
    m = logits.max()
    z = np.exp((logits - m).astype(np.float64))
    total = z.sum()
    k = min(_TOP_P_CANDIDATES, n)
    if k < n:
        cand = np.argpartition(-logits, k - 1)[:k]
    else:
        cand = np.arange(n)
    order = cand[np.argsort(-logits[cand], kind="stable")]
    probs = z[order] / total
    if k < n and probs.sum() < top_p:  # rare: mass spread thin, do the full sort
        order = np.argsort(-logits, kind="stable")
        probs = z[order] / total
    exclusive = np.cumsum(probs) - probs
    keep = exclusive < top_p
    keep[0] = True
    return order[keep]


def ban_tokens(logits: np.ndarray, banned: Iterable[int]) -> np.ndarray:
    """``-inf`` at the banned ids, in place; ids past the row (none in practice) are skipped, as
    transformers does for ids beyond the LM head."""
    ids = np.fromiter(banned, dtype=np.int64)
    logits[ids[ids < logits.shape[0]]] = -np.inf
    return logits


def process_logits(
    logits: np.ndarray, params: SamplingParams, penalty_ids: np.ndarray | None = None,
    banned: Iterable[int] = (),
) -> np.ndarray:
    """The processed scores transformers would sample from (``-inf`` = removed). Returns a copy."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if params.repetition_penalty != 1.0 and penalty_ids is not None:
        apply_repetition_penalty(out, penalty_ids, params.repetition_penalty)
    if banned:
        ban_tokens(out, banned)
    if params.greedy:
        return out
    if params.temperature != 1.0:
        out /= np.float32(params.temperature)
    if params.top_k > 0 and params.top_k < out.shape[0]:
        kth = np.partition(out, -params.top_k)[-params.top_k]
        out[out < kth] = -np.inf
    if params.top_p < 1.0:
        kept = top_p_mask(out, params.top_p)
        masked = np.full_like(out, -np.inf)
        masked[kept] = out[kept]
        out = masked
    return out


class Sampler:
    """Per-request token selection state: the penalty id set, the n-gram index and the RNG."""

    __slots__ = ("params", "_rng", "_seen", "_seen_ids", "_dirty", "vocab_size", "_ngram")

    def __init__(self, params: SamplingParams, prompt_ids: Iterable[int], vocab_size: int):
        self.params = params
        self.vocab_size = vocab_size
        self._rng = np.random.Generator(np.random.PCG64(params.seed))
        self._seen = np.zeros(vocab_size, dtype=bool)
        all_ids = np.fromiter(prompt_ids, dtype=np.int64)
        ids = all_ids[(all_ids >= 0) & (all_ids < vocab_size)]
        self._seen[ids] = True
        self._seen_ids = np.flatnonzero(self._seen)
        self._dirty = False
        n = params.no_repeat_ngram_size
        self._ngram = NgramBan(n, all_ids.tolist()) if n > 0 else None

    def accept(self, token: int) -> None:
        """Record a generated token (it joins the repetition-penalty set and the n-gram index)."""
        if self._ngram is not None:
            self._ngram.append(token)
        if 0 <= token < self.vocab_size and not self._seen[token]:
            self._seen[token] = True
            self._dirty = True

    def banned(self) -> set[int] | tuple[()]:
        """The tokens the n-gram rule forbids next (empty when the rule is off)."""
        return self._ngram.banned() if self._ngram is not None else ()

    def penalty_ids(self) -> np.ndarray:
        if self._dirty:
            self._seen_ids = np.flatnonzero(self._seen)
            self._dirty = False
        return self._seen_ids

    def sample(self, logits: np.ndarray) -> int:
        """Choose the next token from one logits row (float32, length ``vocab_size`` or more)."""
        row = logits[: self.vocab_size]
        p = self.params
        banned = self.banned()
        if p.greedy and p.repetition_penalty == 1.0:
            best = int(np.argmax(row))
            if best not in banned:  # the usual case: no copy of the row
                return best
            return int(np.argmax(ban_tokens(np.array(row, dtype=np.float32, copy=True), banned)))
        scores = process_logits(row, p, self.penalty_ids() if p.repetition_penalty != 1.0 else None, banned)
        if p.greedy:
            return int(np.argmax(scores))
        finite = np.flatnonzero(np.isfinite(scores))
        if finite.size == 0:  # every token banned (transformers would fail to sample): take the raw best
            return int(np.argmax(row))
        s = scores[finite].astype(np.float64)
        s -= s.max()
        w = np.exp(s)
        c = np.cumsum(w)
        u = self._rng.random() * c[-1]
        i = int(np.searchsorted(c, u, side="right"))
        return int(finite[min(i, finite.size - 1)])
