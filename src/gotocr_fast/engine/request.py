"""Request lifecycle objects: typed results, the caller's handle, one sequence's decode state.

A request (one image or one multi-page group) becomes one or more *sequences* (one per box; one
otherwise). Each sequence occupies one llama.cpp slot while it decodes. The request handle joins
their texts with ``"\\n"`` and streams them in order.
"""

from __future__ import annotations

import codecs
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..tokens import IM_END
from .errors import Cancelled, OcrError
from .repetition import LoopCut, LoopGuard
from .sampling import Sampler

__all__ = ["Timings", "OcrResult", "OcrHandle", "Detokenizer", "DecodeSequence"]

STOP_TEXT = IM_END
"""GOT stops when this text appears in the decoded stream (KeywordsStoppingCriteria)."""

StopReason = int | str | None
"""What ended a stopped generation: the stop token's id, or the stop text found in the output."""


@dataclass(frozen=True)
class Timings:
    preprocess_ms: float = 0.0
    encode_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0


@dataclass(frozen=True)
class OcrResult:
    text: str
    finish_reason: str  # "stop" | "length" | "repetition" (the loop guard stopped a loop)
    prompt_tokens: int
    completion_tokens: int
    timings: Timings = field(default_factory=Timings)
    cache_hit: bool = False
    stop_reason: StopReason = None
    """With ``finish_reason`` "stop": the id of the token that ended generation (``<|im_end|>``,
    ``<|endoftext|>``), or the stop text found in the output; None otherwise."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Detokenizer:
    """Incremental bytes → text: never splits a multi-byte UTF-8 character, holds back any tail
    that could be the start of a stop text, and cuts the text where a stop text appears
    (``stopped_by`` names it; the earliest one wins)."""

    __slots__ = ("_dec", "_pending", "text", "stopped", "stopped_by", "_stops")

    def __init__(self, stop_texts: str | tuple[str, ...] = STOP_TEXT):
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # decoded, not yet released (might begin a stop text)
        self.text = ""  # released text
        self.stopped = False
        self.stopped_by: str | None = None
        self._stops = (stop_texts,) if isinstance(stop_texts, str) else tuple(stop_texts)

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the newly released text (may be empty)."""
        if self.stopped:
            return ""
        self._pending += self._dec.decode(data)
        found = [(i, stop) for stop in self._stops if (i := self._pending.find(stop)) >= 0]
        if found:
            i, stop = min(found, key=lambda f: f[0])
            self.stopped, self.stopped_by = True, stop
            return self._release(self._pending[:i])
        # keep the longest tail that is a proper prefix of a stop text
        keep = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._pending)), keep, -1):
                if self._pending.endswith(stop[:k]):
                    keep = k
                    break
        return self._release(self._pending[: len(self._pending) - keep], rest=self._pending[len(self._pending) - keep :])

    def flush(self) -> str:
        """End of generation: release everything held back (an incomplete byte sequence → U+FFFD)."""
        if self.stopped:
            return ""
        tail = self._pending + self._dec.decode(b"", final=True)
        return self._release(tail)

    def _release(self, out: str, rest: str = "") -> str:
        self._pending = rest
        self.text += out
        return out


class DecodeSequence:
    """One prompt in one llama.cpp slot: prefill parts, then the decode loop's state."""

    # states (ATTACH: has a slot, waits for another sequence with the same share_key to finish
    # the shared part of the prompt, then copies its KV instead of computing it again)
    WAITING, PREFIX, EMBED, SUFFIX, DECODE, DONE, ATTACH = range(7)

    def __init__(
        self,
        *,
        prefix: list[int],
        n_image_tokens: int,
        suffix: list[int],
        sampler: Sampler,
        max_tokens: int,
        piece: Callable[[int], bytes],
        on_delta: Callable[[str], None],
        on_done: Callable[["DecodeSequence"], None],
        loop_guard: LoopGuard | None = None,
        stop_texts: tuple[str, ...] = (),
    ):
        self.prefix = np.asarray(prefix, dtype=np.int32)
        self.suffix = np.asarray(suffix, dtype=np.int32)
        self.n_image_tokens = n_image_tokens
        self.embeddings: np.ndarray | None = None  # float32 [n_image_tokens, n_embd], set before scheduling
        self.sampler = sampler
        self.max_tokens = max_tokens
        self.piece = piece
        self.on_delta = on_delta
        self.on_done = on_done
        self.state = DecodeSequence.WAITING
        self.slot = -1
        self.n_past = 0
        self.last_token = -1
        self.generated: list[int] = []
        self.detok = Detokenizer((STOP_TEXT, *stop_texts))
        self.loop_guard = loop_guard
        self.loop: LoopCut | None = None  # the loop the guard stopped, if it did
        self._text: list[str] = []  # what went to on_delta: the sequence's text
        self._held: list[tuple[int, str]] = []  # (generated index, delta) held back by the loop guard
        self.finish_reason: str | None = None
        self.stop_reason: StopReason = None  # the stop token id or stop text, when it stopped
        self.error: BaseException | None = None
        self.cancelled = False
        self.logits_hook: Callable[[np.ndarray], None] | None = None  # debugging / parity tests
        # Sequences with equal share_key have equal KV up to n_shared (same prefix ids, same image
        # embeddings): one computes it, the others copy it (scheduler.py). None: never shared.
        self.share_key: bytes | None = None
        self.kv_copied = False  # its shared part was copied from another sequence
        self.t_prefill_start = 0.0
        self.t_first_token = 0.0
        self.t_done = 0.0

    @property
    def n_shared(self) -> int:
        """Prompt positions that only depend on the share_key: the text prefix and the image rows."""
        return len(self.prefix) + self.n_image_tokens

    @property
    def prompt_tokens(self) -> int:
        return self.n_shared + len(self.suffix)

    @property
    def text(self) -> str:
        """The text streamed so far (at the end: the sequence's result)."""
        return "".join(self._text)

    def _emit(self, delta: str) -> None:
        self._text.append(delta)
        self.on_delta(delta)

    def _release(self, before: int) -> None:
        """Stream the held deltas of the generated tokens with an index below ``before``."""
        held = self._held
        k = 0
        while k < len(held) and held[k][0] < before:
            self._emit(held[k][1])
            k += 1
        if k:
            del held[:k]

    def add_token(self, token: int, stop_ids: frozenset[int]) -> bool:
        """Record a sampled token; return True when the sequence is finished."""
        if not self.generated:
            self.t_first_token = time.perf_counter()
        if token in stop_ids:
            self.generated.append(token)  # counted: it is a generated token (as in usage of OpenAI/vLLM)
            self.stop_reason = token
            self._finish("stop")
            return True
        self.generated.append(token)
        self.last_token = token
        self.sampler.accept(token)
        delta = self.detok.feed(self.piece(token))
        guard = self.loop_guard
        if guard is None:
            if delta:
                self._emit(delta)
        else:
            cut = guard.push(token)
            if delta:
                self._held.append((len(self.generated) - 1, delta))
            if cut is not None and not self.detok.stopped:
                self._stop_loop(cut)
                return True
            self._release(guard.hold_from())
        if self.detok.stopped:
            self.stop_reason = self.detok.stopped_by
            self._finish("stop")
            return True
        if len(self.generated) >= self.max_tokens:
            self._finish("length")
            return True
        return False

    def _stop_loop(self, cut: LoopCut) -> None:
        """Keep the text before the loop and its first cycle; drop the repeats after it."""
        self._release(cut.keep)
        self._held.clear()
        # the kept tokens' text, decoded afresh: it may end in bytes the detokenizer still held
        # (part of a character, a possible start of the stop text); an unfinished character goes
        data = b"".join(self.piece(t) for t in self.generated[: cut.keep])
        kept = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)
        sent = self.text
        if len(kept) > len(sent) and kept.startswith(sent):
            self._emit(kept[len(sent) :])
        self.loop = cut
        self.finish_reason = "repetition"
        self.state = DecodeSequence.DONE
        self.t_done = time.perf_counter()

    def _finish(self, reason: str) -> None:
        self._release(len(self.generated))  # a stop or the budget ends any repetition: all is text
        if reason == "length":
            tail = self.detok.flush()
            if tail:
                self._emit(tail)
        else:
            # stopped: what was held back is either the start of the stop text or a partial char
            if not self.detok.stopped:
                tail = self.detok.flush()
                if tail:
                    self._emit(tail)
        self.finish_reason = reason
        self.state = DecodeSequence.DONE
        self.t_done = time.perf_counter()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.state = DecodeSequence.DONE
        self.t_done = time.perf_counter()


_END = object()


class OcrHandle:
    """The caller's handle: ``result(timeout)``, ``cancel()``, and iteration over text deltas.

    Thread-safe. Deltas of a multi-box request arrive box after box, separated by ``"\\n"``.
    """

    def __init__(self, request_id: str, n_parts: int, *, stream: bool = True):
        self.id = request_id
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: OcrResult | None = None
        self._error: BaseException | None = None
        self._cancel_hooks: list[Callable[[], None]] = []
        self._cancelled = False
        self._n_parts = n_parts
        self._part_text: list[list[str]] = [[] for _ in range(n_parts)]
        self._part_done = [False] * n_parts
        self._next_part = 0  # the part whose deltas are being streamed live
        self._deltas: queue.SimpleQueue | None = queue.SimpleQueue() if stream else None
        self._listeners: list[Callable[[object], None]] = []
        # timing pieces filled by the engine
        self.preprocess_ms = 0.0
        self.encode_ms = 0.0
        self.cache_hit = False
        self.sequences: list[DecodeSequence] = []

    # --- caller side ---------------------------------------------------------------------------
    def result(self, timeout: float | None = None) -> OcrResult:
        """Block until finished; raise the request's error (Cancelled, ModelError, ...)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} not finished after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop the request: its slot (or queue place) is released at once."""
        with self._lock:
            if self._done.is_set() or self._cancelled:
                return
            self._cancelled = True
            hooks = list(self._cancel_hooks)
        for h in hooks:
            h()
        self._fail(Cancelled(f"request {self.id} was cancelled"))

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def __iter__(self) -> Iterator[str]:
        """Text deltas as they are generated; raises the request's error at the end if it failed."""
        if self._deltas is None:
            raise RuntimeError("this request was submitted without streaming")
        while True:
            item = self._deltas.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item  # type: ignore[misc]

    def add_listener(self, fn: Callable[[object], None]) -> None:
        """``fn(delta_str)`` for each delta and ``fn(None)`` at the end (called on engine threads)."""
        with self._lock:
            self._listeners.append(fn)
            done = self._done.is_set()
        if done:
            fn(None)

    # --- engine side --------------------------------------------------------------------------
    def _on_cancel(self, hook: Callable[[], None]) -> None:
        with self._lock:
            self._cancel_hooks.append(hook)

    def _emit(self, text: str) -> None:
        if self._deltas is not None:
            self._deltas.put(text)
        for fn in self._listeners:
            fn(text)

    def _part_delta(self, part: int, text: str) -> None:
        with self._lock:
            self._part_text[part].append(text)
            if part == self._next_part:
                self._emit(text)

    def _part_finished(self, part: int) -> None:
        with self._lock:
            self._part_done[part] = True
            # advance the live part; flush buffered text of parts that already ran
            while self._next_part < self._n_parts and self._part_done[self._next_part]:
                self._next_part += 1
                if self._next_part < self._n_parts:
                    # parts are joined with "\n"; what the next part already produced follows it
                    self._emit("\n" + "".join(self._part_text[self._next_part]))

    def _finish(self, result: OcrResult) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._result = result
            self._done.set()
            self._close_stream()

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._error = error if isinstance(error, OcrError) else OcrError(str(error))
            if self._error is not error:
                self._error.__cause__ = error
            self._done.set()
            self._close_stream()

    def _close_stream(self) -> None:
        if self._deltas is not None:
            self._deltas.put(_END)
        for fn in self._listeners:
            fn(None)
