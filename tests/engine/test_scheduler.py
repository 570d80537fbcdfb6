"""The scheduler against a fake llama context that checks the KV bookkeeping llama.cpp relies on.

The fake records, per sequence, every (position, input) written; it fails on a position gap, a
rewrite, an image row before its text prefix, a decode on a freed slot, or more cells held than
its KV pool has (``kv_tokens``; a copied shared part counts for each holder, as the scheduler
counts it). Its "logits" are a
function of the whole sequence content, so a mixed-up batch row shows as a different output.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gotocr_fast.engine.errors import Cancelled, ModelError
from gotocr_fast.engine.model import KvCacheFull
from gotocr_fast.engine.request import DecodeSequence, OcrHandle
from gotocr_fast.engine.sampling import Sampler, SamplingParams
from gotocr_fast.engine.scheduler import Scheduler
from gotocr_fast.tokens import ENDOFTEXT_ID, IM_END, IM_END_ID

V = IM_END_ID + 1


class FakeText:
    def __init__(self, n_slots=4, n_batch=64, kv_tokens=4096):
        self.n_slots, self.n_batch, self.n_vocab, self.n_embd = n_slots, n_batch, V, 4
        self.kv_tokens = kv_tokens
        self.max_held = 0  # most cells ever held at once
        self.refuse_next = False  # the next decode finds no KV cells (as llama_decode's status 1)
        self.kv: dict[int, list] = {s: [] for s in range(n_slots)}
        self.out_rows: list = []
        self.token_batches = 0
        self.embd_batches = 0
        self.embd_rows = 0
        self.copies: list[tuple[int, int, int]] = []
        self.batch_slots: list[list[int]] = []  # seq ids of each token batch, in batch order
        self.lock = threading.Lock()
        self.fail_next = False
        self.releases = 0  # times the scheduler gave the idle pool back

    def _put(self, seq, pos, item):
        cells = self.kv[seq]
        assert pos == len(cells), f"seq {seq}: position {pos} but {len(cells)} cells"
        cells.append(item)
        held = sum(len(c) for c in self.kv.values())
        assert held <= self.kv_tokens, f"{held} cells held, the pool has {self.kv_tokens}"
        self.max_held = max(self.max_held, held)

    def _refuse(self):
        if self.refuse_next:
            self.refuse_next = False
            raise KvCacheFull("no KV cells")

    def decode_tokens(self, tokens, pos, seq, logits):
        if self.fail_next:
            self.fail_next = False
            raise ModelError("boom")
        self._refuse()
        self.token_batches += 1
        assert tokens.dtype == np.int32 and len(tokens) <= self.n_batch
        self.out_rows = []
        self.batch_slots.append([int(x) for x in seq])
        for t, p, s, o in zip(tokens, pos, seq, logits):
            self._put(int(s), int(p), ("t", int(t)))
            if o:
                self.out_rows.append(int(s))

    def decode_embeddings(self, embd, pos, seq, logits):
        self._refuse()
        self.embd_batches += 1
        self.embd_rows += len(embd)
        assert embd.flags.c_contiguous and embd.dtype == np.float32 and len(embd) <= self.n_batch
        for row, p, s in zip(embd, pos, seq):
            assert self.kv[int(s)], "image rows before the text prefix"
            self._put(int(s), int(p), ("e", float(row.sum())))

    def logits(self, rows):
        out = np.zeros((len(rows), V), dtype=np.float32)
        for k, r in enumerate(rows):
            seq = self.out_rows[k]  # rows come in batch order
            h = hash(tuple(self.kv[seq])) & 0xFFFF
            n_gen = sum(1 for c in self.kv[seq] if c[0] == "t" and c[1] >= 1000)
            tok = IM_END_ID if n_gen >= 5 + (h % 7) else 1000 + h % 50
            out[k, tok] = 10.0
        return out

    def free_sequence(self, s):
        self.kv[s] = []

    def release_idle_memory(self):
        held = sum(len(c) for c in self.kv.values())
        assert held == 0, f"pool released while {held} cells are held"
        self.releases += 1
        return True

    def trim_sequence(self, s, n_keep):
        self.kv[s] = self.kv[s][:n_keep]

    def copy_sequence(self, src, dst, n_keep):
        assert not self.kv[dst], f"copy into the non-empty sequence {dst}"
        assert len(self.kv[src]) >= n_keep, "copy of a shared part the source does not hold yet"
        self.kv[dst] = list(self.kv[src][:n_keep])
        self.copies.append((src, dst, n_keep))

    def piece(self, t):
        return f"<{t}>".encode()


def _always(rows, token):
    out = np.zeros((len(rows), V), dtype=np.float32)
    out[:, token] = 10.0
    return out


def make_seq(fake, req, image_value: float, max_tokens=64, n_img=20, part=0, suffix=(4, 5), share_key=None,
             stop_texts=()):
    seq = DecodeSequence(prefix=[1, 2, 3], n_image_tokens=n_img, suffix=list(suffix), sampler=Sampler(SamplingParams(), [], V),
                   max_tokens=max_tokens, piece=fake.piece, on_delta=lambda t: req._part_delta(part, t), stop_texts=stop_texts,
                   on_done=lambda s: (req._part_finished(part), req._finish(s)) if s.error is None else req._fail(s.error))
    seq.embeddings = np.full((n_img, fake.n_embd), image_value, dtype=np.float32)
    seq.share_key = share_key
    return seq


def run_one(fake, sched, value, **kw):
    req = OcrHandle("r", 1)
    seq = make_seq(fake, req, value, **kw)
    sched.submit([seq])
    req.result(10)
    return seq


def test_alone_equals_concurrent_and_positions_are_contiguous():
    fake = FakeText(n_slots=3, n_batch=48)
    sched = Scheduler(fake, max_queue=32)
    try:
        alone = [run_one(fake, sched, float(v)).generated for v in range(7)]
        reqs, seqs = [], []
        for v in range(7):
            r = OcrHandle(f"r{v}", 1)
            s = make_seq(fake, r, float(v))
            reqs.append(r)
            seqs.append(s)
        sched.submit(seqs)
        for r in reqs:
            r.result(10)
        assert [s.generated for s in seqs] == alone
        assert len({tuple(a) for a in alone}) > 1
        assert all(s.finish_reason == "stop" and s.generated[-1] == IM_END_ID for s in seqs)
        # 3 slots, 7 requests: slots were reused, and every finished sequence freed its cells
        assert sched.n_free_slots == 3 and all(not c for c in fake.kv.values())
    finally:
        sched.close()


def _wait_for(condition, timeout=5.0):
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.001)
    return condition()


def test_the_pool_goes_back_when_the_last_sequence_ends_and_not_before():
    fake = FakeText(n_slots=2)
    sched = Scheduler(fake, max_queue=8)
    try:
        # (FakeText asserts that no cell is held when the pool is released)
        run_one(fake, sched, 1.0)
        assert _wait_for(lambda: fake.releases == 1)
        reqs = [OcrHandle(f"r{v}", 1) for v in range(4)]
        sched.submit([make_seq(fake, r, float(v)) for v, r in enumerate(reqs)])
        for r in reqs:
            r.result(10)
        # four requests through two slots: one release, once all of them were done
        assert _wait_for(lambda: fake.releases == 2)
        time.sleep(0.05)
        assert fake.releases == 2  # idle: nothing more to give back
    finally:
        sched.close()


@pytest.mark.parametrize("token", [IM_END_ID, ENDOFTEXT_ID])
def test_either_end_token_stops_and_is_the_stop_reason(token):
    # GOT ends a turn with <|im_end|>; a model may also end the text with <|endoftext|>
    fake = FakeText()
    fake.logits = lambda rows: _always(rows, token)
    sched = Scheduler(fake)
    try:
        s = run_one(fake, sched, 1.0, max_tokens=50)
        assert (s.finish_reason, s.stop_reason, s.generated, s.text) == ("stop", token, [token], "")
    finally:
        sched.close()


def test_stop_text_in_the_output_stops_and_is_the_stop_reason():
    # the stop text arrives as ordinary pieces ("<1000>", "<1001>", ...): a request's extra stop text
    # and GOT's own "<|im_end|>" spelt out in text both end generation, cut from the answer
    pieces = {1000: b"ab", 1001: b"c<", 1002: b"|im_end|>", 1003: b"ST", 1004: b"OP"}
    for tokens, stop, want_text, want_reason in (
        ([1000, 1003, 1004, 1000], ("STOP",), "ab", "STOP"),
        ([1000, 1001, 1002, 1000], (), "abc", IM_END),
    ):
        fake = FakeText()
        fake.piece = lambda t: pieces[t]
        it = iter(tokens)
        fake.logits = lambda rows, it=it: _always(rows, next(it))
        sched = Scheduler(fake)
        try:
            req = OcrHandle("r", 1)
            seq = make_seq(fake, req, 1.0, max_tokens=50, stop_texts=stop)
            sched.submit([seq])
            req.result(10)
            assert (seq.finish_reason, seq.stop_reason, seq.text) == ("stop", want_reason, want_text)
            assert len(seq.generated) == len(tokens) - 1
        finally:
            sched.close()


def test_max_tokens_gives_length():
    fake = FakeText()
    sched = Scheduler(fake)
    try:
        s = run_one(fake, sched, 1.0, max_tokens=2)
        assert s.finish_reason == "length" and len(s.generated) == 2
    finally:
        sched.close()


def test_cancel_running_frees_slot_and_queue():
    fake = FakeText(n_slots=1)
    sched = Scheduler(fake, max_queue=4)
    try:
        # a sequence that never stops on its own
        fake_logits = fake.logits
        fake.logits = lambda rows: _always(rows, 1000)
        req = OcrHandle("long", 1)
        seq = make_seq(fake, req, 1.0, max_tokens=10**6)
        req._on_cancel(lambda: sched.cancel(seq))
        sched.submit([seq])
        queued = OcrHandle("queued", 1)
        qseq = make_seq(fake, queued, 2.0)
        queued._on_cancel(lambda: sched.cancel(qseq))
        sched.submit([qseq])
        while len(seq.generated) < 3:
            time.sleep(0.001)
        queued.cancel()  # waiting: leaves the queue at once
        assert sched.n_waiting == 0
        req.cancel()
        with pytest.raises(Cancelled):
            req.result(1)
        deadline = time.time() + 5
        while sched.n_free_slots != 1 and time.time() < deadline:
            time.sleep(0.001)
        assert sched.n_free_slots == 1 and not fake.kv[0]
        fake.logits = fake_logits
        assert run_one(fake, sched, 3.0).finish_reason == "stop"
    finally:
        sched.close()


def test_decode_error_fails_requests_and_frees_slots():
    fake = FakeText(n_slots=2)
    sched = Scheduler(fake)
    try:
        fake.fail_next = True
        req = OcrHandle("r", 1)
        seq = make_seq(fake, req, 1.0)
        sched.submit([seq])
        with pytest.raises(ModelError):
            req.result(5)
        deadline = time.time() + 5
        while sched.n_free_slots != 2 and time.time() < deadline:
            time.sleep(0.001)
        assert sched.n_free_slots == 2
        assert run_one(fake, sched, 1.0).finish_reason == "stop"  # the engine keeps working
    finally:
        sched.close()


def test_overloaded_and_closed():
    from gotocr_fast.engine.errors import EngineClosed, Overloaded

    fake = FakeText(n_slots=1)
    sched = Scheduler(fake, max_queue=1)
    fake.logits = lambda rows: _always(rows, 1000)
    reqs = [OcrHandle(str(i), 1) for i in range(3)]
    seqs = [make_seq(fake, r, 1.0, max_tokens=10**6) for r in reqs]
    sched.submit([seqs[0]])
    while sched.n_running == 0:
        time.sleep(0.001)
    sched.submit([seqs[1]])
    with pytest.raises(Overloaded):
        sched.submit([seqs[2]])
    sched.close()
    with pytest.raises(EngineClosed):
        reqs[0].result(5)
    with pytest.raises(EngineClosed):
        sched.submit([seqs[2]])


# --- shared prompt parts (same image, same prefix) -------------------------------------------------


def _shared_batch(fake, n, key=b"page"):
    reqs = [OcrHandle(f"s{i}", 1) for i in range(n)]
    seqs = [make_seq(fake, r, 7.0, suffix=(4, 5 + i), share_key=key) for i, r in enumerate(reqs)]
    return reqs, seqs


def test_shared_part_is_computed_once_and_copied():
    fake = FakeText(n_slots=4, n_batch=64)
    sched = Scheduler(fake)
    try:
        alone = []
        for i in range(4):
            req = OcrHandle("a", 1)
            seq = make_seq(fake, req, 7.0, suffix=(4, 5 + i))
            sched.submit([seq])
            req.result(10)
            alone.append(seq.generated)
        assert len({tuple(a) for a in alone}) > 1  # the suffix matters
        rows_before = fake.embd_rows
        reqs, seqs = _shared_batch(fake, 4)
        sched.submit(seqs)
        for r in reqs:
            r.result(10)
        assert [s.generated for s in seqs] == alone
        assert fake.embd_rows - rows_before == 20  # one image's rows, not four
        assert sched.kv_copies == 3 and sum(s.kv_copied for s in seqs) == 3
        assert all(n_keep == 3 + 20 for _, _, n_keep in fake.copies)
        # a later request for the same page while none is running computes it again (nothing to copy)
        reqs2, seqs2 = _shared_batch(fake, 1)
        sched.submit(seqs2)
        reqs2[0].result(10)
        assert seqs2[0].generated == alone[0] and not seqs2[0].kv_copied
        assert sched.n_free_slots == 4 and all(not c for c in fake.kv.values())
    finally:
        sched.close()


def test_shared_part_copies_from_a_running_sequence_later():
    fake = FakeText(n_slots=2)
    sched = Scheduler(fake)
    try:
        fake_logits = fake.logits
        fake.logits = lambda rows: _always(rows, 1000)
        long_req = OcrHandle("long", 1)
        long_seq = make_seq(fake, long_req, 7.0, max_tokens=10**6, share_key=b"page")
        long_req._on_cancel(lambda: sched.cancel(long_seq))
        sched.submit([long_seq])
        while len(long_seq.generated) < 3:
            time.sleep(0.001)

        def long_never_stops(rows):  # the donor keeps running; the others get the real logits
            out = fake_logits(rows)
            for k in range(len(rows)):
                if fake.out_rows[k] == long_seq.slot:
                    out[k] = 0.0
                    out[k, 1000] = 10.0
            return out

        fake.logits = long_never_stops
        req = OcrHandle("late", 1)
        seq = make_seq(fake, req, 7.0, suffix=(4, 9), share_key=b"page")
        sched.submit([seq])
        req.result(10)
        assert seq.kv_copied and fake.copies[-1][2] == 23
        long_req.cancel()
        fake.logits = fake_logits
        # the same prompt computed on its own gives the same tokens
        req2 = OcrHandle("alone", 1)
        seq2 = make_seq(fake, req2, 7.0, suffix=(4, 9))
        sched.submit([seq2])
        req2.result(10)
        assert seq2.generated == seq.generated
    finally:
        sched.close()


def test_cancelled_filler_hands_the_shared_part_to_a_waiter():
    fake = FakeText(n_slots=4)
    sched = Scheduler(fake)
    try:
        alone = []
        for i in range(1, 3):
            req = OcrHandle("a", 1)
            seq = make_seq(fake, req, 7.0, suffix=(4, 5 + i))
            sched.submit([seq])
            req.result(10)
            alone.append(seq.generated)
        reqs, seqs = _shared_batch(fake, 3)
        real = fake.decode_tokens

        def cancel_filler_after_its_prefix(tokens, pos, seq, logits):
            real(tokens, pos, seq, logits)
            if not seqs[0].cancelled:
                sched.cancel(seqs[0])  # the filler goes before its image is in

        fake.decode_tokens = cancel_filler_after_its_prefix
        for r, s in zip(reqs, seqs):
            r._on_cancel(lambda s=s: sched.cancel(s))
        sched.submit(seqs)
        for r in reqs[1:]:
            r.result(10)
        fake.decode_tokens = real
        assert [s.generated for s in seqs[1:]] == alone
        assert sched.kv_copies == 1  # the heir computed it, the other waiter copied it
        deadline = time.time() + 5
        while sched.n_free_slots != 4 and time.time() < deadline:
            time.sleep(0.001)
        assert sched.n_free_slots == 4 and all(not c for c in fake.kv.values())
    finally:
        sched.close()
