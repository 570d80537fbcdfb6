"""The shared KV pool: admission, preemption when it runs out, and llama.cpp refusing a batch.

The fake llama context of ``test_scheduler`` asserts that the cells held never exceed its pool
and that every sequence's positions stay contiguous (a resumed sequence must put back exactly
what it held). Its logits here are a hash of the sequence's whole KV content and never say stop,
so a sequence whose replayed cells differ in any way continues differently from the same
sequence run alone.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gotocr_fast.engine.model import KvCacheFull
from gotocr_fast.engine.scheduler import Scheduler

from .test_scheduler import V, FakeText, make_seq


class Recorder:
    """Stands in for the request handle: collects one part's deltas and its end."""

    def __init__(self):
        self.deltas: list[str] = []
        self.done = threading.Event()
        self.error: BaseException | None = None

    def _part_delta(self, part, text):
        self.deltas.append(text)

    def _part_finished(self, part):
        pass

    def _finish(self, seq):
        self.done.set()

    def _fail(self, error):
        self.error = error
        self.done.set()

    def wait(self):
        assert self.done.wait(300), "the sequence never finished"
        return self


def endless_logits(fake):
    """Next token = a hash of the sequence's KV content; never the stop token."""

    def logits(rows):
        out = np.zeros((len(rows), V), dtype=np.float32)
        for k in range(len(rows)):
            seq = fake.out_rows[k]
            out[k, 1000 + (hash(tuple(fake.kv[seq])) & 0xFFFF) % 50] = 10.0
        return out

    return logits


def run(fake, sched, values, max_tokens):
    recs, seqs = [], []
    for v in values:
        r = Recorder()
        recs.append(r)
        seqs.append(make_seq(fake, r, float(v), max_tokens=max_tokens))
    sched.submit(seqs)
    for r in recs:
        r.wait()
    return recs, seqs


# prompt: 3 prefix tokens + 20 image rows + 2 suffix tokens = 25 positions
PROMPT = 25


def record_running(fake, sched) -> list[int]:
    """How many sequences were running at each token decode of ``fake`` (filled as it runs)."""
    running: list[int] = []
    orig = fake.decode_tokens

    def watch(*args):
        running.append(sched.n_running)
        orig(*args)

    fake.decode_tokens = watch
    return running


def test_full_pool_preempts_the_youngest_and_it_resumes_where_it_stopped():
    max_tokens = 60
    values = range(4)
    fake = FakeText(n_slots=4, n_batch=64, kv_tokens=4096)
    fake.logits = endless_logits(fake)
    sched = Scheduler(fake, max_queue=32)
    try:
        alone = [run(fake, sched, [v], max_tokens)[1][0].generated for v in values]
    finally:
        sched.close()
    # a pool for one whole request and a bit: four start together, then it runs out mid-generation
    fake = FakeText(n_slots=4, n_batch=64, kv_tokens=PROMPT + max_tokens + 40)
    fake.logits = endless_logits(fake)
    sched = Scheduler(fake, max_queue=32)
    try:
        recs, seqs = run(fake, sched, values, max_tokens)
        assert all(r.error is None for r in recs)
        assert sched.preemptions >= 1
        assert [s.generated for s in seqs] == alone
        assert all(len(s.generated) == max_tokens and s.finish_reason == "length" for s in seqs)
        # the stream of a resumed sequence goes on where it stopped: nothing repeated or lost
        assert ["".join(r.deltas) for r in recs] == [s.text for s in seqs]
        assert [s.text for s in seqs] == ["".join(f"<{t}>" for t in g) for g in alone]
        assert fake.max_held <= fake.kv_tokens
        assert sched.n_free_slots == 4 and sched.kv_held == 0 and all(not c for c in fake.kv.values())
    finally:
        sched.close()


def test_four_typical_pages_share_the_default_pool_without_waiting():
    # the default pool (one request's 8192 cells) and four pages of a 286-token prompt (one
    # full-size view) and 1,500 generated tokens each: all four decode together, none preempted
    fake = FakeText(n_slots=4, n_batch=2048, kv_tokens=8192)
    fake.logits = endless_logits(fake)
    sched = Scheduler(fake, max_queue=32)
    running = record_running(fake, sched)
    try:
        recs, seqs = [], []
        for v in range(4):
            r = Recorder()
            recs.append(r)
            seqs.append(make_seq(fake, r, float(v), max_tokens=1500, n_img=281))
        assert seqs[0].prompt_tokens == 286
        sched.submit(seqs)
        for r in recs:
            r.wait()
        assert all(r.error is None and len(s.generated) == 1500 for r, s in zip(recs, seqs))
        assert sched.preemptions == 0 and max(running) == 4
        assert fake.max_held == 4 * (286 + 1500 - 1)
    finally:
        sched.close()


def test_a_sequence_waits_for_cells_instead_of_failing():
    max_tokens = 30
    fake = FakeText(n_slots=4, n_batch=64, kv_tokens=PROMPT + max_tokens + 1)
    fake.logits = endless_logits(fake)
    sched = Scheduler(fake, max_queue=32)
    running = record_running(fake, sched)
    try:
        # three prompts never fit at once: the third waits for cells, though slots are free
        recs, seqs = run(fake, sched, [1.0, 2.0, 3.0], max_tokens)
        assert all(r.error is None for r in recs)
        assert max(running) == 2
        assert all(len(s.generated) == max_tokens for s in seqs)
        assert fake.max_held <= fake.kv_tokens
        assert sched.n_free_slots == 4 and sched.kv_held == 0
    finally:
        sched.close()


def test_llama_cpp_refusing_a_batch_preempts_and_retries():
    max_tokens = 20
    fake = FakeText(n_slots=4, n_batch=64, kv_tokens=4096)
    fake.logits = endless_logits(fake)
    sched = Scheduler(fake, max_queue=32)
    try:
        alone = [run(fake, sched, [v], max_tokens)[1][0].generated for v in range(3)]
        fake.refuse_next = True  # the first batch of the three: the youngest goes back to the queue
        recs, seqs = run(fake, sched, range(3), max_tokens)
        assert all(r.error is None for r in recs)
        assert sched.preemptions == 1
        assert [s.generated for s in seqs] == alone
    finally:
        sched.close()


def test_llama_cpp_refusing_a_lone_sequence_fails_it_clearly():
    fake = FakeText(n_slots=2, n_batch=64, kv_tokens=4096)
    fake.logits = endless_logits(fake)
    sched = Scheduler(fake, max_queue=32)
    try:
        fake.refuse_next = True
        (rec,), (seq,) = run(fake, sched, [1.0], 10)
        assert isinstance(rec.error, KvCacheFull)
        # the engine is still usable, and the failed sequence left nothing behind
        (rec,), (seq,) = run(fake, sched, [1.0], 10)
        assert rec.error is None and len(seq.generated) == 10
        assert sched.n_free_slots == 2 and all(not c for c in fake.kv.values())
    finally:
        sched.close()


def test_refused_image_rows_are_dropped_before_the_retry():
    fake = FakeText(n_slots=2, n_batch=8, kv_tokens=4096)  # 20 image rows: three embedding decodes
    fake.logits = endless_logits(fake)
    sched = Scheduler(fake, max_queue=32)
    orig = fake.decode_embeddings
    calls = []

    def second_refused(embd, pos, seq, logits):
        calls.append(len(embd))
        if len(calls) == 2:
            fake.refuse_next = True
        orig(embd, pos, seq, logits)

    fake.decode_embeddings = second_refused
    try:
        alone_fake = FakeText(n_slots=2, n_batch=8, kv_tokens=4096)
        alone_fake.logits = endless_logits(alone_fake)
        alone_sched = Scheduler(alone_fake)
        try:
            want = [run(alone_fake, alone_sched, [v], 12)[1][0].generated for v in (1.0, 2.0)]
        finally:
            alone_sched.close()
        recs, seqs = run(fake, sched, [1.0, 2.0], 12)
        assert all(r.error is None for r in recs)
        assert [s.generated for s in seqs] == want
    finally:
        sched.close()


@pytest.mark.parametrize("kv_tokens", [PROMPT + 10, PROMPT + 11])
def test_one_request_may_use_the_whole_pool(kv_tokens):
    fake = FakeText(n_slots=4, n_batch=64, kv_tokens=kv_tokens)
    fake.logits = endless_logits(fake)
    sched = Scheduler(fake, max_queue=32)
    try:
        # the last generated token is never fed back: prompt + max_tokens - 1 cells at most
        recs, seqs = run(fake, sched, [1.0, 2.0], kv_tokens - PROMPT + 1)
        assert all(r.error is None for r in recs)
        assert fake.max_held == kv_tokens
    finally:
        sched.close()


# --- the engine on the converted tiny model ------------------------------------------------------
def test_greedy_paths_match_transformers_through_preemptions(tiny_model_dir, oracle, fixtures_dir):
    """Every decoding fixture case at once in a pool of one request's context (512 cells for 8
    sequences of ~300): sequences are preempted and resumed, and each still follows transformers'
    greedy path (tests/fixtures/tiny_decoding) wherever its margins are clear."""
    from gotocr_fast.engine import OcrEngine

    from .test_decoding_parity import MARGIN

    fx = oracle("tiny_decoding")
    with OcrEngine(tiny_model_dir, n_ctx=512, kv_tokens=512, max_slots=8, max_queue=32, n_threads=2,
                   kv_type="f32") as engine:
        assert engine.text.kv_tokens == 512
        jobs = []
        for case, c in fx.meta["cases"].items():
            images = [str(fixtures_dir / p) for p in c["images"]]
            want = fx[f"{case}/ngram0/gen_ids"].tolist()
            req = engine.submit(images if c["multi_page"] else images[0], type=c["type"], color=c["color"],
                                crop=c["crop"], loop_guard=0, no_repeat_ngram_size=0, max_tokens=len(want))
            jobs.append((case, req, want, fx[f"{case}/ngram0/gen_margins"].tolist()))
        for case, req, want, margins in jobs:
            req.result(600)
            got = req.sequences[0].generated
            steps = 0
            for step, (w, m) in enumerate(zip(want, margins)):
                if m <= MARGIN:
                    break
                assert got[step] == w, (case, step)
                steps += 1
            assert steps >= 10, (case, steps)
        assert engine.scheduler.preemptions >= 1
        assert engine.scheduler.kv_held == 0 and engine.scheduler.n_free_slots == 8
