"""Sampler semantics vs transformers' logits processors.

Small cases are worked out by hand from transformers' code (RepetitionPenaltyLogitsProcessor,
TemperatureLogitsWarper, TopPLogitsWarper); the oracle fixture (tests/fixtures, "sampling
semantics") checks full-size rows computed by transformers itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from gotocr_fast.engine.sampling import Sampler, SamplingParams, process_logits, top_p_mask

def test_repetition_penalty_divides_positive_multiplies_negative():
    logits = np.array([2.0, -1.0, 0.5, 0.0, 3.0], dtype=np.float32)
    out = process_logits(logits, SamplingParams(repetition_penalty=2.0), np.array([0, 1, 3]))
    np.testing.assert_array_equal(out, np.array([1.0, -2.0, 0.5, 0.0, 3.0], dtype=np.float32))
    # input untouched
    assert logits[0] == 2.0


def test_greedy_applies_penalty_and_counts_prompt_ids():
    logits = np.array([3.0, 2.9, 0.0], dtype=np.float32)
    # id 0 is in the prompt: 3.0/1.1 = 2.727 < 2.9 → 1 wins
    s = Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.1), prompt_ids=[0, 0], vocab_size=3)
    assert s.sample(logits) == 1
    s.accept(1)  # now both penalised: 2.727 vs 2.636 → 0
    assert s.sample(logits) == 0
    # no penalty: plain argmax
    assert Sampler(SamplingParams(), [0], 3).sample(logits) == 0


def test_top_p_keeps_transformers_set():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(p).astype(np.float32)
    # transformers: ascending cumsum 0.05, 0.2, 0.5, 1.0; remove <= 1 - 0.8 = 0.2 → keep {0.5, 0.3}
    assert sorted(top_p_mask(logits, 0.8).tolist()) == [0, 1]
    assert sorted(top_p_mask(logits, 0.81).tolist()) == [0, 1, 2]
    assert top_p_mask(logits, 0.1).tolist() == [0]  # the top token is always kept
    out = process_logits(logits, SamplingParams(temperature=1.0, top_p=0.8))
    assert np.isneginf(out[2]) and np.isneginf(out[3]) and np.isfinite(out[:2]).all()


def test_temperature_scales_before_top_p():
    logits = np.log(np.array([0.6, 0.3, 0.1])).astype(np.float32)
    out = process_logits(logits, SamplingParams(temperature=0.5, top_p=1.0))
    np.testing.assert_allclose(out, logits / 0.5, rtol=1e-6)
    # at T=0.5 the probabilities become 0.36/0.46, 0.09/0.46, ...: top_p 0.75 keeps only the top
    q = np.array([0.36, 0.09, 0.01]) / 0.46
    assert q[0] > 0.75
    assert top_p_mask(logits / 0.5, 0.75).tolist() == [0]


def test_seed_is_deterministic_and_distribution_matches():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=1000).astype(np.float32) * 2
    params = SamplingParams(temperature=0.7, top_p=0.9, seed=1234)
    a = [Sampler(params, [], 1000).sample(logits) for _ in range(3)]
    assert len(set(a)) == 1
    s1, s2 = Sampler(params, [], 1000), Sampler(params, [], 1000)
    assert [s1.sample(logits) for _ in range(50)] == [s2.sample(logits) for _ in range(50)]

    # empirical frequencies follow softmax of the processed scores
    small = np.log(np.array([0.5, 0.3, 0.15, 0.05])).astype(np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.9, seed=7), [], 4)
    counts = np.bincount([s.sample(small) for _ in range(4000)], minlength=4)
    expected = np.array([0.5, 0.3, 0.15, 0.0]) / 0.95  # ascending cumsum 0.05 <= 0.1 → drop last
    assert counts[3] == 0
    np.testing.assert_allclose(counts / 4000, expected, atol=0.03)


def test_large_vocab_top_p_falls_back_to_full_sort():
    # flat distribution: 2048 candidates carry < top_p of the mass → exact full sort path
    logits = np.random.default_rng(3).normal(scale=0.01, size=151860).astype(np.float32)
    logits[:10] += 1.0
    kept = top_p_mask(logits, 0.5)
    p = np.exp(logits.astype(np.float64))
    p /= p.sum()
    order = np.argsort(-logits, kind="stable")
    excl = np.cumsum(p[order]) - p[order]
    assert set(kept.tolist()) == set(order[excl < 0.5].tolist())


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -0.1},
        {"temperature": 2.5},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"repetition_penalty": 0.0},
        {"top_k": -1},
        {"seed": "x"},
        {"seed": -3},
    ],
)
def test_bad_params_rejected(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_against_transformers_fixture(oracle):
    """tests/fixtures/sampling.{json,npz}: transformers' processors on a 4096-logit row."""
    fx = oracle("sampling")
    logits = fx["logits"]
    prev = np.unique(fx["prev_ids"])
    settings = fx.meta["settings"]
    assert len(settings) >= 6
    for st in settings:
        params = SamplingParams(
            temperature=float(st["temperature"]),
            top_p=float(st["top_p"]),
            repetition_penalty=float(st["repetition_penalty"]),
        )
        out = process_logits(logits, params, prev)
        exp = fx[f"{st['index']}/scores"]
        assert (np.isneginf(out) == np.isneginf(exp)).all(), st
        assert int(np.isfinite(out).sum()) == st["kept"]
        fin = np.isfinite(exp)
        np.testing.assert_allclose(out[fin], exp[fin], rtol=1e-5, atol=1e-5)
        # the distribution we draw from
        s = out[fin].astype(np.float64) - out[fin].max()
        probs = np.exp(s) / np.exp(s).sum()
        np.testing.assert_allclose(probs, fx[f"{st['index']}/probs"][fin], atol=1e-6)
