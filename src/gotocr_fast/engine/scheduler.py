"""Continuous batching over llama.cpp sequences; one thread owns the llama context.

Each step (vLLM's loop, on llama.cpp's API):

1. drop cancelled sequences (``llama_memory_seq_rm``; their slot is free at once), admit waiting
   ones into free slots;
2. one *token* batch: every decoding sequence's last token, plus the text prefix (ChatML up to
   ``<img>``) of newly admitted ones and the text suffix (``</img>\\nOCR: …assistant\\n``) of those
   whose image is in; logits only for rows that are sampled;
3. sample each decoding sequence's next token (numpy), stream the text, finish on ``<|im_end|>``,
   the stop text or ``max_tokens``; finished sequences leave and free their KV cells;
4. one *embedding* batch (``llama_batch.embd``) with the image rows of every sequence whose prefix
   was just decoded. A llama_batch holds either token ids or embeddings, never both, so image
   prefill is its own ``llama_decode`` between token steps (chunked to ``n_batch`` rows).

Position bookkeeping is per sequence (``n_past``); a slot is a llama.cpp seq id.

One KV pool: the slots share one KV stream of ``model.kv_tokens`` cells (``model.py``), so a batch
is one forward pass whatever its seq ids, and memory follows the tokens actually held. Every
running sequence is counted for the cells it holds or was promised (``_cells``): from admission
on its whole prompt (and the tokens it replays, below), then one more per decode step. Cells a
sequence shares with another (see "Shared prompts") are counted for each, so the count never
falls short of what llama.cpp holds.

* Admission: the first waiting sequence (FIFO) starts when a slot is free and its cells fit
  what is left of the pool; alone it always fits (``kv_tokens`` >= one request's context).
* The pool runs out mid-generation: before a step whose writes would not fit, the youngest
  running sequence (last admitted) is *preempted*: its cells are given back and it goes back to
  the head of the queue with everything it generated. Once readmitted it recomputes its prompt
  and replays its generated tokens (``_replay``; no sampling) and carries on from its last
  token, so its text and streamed deltas continue where they stopped. After a preemption no
  sequence is admitted until one finishes or is cancelled (otherwise the one just preempted
  would come back, recompute its prompt and be preempted again at every step). The oldest
  sequence is never preempted, so one always progresses. If llama.cpp itself finds no room
  (``KvCacheFull``), the youngest is preempted the same way and the step retried.

Shared prompts: sequences with the same ``share_key`` (same image, same text prefix: the boxes
of one request, or requests for several regions of one page) have the same KV cache up to the end
of the image. The first one computes it; the others wait in ATTACH, then take it over
(``llama_memory_seq_cp``: in the shared stream the cells are tagged with both seq ids, nothing
is copied) and only prefill their own suffix.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time

import numpy as np

from ..tokens import STOP_IDS
from .cpu_turns import CpuTurns, NoTurns
from .errors import EngineClosed, ModelError, Overloaded
from .model import KvCacheFull, TextModel
from .request import DecodeSequence

log = logging.getLogger(__name__)

__all__ = ["Scheduler"]


class Scheduler:
    def __init__(self, model: TextModel, *, max_queue: int = 64, cpu_turns: CpuTurns | NoTurns | None = None):
        self.model = model
        self.cpu_turns = cpu_turns if cpu_turns is not None else NoTurns()
        self.max_queue = max_queue
        self._cv = threading.Condition()
        self._waiting: collections.deque[DecodeSequence] = collections.deque()
        self._running: dict[int, DecodeSequence] = {}  # slot → sequence
        self._free_slots = list(range(model.n_slots))  # a heap: the lowest free slot first
        self._filling: dict[bytes, DecodeSequence] = {}  # share_key → the sequence computing the shared part
        self._donors: dict[bytes, DecodeSequence] = {}   # share_key → a running sequence that holds it
        self.kv_budget = model.kv_tokens
        self._admitted: dict[int, int] = {}  # slot → admission number (the youngest is preempted first)
        self._restore: dict[int, int] = {}  # slot → positions the sequence holds before it samples again
        self._admissions = itertools.count()
        self._kv_short = False  # a preemption happened: admit nothing until a sequence finishes
        self._pool_in_use = False  # cells were written since the pool was last given back
        self.kv_copies = 0
        self.preemptions = 0
        self._closing = False
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name="gotocr-scheduler", daemon=True)
        self._thread.start()

    # --- any thread ----------------------------------------------------------------------------
    def submit(self, seqs: list[DecodeSequence], *, force: bool = False) -> None:
        """Queue sequences (all or none); raises Overloaded when the queue is full.

        ``force``: the caller already reserved their places (the engine counts requests still
        being encoded against the same bound), so work already done is never thrown away.
        """
        with self._cv:
            if self._closing:
                raise EngineClosed("the engine is closed")
            if not force and len(self._waiting) + len(seqs) > self.max_queue:
                raise Overloaded(f"queue full ({self.max_queue} waiting); retry later")
            self._waiting.extend(seqs)
            self._cv.notify()

    def cancel(self, seq: DecodeSequence) -> None:
        """Release ``seq``: out of the queue now, or out of its slot before the next step."""
        with self._cv:
            if seq.state == DecodeSequence.DONE or seq.cancelled:
                return
            seq.cancelled = True
            if seq.state == DecodeSequence.WAITING:
                try:
                    self._waiting.remove(seq)
                except ValueError:
                    pass
                seq.state = DecodeSequence.DONE
            self._cv.notify()

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    @property
    def n_running(self) -> int:
        return len(self._running)

    @property
    def n_free_slots(self) -> int:
        return len(self._free_slots)

    @property
    def kv_held(self) -> int:
        """KV cells the running sequences hold or were promised (see the module doc)."""
        return sum(self._cells(s) for s in list(self._running.values()))

    def close(self, timeout: float | None = 30.0) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout)

    # --- scheduler thread --------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._closing and not self._waiting and not self._running:
                        self._cv.wait()
                    if self._closing:
                        break
                    self._reap_cancelled()
                    self._make_room()
                    self._admit()
                if self._running:
                    self.cpu_turns.run("decode", self._step)
                    self._pool_in_use = True
                if self._pool_in_use and not self._running and not self._waiting:
                    # idle (a racing submit only finds the pool released: always safe with no
                    # cell held): the pool's pages go back to the OS until the next request
                    self._pool_in_use = False
                    self.model.release_idle_memory()
        except BaseException as e:  # a scheduler crash must not leave callers hanging
            log.exception("scheduler crashed")
            self._fail_all(ModelError(f"scheduler crashed: {e}"))
            return
        self._fail_all(EngineClosed("the engine was closed"))

    def _fail_all(self, err: BaseException) -> None:
        with self._cv:
            self._closing = True
            seqs = list(self._waiting) + list(self._running.values())
            self._waiting.clear()
            self._running.clear()
        for s in seqs:
            if s.state != DecodeSequence.DONE:
                s.fail(err)
                s.on_done(s)

    def _reap_cancelled(self) -> None:
        for slot, seq in list(self._running.items()):
            if seq.cancelled:
                self._release(seq)

    def _release(self, seq: DecodeSequence, *, preempted: bool = False) -> None:
        key = seq.share_key
        if key is not None:
            if self._filling.get(key) is seq:  # failed or cancelled before it got there
                del self._filling[key]
                heir = self._find(key, (DecodeSequence.ATTACH,), besides=seq)
                if heir is not None:
                    heir.state = DecodeSequence.PREFIX
                    self._filling[key] = heir
            if self._donors.get(key) is seq:
                del self._donors[key]
                heir = self._find(key, (DecodeSequence.SUFFIX, DecodeSequence.DECODE), besides=seq)
                if heir is not None:
                    self._donors[key] = heir
        del self._running[seq.slot]
        del self._admitted[seq.slot], self._restore[seq.slot]
        self.model.free_sequence(seq.slot)
        heapq.heappush(self._free_slots, seq.slot)
        seq.slot = -1
        if not preempted:
            seq.embeddings = None  # kept until now: a preempted sequence recomputes its image rows
            self._kv_short = False

    @staticmethod
    def _restore_target(seq: DecodeSequence) -> int:
        """Positions ``seq`` must hold before it samples again: its prompt, and all it generated
        but the last token (the next decode step feeds that one)."""
        return seq.prompt_tokens + max(len(seq.generated) - 1, 0)

    def _cells(self, seq: DecodeSequence) -> int:
        """Cells ``seq`` holds or was promised, counting the one its next decode step writes."""
        target = self._restore.get(seq.slot, 0)
        step = 1 if seq.state == DecodeSequence.DECODE and seq.n_past >= target else 0
        return max(seq.n_past + step, target)

    def _admit(self) -> None:
        while self._free_slots and self._waiting:
            seq = self._waiting[0]
            if self._running and (
                self._kv_short or self.kv_held + self._restore_target(seq) + 1 > self.kv_budget
            ):
                return  # first come, first served: the ones behind it wait too
            self._waiting.popleft()
            seq.slot = heapq.heappop(self._free_slots)
            seq.n_past = 0
            if not seq.t_prefill_start:  # a resumed sequence keeps its first start
                seq.t_prefill_start = time.perf_counter()
            self._running[seq.slot] = seq
            self._admitted[seq.slot] = next(self._admissions)
            self._restore[seq.slot] = self._restore_target(seq)
            self._place(seq)

    def _make_room(self) -> None:
        """Preempt the youngest running sequences until the next step's writes fit the pool."""
        while len(self._running) > 1 and self.kv_held > self.kv_budget:
            self._preempt_youngest()

    def _preempt_youngest(self) -> None:
        slot = max(self._admitted, key=self._admitted.__getitem__)
        seq = self._running[slot]
        log.info("KV pool full (%d cells): preempting the sequence in slot %d (%d generated tokens)",
                 self.kv_budget, slot, len(seq.generated))
        self._release(seq, preempted=True)
        seq.state = DecodeSequence.WAITING
        seq.n_past = 0
        seq.kv_copied = False
        self._waiting.appendleft(seq)
        self._kv_short = True
        self.preemptions += 1

    def _no_room(self, seqs: list[DecodeSequence], err: KvCacheFull) -> None:
        """llama.cpp found no cells for a batch: preempt the youngest and retry, or fail if alone."""
        with self._cv:
            if len(self._running) > 1:
                self._preempt_youngest()
                return
        for s in seqs:
            self._finish_seq(s, error=err)

    def _place(self, seq: DecodeSequence) -> None:
        """First state of an admitted sequence: compute its prompt, or copy its shared part."""
        key = seq.share_key
        if key is None:
            seq.state = DecodeSequence.PREFIX
        elif key in self._donors:
            self._attach(self._donors[key], seq)
        elif key in self._filling:
            seq.state = DecodeSequence.ATTACH
        else:
            seq.state = DecodeSequence.PREFIX
            self._filling[key] = seq

    def _find(self, key: bytes, states: tuple[int, ...], besides: DecodeSequence) -> DecodeSequence | None:
        for s in self._running.values():
            if s is not besides and s.share_key == key and s.state in states and not s.cancelled:
                return s
        return None

    def _attach(self, donor: DecodeSequence, seq: DecodeSequence) -> None:
        """Copy the shared part from ``donor``; if llama.cpp refuses, ``seq`` computes it itself."""
        try:
            self.model.copy_sequence(donor.slot, seq.slot, seq.n_shared)
        except ModelError:
            log.warning("KV copy from slot %d to %d failed; computing the prompt instead", donor.slot, seq.slot)
            seq.state = DecodeSequence.PREFIX
            return
        seq.n_past = seq.n_shared
        seq.kv_copied = True
        seq.state = DecodeSequence.SUFFIX
        self.kv_copies += 1

    def _shared_part_done(self, seq: DecodeSequence) -> None:
        """``seq`` has its shared part in the KV cache: it serves the sequences waiting for it."""
        key = seq.share_key
        if key is None:
            return
        if self._filling.get(key) is seq:
            del self._filling[key]
        self._donors.setdefault(key, seq)
        for w in list(self._running.values()):
            if w.state == DecodeSequence.ATTACH and w.share_key == key and not w.cancelled:
                self._attach(seq, w)

    def _step(self) -> None:
        model = self.model
        self.steps += 1
        running = [self._running[k] for k in sorted(self._running) if not self._running[k].cancelled]
        # 1. the token batch
        toks: list[np.ndarray] = []
        poss: list[np.ndarray] = []
        seqs: list[np.ndarray] = []
        outs: list[np.ndarray] = []
        laid: list[tuple[DecodeSequence, int]] = []  # (sequence, rows it put in the batch)
        sampled: list[tuple[DecodeSequence, int]] = []  # (sequence, batch row of its logits)
        n = 0
        budget = model.n_batch
        for s in running:
            sample = s.state == DecodeSequence.DECODE or (s.state == DecodeSequence.SUFFIX and not s.generated)
            if s.state == DecodeSequence.DECODE:
                target = self._restore[s.slot]
                if s.n_past < target:  # resumed after a preemption: replay, n_batch rows at a time
                    ids = self._replay(s, target, budget)
                    sample = False
                else:
                    ids = np.array([s.last_token], dtype=np.int32)
            elif s.state == DecodeSequence.PREFIX:
                ids = s.prefix
            elif s.state == DecodeSequence.SUFFIX:
                ids = s.suffix
            else:
                continue
            k = len(ids)
            if k > budget or k == 0:
                if n == 0 and k:
                    self._finish_seq(s, error=ModelError(f"prompt part of {k} tokens exceeds n_batch {model.n_batch}"))
                continue  # waits for the next step
            budget -= k
            toks.append(ids)
            poss.append(np.arange(s.n_past, s.n_past + k, dtype=np.int32))
            seqs.append(np.full(k, s.slot, dtype=np.int32))
            o = np.zeros(k, dtype=np.int8)
            if sample:
                o[-1] = 1
                sampled.append((s, n + k - 1))
            outs.append(o)
            laid.append((s, k))
            n += k
        if n:
            try:
                model.decode_tokens(
                    np.concatenate(toks), np.concatenate(poss), np.concatenate(seqs), np.concatenate(outs)
                )
            except KvCacheFull as e:
                self._no_room([s for s, _ in laid], e)
                return
            except ModelError as e:
                for s, _ in laid:
                    self._finish_seq(s, error=e)
                return
            for s, k in laid:
                s.n_past += k
                if s.state == DecodeSequence.PREFIX:
                    s.state = DecodeSequence.EMBED
                elif s.state == DecodeSequence.SUFFIX:
                    s.state = DecodeSequence.DECODE
            if sampled:
                logits = model.logits(np.array([r for _, r in sampled], dtype=np.int32))
                for (s, _), row in zip(sampled, logits):
                    if s.cancelled:
                        continue
                    if s.logits_hook is not None:
                        s.logits_hook(row)
                    if s.add_token(s.sampler.sample(row), STOP_IDS):
                        self._finish_seq(s)
        # 2. the embedding batch: image rows of the sequences whose prefix is in
        group = [s for s in running if s.state == DecodeSequence.EMBED and not s.cancelled]
        if group:
            self._decode_images(group)

    def _decode_images(self, group: list[DecodeSequence]) -> None:
        """Image rows of several sequences, laid out back to back, ``n_batch`` rows per decode."""
        model = self.model
        embd = np.concatenate([s.embeddings for s in group]) if len(group) > 1 else group[0].embeddings
        embd = np.ascontiguousarray(embd, dtype=np.float32)
        pos = np.concatenate([np.arange(s.n_past, s.n_past + s.n_image_tokens, dtype=np.int32) for s in group])
        seq = np.concatenate([np.full(s.n_image_tokens, s.slot, dtype=np.int32) for s in group])
        out = np.zeros(embd.shape[0], dtype=np.int8)
        try:
            for a in range(0, embd.shape[0], model.n_batch):
                b = a + model.n_batch
                model.decode_embeddings(embd[a:b], pos[a:b], seq[a:b], out[a:b])
        except ModelError as e:
            for s in group:  # drop the rows of the chunks that went in: a retry starts at n_past
                model.trim_sequence(s.slot, s.n_past)
            if isinstance(e, KvCacheFull):
                self._no_room(group, e)
                return
            for s in group:
                self._finish_seq(s, error=e)
            return
        for s in group:
            s.n_past += s.n_image_tokens
            s.state = DecodeSequence.SUFFIX
        for s in group:
            self._shared_part_done(s)

    @staticmethod
    def _replay(s: DecodeSequence, target: int, budget: int) -> np.ndarray:
        """The next generated tokens a resumed sequence puts back in the KV cache (at most ``budget``)."""
        a = s.n_past - s.prompt_tokens
        b = min(target - s.prompt_tokens, a + budget)
        return np.asarray(s.generated[a:b], dtype=np.int32)

    def _finish_seq(self, s: DecodeSequence, error: BaseException | None = None) -> None:
        if error is not None:
            s.fail(error)
        if s.slot >= 0 and self._running.get(s.slot) is s:
            with self._cv:
                self._release(s)
        s.on_done(s)
