"""The CPU GEMM of the vision encoder (native/cpu_gemm.h) against numpy in float64.

Shapes are chosen around the blocking: M, N, K off the tile sizes (MR <= 14, NR <= 32), K below
and above the K slice (256), N below one panel. Weights come in every type the encoder loads,
built here byte by byte (expected values use the dequantised weights, so only the GEMM is tested).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gotocr_fast import _vision

F32, F16, Q8_0, BF16 = 0, 1, 8, 30  # ggml_type values

SHAPES = [  # (M, N, K)
    (1, 1, 1),
    (5, 3, 32),
    (7, 45, 96),
    (37, 70, 300),
    (13, 17, 256),
    (50, 33, 257),
    (130, 150, 544),
    (200, 100, 800),
]


def _weights(rng, n, k, btype):
    """(raw row bytes [n, row_bytes] uint8, dequantised float64 [n, k])."""
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.2
    if btype == F32:
        return w.view(np.uint8).reshape(n, -1), w.astype(np.float64)
    if btype == F16:
        h = w.astype(np.float16)
        return h.view(np.uint8).reshape(n, -1), h.astype(np.float64)
    if btype == BF16:
        bits = w.view(np.uint32)
        bf = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
        deq = (bf.astype(np.uint32) << 16).view(np.float32)
        return bf.view(np.uint8).reshape(n, -1), deq.astype(np.float64)
    assert btype == Q8_0 and k % 32 == 0
    blocks = w.reshape(n, k // 32, 32)
    d = (np.abs(blocks).max(axis=2) / 127.0).astype(np.float16)
    inv = np.where(d.astype(np.float32) > 0, 1.0 / d.astype(np.float32), 0.0)
    q = np.clip(np.rint(blocks * inv[..., None]), -127, 127).astype(np.int8)
    raw = np.empty((n, k // 32, 34), dtype=np.uint8)
    raw[..., :2] = d[..., None].view(np.uint8).reshape(n, k // 32, 2)
    raw[..., 2:] = q.view(np.uint8)
    deq = q.astype(np.float64) * d.astype(np.float64)[..., None]
    return raw.reshape(n, -1), deq.reshape(n, k)


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _isas():
    best = _vision._gemm_best_isa()
    return {"avx512": ["generic", "avx2", "avx512"], "avx2": ["generic", "avx2"]}.get(best, ["generic"])


@pytest.mark.parametrize("btype", [F32, F16, BF16, Q8_0], ids=["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_matches_float64(shape, btype):
    m, n, k = shape
    if btype == Q8_0 and k % 32:
        k = (k + 31) // 32 * 32
    rng = np.random.default_rng(m * 1000003 + n * 1009 + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    raw, w = _weights(rng, n, k, btype)
    bias = rng.standard_normal(n).astype(np.float32)
    want = a.astype(np.float64) @ w.T + bias
    # f32 accumulation over K terms: error grows ~ sqrt(K) eps |a||w|
    tol = 1e-5 * math.sqrt(k) * (np.abs(a).max() * np.abs(w).max() * math.sqrt(k) + 1)
    for isa in _isas():
        got = _vision._gemm_for_tests(a, raw, btype, n, bias, False, 1, isa)
        assert np.abs(got - want).max() <= tol, isa
        # the thread split must not change a single bit
        for n_threads in (2, 3, 7):
            np.testing.assert_array_equal(_vision._gemm_for_tests(a, raw, btype, n, bias, False, n_threads, isa), got)
    got = _vision._gemm_for_tests(a, raw, btype, n, None, False)
    assert np.abs(got - (want - bias)).max() <= tol


def test_gelu_epilogue_matches_exact_erf():
    """GELU over [-12, 12] (and beyond) against float64 math.erf: absolute error ~1e-7 * |x|."""
    x = np.concatenate([np.linspace(-12, 12, 20001), [-100.0, -7.0, -1e-8, 0.0, 1e-8, 7.0, 100.0]])
    x = x.astype(np.float32)
    want = _gelu(x.astype(np.float64))
    one = np.ones((1, 1), dtype=np.float32).view(np.uint8).reshape(1, -1)
    for isa in _isas():
        # A = x as a column, B = [[1]]: C = x exactly, then the GELU epilogue
        got = _vision._gemm_for_tests(x.reshape(-1, 1), one, F32, 1, None, True, 1, isa)[:, 0]
        err = np.abs(got.astype(np.float64) - want)
        assert (err <= 1e-7 + 2e-7 * np.abs(x)).all(), (isa, float(err.max()), float(x[np.argmax(err)]))
        assert got[0] == 0.0 and got[-1] == 100.0


@pytest.mark.parametrize("shape", [(13, 33, 64), (150, 70, 300), (290, 40, 513)], ids=lambda s: "x".join(map(str, s)))
def test_gemm_gelu_whole_tiles(shape):
    """Bias + GELU epilogue on interior (in-place) tiles as well as edge tiles, across the MC row
    block and K slices; the epilogue works on several rows of a tile at once, so M is off MR and
    the thread split must still not change a bit."""
    m, n, k = shape
    rng = np.random.default_rng(m * 7 + n * 11 + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    raw, w = _weights(rng, n, k, F32)
    bias = rng.standard_normal(n).astype(np.float32)
    pre = a.astype(np.float64) @ w.T + bias
    want = _gelu(pre)
    tol = 1e-5 * math.sqrt(k) * (np.abs(a).max() * np.abs(w).max() * math.sqrt(k) + 1)
    for isa in _isas():
        got = _vision._gemm_for_tests(a, raw, F32, n, bias, True, 1, isa)
        # GELU' is within [-0.13, 1.13]: the matmul error passes through at most ~1.13x
        assert np.abs(got - want).max() <= 1.13 * tol + 1e-7 + 2e-7 * np.abs(pre).max(), isa
        for n_threads in (2, 3):
            np.testing.assert_array_equal(_vision._gemm_for_tests(a, raw, F32, n, bias, True, n_threads, isa), got)


def test_gemm_rejects_bad_arguments():
    a = np.ones((2, 4), dtype=np.float32)
    b = np.ones((3, 4), dtype=np.float32).view(np.uint8).reshape(3, -1)
    with pytest.raises(RuntimeError):
        _vision._gemm_for_tests(a, b, F32, 3, None, False, 1, "no-such-isa")
    with pytest.raises(RuntimeError):
        _vision._gemm_for_tests(a, b, Q8_0, 3, None, False)  # K = 4 is not whole q8_0 blocks


def test_gemm_writes_into_given_output_and_scratch():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((50, 257)).astype(np.float32)
    raw, w = _weights(rng, 33, 257, F32)
    out = np.full((50, 33), np.nan, dtype=np.float32)
    got = _vision._gemm_for_tests(a, raw, F32, 33, None, False, out=out)
    assert got is out
    np.testing.assert_allclose(out, a.astype(np.float64) @ w.T, rtol=1e-4, atol=1e-4)
    scratch = np.empty(_vision._gemm_scratch_floats() + 16, dtype=np.float32)
    start = (-scratch.ctypes.data % 64) // 4  # a 64-byte aligned view
    again = _vision._gemm_for_tests(a, raw, F32, 33, None, False, out=np.empty_like(out),
                                    scratch=scratch[start:start + _vision._gemm_scratch_floats()])
    np.testing.assert_array_equal(again, out)
    with pytest.raises(RuntimeError):  # misaligned scratch
        _vision._gemm_for_tests(a, raw, F32, 33, None, False, scratch=scratch[start + 1:])
    with pytest.raises(ValueError, match="scratch must hold"):
        _vision._gemm_for_tests(a, raw, F32, 33, None, False, scratch=scratch[:100])
    with pytest.raises(ValueError, match="out must be"):
        _vision._gemm_for_tests(a, raw, F32, 33, None, False, out=np.zeros((50, 32), dtype=np.float32))


def test_fma_peak_is_measured_for_the_gemm_width():
    # the benchmarks' denominator: a plausible single-thread figure where the GEMM has an FMA
    # variant, and none for the generic one
    best = _vision._gemm_best_isa()
    peak = _vision._fma_peak_gflops(2_000_000)
    if best == "generic":
        assert peak is None
    else:
        assert 5.0 < peak < 2000.0
        assert _vision._fma_peak_gflops(2_000_000, isa="generic") is None
