"""The scheduler against a fake llama context that checks the KV bookkeeping llama.cpp relies on.

The fake records, per sequence, every (position, input) written; it fails on a position gap, a
rewrite, an image row before its text prefix, or a decode on a freed slot. Its "logits" are a
function of the whole sequence content, so a mixed-up batch row shows as a different output.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gotocr_fast.engine.errors import Cancelled, ModelError
from gotocr_fast.engine.request import OcrRequest, Sequence
from gotocr_fast.engine.sampling import Sampler, SamplingParams
from gotocr_fast.engine.scheduler import Scheduler
from gotocr_fast.tokens import IM_END_ID

V = IM_END_ID + 1


class FakeText:
    def __init__(self, n_slots=4, n_batch=64):
        self.n_slots, self.n_batch, self.n_vocab, self.n_embd = n_slots, n_batch, V, 4
        self.kv: dict[int, list] = {s: [] for s in range(n_slots)}
        self.out_rows: list = []
        self.token_batches = 0
        self.embd_batches = 0
        self.lock = threading.Lock()
        self.fail_next = False

    def is_eog(self, t):
        return t == IM_END_ID

    def _put(self, seq, pos, item):
        cells = self.kv[seq]
        assert pos == len(cells), f"seq {seq}: position {pos} but {len(cells)} cells"
        cells.append(item)

    def decode_tokens(self, tokens, pos, seq, logits):
        if self.fail_next:
            self.fail_next = False
            raise ModelError("boom")
        self.token_batches += 1
        assert tokens.dtype == np.int32 and len(tokens) <= self.n_batch
        self.out_rows = []
        for t, p, s, o in zip(tokens, pos, seq, logits):
            self._put(int(s), int(p), ("t", int(t)))
            if o:
                self.out_rows.append(int(s))

    def decode_embeddings(self, embd, pos, seq, logits):
        self.embd_batches += 1
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

    def piece(self, t):
        return f"<{t}>".encode()


def _always(rows, token):
    out = np.zeros((len(rows), V), dtype=np.float32)
    out[:, token] = 10.0
    return out


def make_seq(fake, req, image_value: float, max_tokens=64, n_img=20, part=0):
    seq = Sequence(prefix=[1, 2, 3], n_image_tokens=n_img, suffix=[4, 5], sampler=Sampler(SamplingParams(), [], V),
                   max_tokens=max_tokens, piece=fake.piece, on_delta=lambda t: req._part_delta(part, t),
                   on_done=lambda s: (req._part_finished(part), req._finish(s)) if s.error is None else req._fail(s.error))
    seq.embeddings = np.full((n_img, fake.n_embd), image_value, dtype=np.float32)
    return seq


def run_one(fake, sched, value, **kw):
    req = OcrRequest("r", 1)
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
            r = OcrRequest(f"r{v}", 1)
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
        req = OcrRequest("long", 1)
        seq = make_seq(fake, req, 1.0, max_tokens=10**6)
        req._on_cancel(lambda: sched.cancel(seq))
        sched.submit([seq])
        queued = OcrRequest("queued", 1)
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
        req = OcrRequest("r", 1)
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
    reqs = [OcrRequest(str(i), 1) for i in range(3)]
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
