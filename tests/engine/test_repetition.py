"""The no-repeat n-gram ban and the loop guard (engine/repetition.py), without a model.

The ban is checked against transformers' own ``NoRepeatNGramLogitsProcessor`` through the
committed ``ngram`` oracle (tests/fixtures/README.md) and against small cases worked out by hand
from its code. The loop guard's expectations are counted independently here (brute force over
the token list), never taken from the guard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gotocr_fast.engine.defaults import LOOP_GUARD
from gotocr_fast.engine.repetition import LoopGuard, LoopGuardParams, NgramBan
from gotocr_fast.engine.sampling import Sampler, SamplingParams, process_logits

REPO = Path(__file__).resolve().parents[2]


# --- the n-gram ban ---------------------------------------------------------------------------------
def test_ngram_ban_by_hand():
    # transformers: with input_ids [1, 2, 3, 1, 2] and n = 3 the current prefix (1, 2) was
    # followed by 3 once: 3 is banned; n = 2: prefix (2,) was followed by 3 → {3}
    assert set(NgramBan(3, [1, 2, 3, 1, 2]).banned()) == {3}
    assert set(NgramBan(2, [1, 2, 3, 1, 2]).banned()) == {3}
    # n = 1: every id already in the sequence
    assert set(NgramBan(1, [5, 6, 5]).banned()) == {5, 6}
    # fewer ids than n: nothing to ban; the window at the prefix itself never bans its successor
    assert not NgramBan(4, [1, 2, 3]).banned()
    assert not NgramBan(3, [7, 7]).banned()
    assert set(NgramBan(3, [7, 7, 7]).banned()) == {7}
    # incremental: tokens appended one by one give the same index as a prompt
    b = NgramBan(3, [1, 2])
    for t in (3, 1, 2):
        b.append(t)
    assert set(b.banned()) == {3}
    with pytest.raises(ValueError):
        NgramBan(0, [])


def test_ngram_ban_matches_transformers(oracle):
    fx = oracle("ngram")
    ids = fx["ids"].tolist()
    start = int(fx.meta["first_step"])
    vocab = int(fx.meta["vocab"])
    checked = 0
    for n in fx.meta["sizes"]:
        banned = fx[f"n{n}/banned"]  # [steps, vocab] bool, step i: after ids[: start + i]
        ban = NgramBan(n, ids[:start])
        for i in range(banned.shape[0]):
            if i:
                ban.append(ids[start + i - 1])
            want = set(np.flatnonzero(banned[i]).tolist())
            assert set(ban.banned()) == want, (n, i)
            checked += bool(want)
        assert len(ban) == start + banned.shape[0] - 1
    assert checked > 100  # the sequence repeats enough for the rule to bite at every size
    assert vocab == fx["logits"].shape[0]


def test_processing_order_matches_transformers(oracle):
    """Repetition penalty → n-gram ban → temperature → top-p, on transformers' own scores."""
    fx = oracle("ngram")
    ids = fx["ids"].tolist()
    for s in fx.meta["settings"]:
        prefix = ids[: s["length"]]
        params = SamplingParams(temperature=s["temperature"], top_p=s["top_p"],
                                repetition_penalty=s["repetition_penalty"], no_repeat_ngram_size=s["n"])
        sampler = Sampler(params, prefix, len(fx["logits"]))
        got = process_logits(fx["logits"], params, sampler.penalty_ids(), sampler.banned())
        want = fx[f"setting{s['index']}/scores"]
        assert np.array_equal(np.isneginf(got), np.isneginf(want)), s
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], rtol=1e-6, atol=1e-6)
        assert s["banned"] > 0


def test_greedy_sampler_skips_banned_tokens():
    logits = np.array([0.0, 5.0, 4.0, 1.0], dtype=np.float32)
    # n = 2, prompt 1 2 3, then 1: the bigram (1, 2) exists, so after 1 the next may not be 2
    s = Sampler(SamplingParams(no_repeat_ngram_size=2), [1, 2, 3], vocab_size=4)
    s.accept(1)
    assert set(s.banned()) == {2}
    assert s.sample(logits) == 1  # the best, 1, is allowed: (1, 1) never occurred
    s.accept(1)  # now (1, 1) occurred too: after 1 neither 2 nor 1
    assert set(s.banned()) == {1, 2}
    assert s.sample(logits) == 3  # the best allowed one
    assert logits[1] == 5.0 and logits[2] == 4.0  # the caller's row is left alone
    off = Sampler(SamplingParams(no_repeat_ngram_size=0), [1, 2, 3, 1, 1], vocab_size=4)
    assert off.sample(logits) == 1


def test_sampling_params_validate_ngram_size():
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError):
            SamplingParams(no_repeat_ngram_size=bad)


# --- the loop guard -------------------------------------------------------------------------------
def _periodic_tail(tokens: list[int], p: int) -> int:
    """Length of the longest suffix of ``tokens`` that repeats with period ``p`` (brute force)."""
    n = len(tokens)
    k = 0
    while n - 1 - k - p >= 0 and tokens[n - 1 - k] == tokens[n - 1 - k - p]:
        k += 1
    return k + p if n >= p else 0


def _first_fire(tokens: list[int], params: LoopGuardParams) -> tuple[int, int] | None:
    """(tokens seen when the rule first holds, shortest period) by brute force."""
    for n in range(1, len(tokens) + 1):
        head = tokens[:n]
        for p in range(1, params.max_period + 1):
            length = _periodic_tail(head, p)
            if length >= max(params.min_span, params.min_repeats * p):
                return n, p
    return None


def _feed(guard: LoopGuard, tokens: list[int]):
    for i, t in enumerate(tokens):
        cut = guard.push(t)
        if cut is not None:
            return i + 1, cut
    return None


@pytest.mark.parametrize("period", [1, 2, 7, 33, 64])
def test_guard_fires_where_the_rule_first_holds(period):
    params = LoopGuardParams(min_span=40, max_period=64, min_repeats=4)
    rng = np.random.default_rng(period)
    intro = rng.integers(1000, 2000, size=50).tolist()  # distinct-ish reading before the loop
    cycle = rng.integers(3000, 3100, size=period).tolist()
    tokens = intro + cycle * (params.min_repeats + 200 // period + 2)
    want = _first_fire(tokens, params)
    assert want is not None
    got = _feed(LoopGuard(params), tokens)
    assert got is not None
    seen, cut = got
    assert (seen, cut.period) == want
    # kept: the text before the loop and one cycle of it
    loop_start = seen - _periodic_tail(tokens[:seen], cut.period)
    assert cut.keep == loop_start + cut.period
    assert tokens[loop_start : cut.keep] == tokens[cut.keep : cut.keep + cut.period]
    assert seen <= len(intro) + max(params.min_span, params.min_repeats * period) + period


def test_guard_quiet_without_a_loop_and_below_its_thresholds():
    params = LoopGuardParams(min_span=40, max_period=64, min_repeats=4)
    rng = np.random.default_rng(0)
    assert _feed(LoopGuard(params), rng.integers(0, 50, size=5000).tolist()) is None
    # a cycle repeated just under min_repeats and one just under min_span
    assert _feed(LoopGuard(params), list(range(100)) + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] * 3) is None
    assert _feed(LoopGuard(params), list(range(100, 200)) + [9] * 39) is None
    assert _feed(LoopGuard(params), list(range(100, 200)) + [9] * 40) is not None
    # a period above max_period never fires
    long_cycle = list(range(500, 565))
    assert _feed(LoopGuard(params), long_cycle * 10) is None


def test_hold_from_covers_every_possible_loop_start():
    """Tokens before hold_from are never part of the repeats a later cut drops."""
    params = LoopGuardParams(min_span=30, max_period=16, min_repeats=3)
    rng = np.random.default_rng(5)
    for trial in range(20):
        cycle = rng.integers(0, 9, size=int(rng.integers(1, 17))).tolist()
        tokens = rng.integers(0, 9, size=int(rng.integers(0, 60))).tolist() + cycle * 40
        guard = LoopGuard(params)
        released = 0
        for t in tokens:
            cut = guard.push(t)
            if cut is not None:
                assert cut.keep >= released, trial
                break
            released = max(released, guard.hold_from())
            assert released <= guard.n_tokens
        else:
            pytest.fail("the loop was not stopped")


def test_guard_grows_past_its_first_buffer():
    guard = LoopGuard(LoopGuardParams(min_span=300, max_period=8, min_repeats=2), capacity=16)
    tokens = np.random.default_rng(1).integers(0, 1 << 20, size=1000).tolist() + [4, 5] * 200
    seen, cut = _feed(guard, tokens)
    assert cut.period == 2 and seen == 1000 + 300 and cut.keep == 1002


def test_guard_params_validate():
    for kw in ({"min_span": -1}, {"max_period": 0}, {"min_repeats": 1}, {"min_span": 1.5}):
        with pytest.raises(ValueError):
            LoopGuardParams(**{"min_span": 256, "max_period": 256, "min_repeats": 8, **kw})
    with pytest.raises(ValueError):
        LoopGuard(LoopGuardParams(min_span=0, max_period=4, min_repeats=2))


def _real_texts() -> list[Path]:
    files = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md", REPO / "DEVELOPING.md",
                                                   REPO / "bench" / "README.md", REPO / "bench" / "RESULTS.md",
                                                   REPO / "tests" / "convert" / "corpus" / "multilingual.txt"]
    return [f for f in files if f.is_file()]


def test_default_guard_never_fires_on_real_text(qwen_tiktoken):
    """Prose, markdown tables (RESULTS.md is mostly tables), code and many scripts, tokenized as
    GOT's tokenizer does, read in page-sized pieces: the default guard stays quiet."""
    pages = 0
    for path in _real_texts():
        ids = qwen_tiktoken.encode(path.read_text(encoding="utf-8"), disallowed_special=())
        for a in range(0, len(ids), 4096):
            guard = LoopGuard(LOOP_GUARD)
            assert _feed(guard, ids[a : a + 4096]) is None, path
            pages += 1
    assert pages >= 10


# --- the defaults: GOT's official scripts ----------------------------------------------------------
def test_defaults_follow_the_official_scripts():
    from gotocr_fast.engine.defaults import default_max_tokens, default_no_repeat_ngram_size
    from gotocr_fast.prompt import OcrMode

    # run_ocr_2.0.py: no_repeat_ngram_size=20 for one view; run_ocr_2.0_crop.py: none
    for mode in (OcrMode(), OcrMode(type="format"), OcrMode(boxes=((1, 2, 30, 40),)), OcrMode(color="red"),
                 OcrMode(type="format", color="blue")):
        assert default_no_repeat_ngram_size(mode) == 20, mode
    for mode in (OcrMode(crop=True), OcrMode(type="format", crop=True), OcrMode(multi_page=True),
                 OcrMode(type="format", multi_page=True)):
        assert default_no_repeat_ngram_size(mode) == 0, mode
    # max_new_tokens=4096 where the context holds it, else what the context leaves
    assert default_max_tokens(8192, 300) == 4096
    assert default_max_tokens(8192, 7 * 256 + 60) == 4096  # a multi-crop page
    assert default_max_tokens(8192, 16 * 256 + 60) == 8192 - 16 * 256 - 60
    assert default_max_tokens(512, 600) < 1
