"""Ours: the vision encoder's f32 GEMM (native/cpu_gemm.h) on each matmul shape of one view, one
thread, against the FMA peak measured in the same run.

The ten shapes come from the config (the full one: the patch embedding, the four linears of a ViT
block, the neck's two convs and the projector's two convs as im2col products, and the final
linear). Operands live on transparent huge pages, as the encoder's buffers do
(native/huge_pages.h), and the packing scratch is kept between products, as the encoder keeps
it. Each case records GFLOP/s and the fraction of the FMA peak: one thread's register-only FMA
loop at the GEMM's vector width, measured right before the case's rounds and right after, the
higher of the two (the clock moves on shared machines).

Baseline: torch's CPU matmul (MKL's SGEMM on x86 builds) on the same operands, one thread, one
round of it before each of our rounds (alternating, so drift hits both), skipped without torch.
It says what a vendor BLAS reaches on this CPU, in the same run.
"""

from __future__ import annotations

import mmap
import time

import numpy as np
import pytest

from harness import SETTINGS, need_attr, run_rounds, tag

F32 = 0  # ggml_type
NAMES = ("patch", "qkv", "attn_out", "ffn_up", "ffn_down", "neck1", "neck2", "mm1", "mm2", "proj")


def _shapes(cfg) -> dict[str, tuple[int, int, int, bool]]:
    """name -> (M, N, K, GELU) of every weight matmul of one view."""
    v, hidden = cfg.vision, cfg.text.hidden_size
    g, d, n = v.grid, v.hidden_size, v.neck_channels
    tokens = g * g
    c1, c2 = hidden // 2, hidden  # the projector's two stride-2 convs: n -> hidden/2 -> hidden
    shapes = [
        (tokens, d, v.num_channels * v.patch_size ** 2, False),  # patch
        (tokens, 3 * d, d, False),  # qkv
        (tokens, d, d, False),  # attn_out
        (tokens, v.mlp_dim, d, True),  # ffn_up
        (tokens, d, v.mlp_dim, False),  # ffn_down
        (tokens, n, d, False),  # neck1
        (tokens, n, 9 * n, False),  # neck2
        (tokens // 4, c1, 9 * n, False),  # mm1
        (tokens // 16, c2, 9 * c1, False),  # mm2
        (tokens // 16, hidden, hidden, False),  # proj
    ]
    return dict(zip(NAMES, shapes))


def _huge_page_array(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array on anonymous memory advised for transparent huge pages (as the encoder's
    buffers are; without the advice Linux's default THP mode gives 4 KB pages)."""
    nbytes = int(np.prod(shape)) * 4
    # private: shared anonymous memory is shmem, which the THP "enabled" setting does not cover
    buf = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buf.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buf, dtype=np.float32, count=int(np.prod(shape))).reshape(shape)


@pytest.fixture(scope="module")
def shapes(got_config):
    return _shapes(got_config)


@pytest.mark.parametrize("name", NAMES)
def test_gemm_shape(benchmark, shapes, name):
    fma_peak = need_attr("gotocr_fast._vision", "_fma_peak_gflops")
    gemm = need_attr("gotocr_fast._vision", "_gemm_for_tests")
    scratch = _huge_page_array((need_attr("gotocr_fast._vision", "_gemm_scratch_floats")(),))
    isa = need_attr("gotocr_fast._vision", "_gemm_best_isa")()
    M, N, K, gelu = shapes[name]
    rng = np.random.default_rng(NAMES.index(name))
    a = _huge_page_array((M, K))
    a[:] = rng.standard_normal((M, K), dtype=np.float32)
    w = _huge_page_array((N, K))
    w[:] = rng.standard_normal((N, K), dtype=np.float32) * 0.05
    raw = w.view(np.uint8).reshape(N, K * 4)
    bias = rng.standard_normal(N, dtype=np.float32)
    c = _huge_page_array((M, N))
    expected_row = a[:1].astype(np.float64) @ w.astype(np.float64).T + bias
    baseline = _torch_baseline(a, w, bias, _huge_page_array((M, N)))
    baseline_times: list[float] = []

    def setup():
        if baseline is not None:
            baseline_times.append(baseline())
        return (a, raw, F32, N, bias, gelu), {"n_threads": 1, "out": c, "scratch": scratch}

    peak_before = fma_peak()
    result = run_rounds(benchmark, gemm, rounds=5, setup=setup)
    peak_after = fma_peak()
    assert result is c
    if not gelu:  # the work was done (the tests check the arithmetic itself)
        np.testing.assert_allclose(c[0], expected_row[0], rtol=1e-3, atol=1e-3)
    peaks = [p for p in (peak_before, peak_after) if p]
    more = {}
    if baseline_times:
        more = {"baseline": baseline.name, "baseline_s": min(baseline_times), "baseline_rounds": len(baseline_times)}
    tag(benchmark, "gemm_shape", "ours", "f32", units=1, unit="product", flops=2 * M * N * K,
        shape=f"{M}x{N}x{K}", gemm=name, gelu=gelu, gemm_isa=isa,
        fma_peak_gflops=round(max(peaks), 1) if peaks else None, gemm_threads=1, **more)


def _torch_baseline(a, w, bias, out):
    """One timed round of torch's matmul + bias on one thread, or None without torch. (Its GELU
    would be one more pass over C; our time includes the GELU epilogue, so the MLP-up case leans
    in the baseline's favour.)"""
    try:
        import torch
    except ImportError:
        return None
    ta, tw, tb, tc = (torch.from_numpy(x) for x in (a, w, bias, out))
    name = "torch (MKL)" if torch.backends.mkl.is_available() else "torch"

    def one_round() -> float:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t0 = time.perf_counter()
            torch.addmm(tb, ta, tw.t(), out=tc)
            return time.perf_counter() - t0
        finally:
            torch.set_num_threads(threads or SETTINGS.threads)

    one_round()  # first-call allocations out of the timing
    one_round.name = name
    return one_round
