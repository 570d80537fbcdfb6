"""CpuTurns (engine/cpu_turns.py): the encoder and the decode loop never run at the same time
when sharing the CPU, they alternate under contention, and the engine still gives the same text."""

from __future__ import annotations

import threading
import time

import pytest

from gotocr_fast.engine import OcrEngine
from gotocr_fast.engine.cpu_turns import CpuTurns, NoTurns

from .test_engine import _image


def _hammer(turns: CpuTurns, who: str, n: int, log: list, active: list, hold_s: float = 0.002):
    for _ in range(n):
        with turns.turn(who):
            active.append(who)
            if len(active) > 1:
                log.append(("overlap", tuple(active)))
            log.append(who)
            time.sleep(hold_s)
            active.remove(who)


def test_turns_are_exclusive_and_alternate_under_contention():
    turns = CpuTurns()
    log: list = []
    active: list = []
    a = threading.Thread(target=_hammer, args=(turns, "encode", 40, log, active))
    b = threading.Thread(target=_hammer, args=(turns, "decode", 40, log, active))
    a.start(); b.start(); a.join(10); b.join(10)
    assert not a.is_alive() and not b.is_alive()
    assert not [e for e in log if isinstance(e, tuple)], "two parties held the CPU at once"
    assert log.count("encode") == 40 and log.count("decode") == 40
    assert turns.turns == {"encode": 40, "decode": 40}
    # while both keep asking, nobody goes twice in a row (a few repeats at the very start and end,
    # before the other thread asks / after it is done, are fine)
    repeats = sum(1 for x, y in zip(log, log[1:]) if x == y)
    assert repeats <= 4, log


def test_a_lone_party_is_never_blocked():
    turns = CpuTurns()
    t0 = time.perf_counter()
    for _ in range(1000):
        with turns.turn("decode"):
            pass
    assert time.perf_counter() - t0 < 1.0
    assert turns.holder is None


def test_an_exception_releases_the_turn():
    turns = CpuTurns()
    with pytest.raises(RuntimeError):
        with turns.turn("encode"):
            raise RuntimeError("boom")
    assert turns.holder is None
    done = threading.Event()
    threading.Thread(target=lambda: (turns.turn("decode").__enter__(), done.set())).start()
    assert done.wait(2)


def test_engine_default_shares_when_threads_exceed_cpus(tiny_model_dir, monkeypatch):
    import gotocr_fast.engine.api as api

    monkeypatch.setattr(api, "available_cpus", lambda: 2)
    with OcrEngine(tiny_model_dir, n_ctx=512, max_slots=1, n_threads=2) as e:
        assert isinstance(e.cpu_turns, CpuTurns)
    monkeypatch.setattr(api, "available_cpus", lambda: 64)
    with OcrEngine(tiny_model_dir, n_ctx=512, max_slots=1, n_threads=2) as e:
        assert isinstance(e.cpu_turns, NoTurns)
    with OcrEngine(tiny_model_dir, n_ctx=512, max_slots=1, n_threads=2, share_cpu=True) as e:
        assert isinstance(e.cpu_turns, CpuTurns)


def test_engine_never_encodes_while_decoding(tiny_model_dir):
    with OcrEngine(tiny_model_dir, n_ctx=1024, max_slots=4, n_threads=2, kv_type="f32", share_cpu=False) as free:
        want = [free.ocr(_image(300 + i), max_tokens=24) for i in range(6)]
    with OcrEngine(tiny_model_dir, n_ctx=1024, max_slots=4, n_threads=2, kv_type="f32", share_cpu=True,
                   embed_cache_bytes=0) as e:
        busy = {"encode": 0, "decode": 0}
        overlaps = []
        lock = threading.Lock()

        def watch(name, fn):
            def run(*a, **k):
                with lock:
                    busy[name] += 1
                    if busy["encode"] and busy["decode"]:
                        overlaps.append(name)
                try:
                    time.sleep(0.001)  # widen the window an overlap would need
                    return fn(*a, **k)
                finally:
                    with lock:
                        busy[name] -= 1
            return run

        e.vision.encode = watch("encode", e.vision.encode)
        e.text.decode_tokens = watch("decode", e.text.decode_tokens)
        e.text.decode_embeddings = watch("decode", e.text.decode_embeddings)
        reqs = [e.submit(_image(300 + i), max_tokens=24) for i in range(6)]
        got = [r.result(120) for r in reqs]
        assert not overlaps
        assert e.cpu_turns.turns["encode"] == 6 and e.cpu_turns.turns["decode"] > 6
    assert [g.text for g in got] == [w.text for w in want]


def test_turns_run_on_one_compute_thread():
    """Every turn runs on the same thread, not the caller's (libgomp parks its workers in the
    kernel at every barrier once two threads own OpenMP teams on a small machine)."""
    turns = CpuTurns()
    seen: list[tuple[str, int]] = []
    callers: set[int] = set()

    def party(who: str):
        callers.add(threading.get_ident())
        for _ in range(20):
            assert turns.run(who, lambda: seen.append((who, threading.get_ident())) or who) == who

    threads = [threading.Thread(target=party, args=(w,)) for w in ("encode", "decode")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(seen) == 40 and len({ident for _, ident in seen}) == 1
    assert not {ident for _, ident in seen} & callers
    with pytest.raises(ValueError, match="bad page"):
        turns.run("encode", lambda: (_ for _ in ()).throw(ValueError("bad page")))
    assert turns.holder is None  # an exception gives the turn back
    turns.close()
    assert NoTurns().run("decode", threading.get_ident) == threading.get_ident()


@pytest.mark.parametrize("share_cpu", [True, False])
def test_engine_computes_on_one_thread_when_sharing(tiny_model_dir, share_cpu):
    with OcrEngine(tiny_model_dir, n_ctx=1024, max_slots=2, n_threads=2, share_cpu=share_cpu,
                   embed_cache_bytes=0) as e:
        threads: dict[str, set[int]] = {"encode": set(), "decode": set()}

        def record(name, fn):
            def run(*a, **k):
                threads[name].add(threading.get_ident())
                return fn(*a, **k)
            return run

        e.vision.encode = record("encode", e.vision.encode)
        e.text.decode_tokens = record("decode", e.text.decode_tokens)
        e.text.decode_embeddings = record("decode", e.text.decode_embeddings)
        for r in [e.submit(_image(400 + i), max_tokens=8) for i in range(3)]:
            r.result(120)
    assert threads["encode"] and threads["decode"]
    if share_cpu:
        assert len(threads["encode"] | threads["decode"]) == 1, threads
    else:  # enough CPUs for both teams: the encoder and the decode loop run side by side
        assert threads["encode"].isdisjoint(threads["decode"]), threads
