"""bf16 compute of the encoder's matmuls (native/cpu_gemm_bf16.h, ``VisionEncoder(precision="bf16")``).

Three layers of checks:
- the GEMM against numpy in float64 on the same bf16-rounded inputs (only the f32 sums differ, so
  the bound is tight), and against the unrounded inputs (the cost of bf16, bounded), for each bf16
  kernel this CPU has (AMX, AVX512_BF16);
- the fused attention with its two products in bf16 (AMX tiles, AVX512_BF16 dot products), against
  numpy in float64;
- the whole encoder in bf16 against the f32 transformers oracle fixtures, with its own tolerance.
On a CPU without bf16 arithmetic the kernel tests skip and say so, and the encoder must fall back
to f32 (checked here on every CPU).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from gotocr_fast import _vision, synth
from gotocr_fast.vision import VisionEncoder

from .conftest import oracle_pixels
from .test_cpu_attention import SHAPES as ATTN_SHAPES
from .test_cpu_attention import _reference as attn_reference
from .test_cpu_attention import attention_inputs
from .test_cpu_gemm import BF16, F16, F32, Q8_0, SHAPES, _gelu, _weights
from .test_vision_encoder import CONFIGS, _errors

BEST = _vision._gemm_bf16_best_isa()
# the kernels this CPU runs: an AMX CPU has AVX512_BF16 too
KERNELS = {"amx": ["amx", "avx512_bf16"], "avx512_bf16": ["avx512_bf16"]}.get(BEST, [])
needs_bf16 = pytest.mark.skipif(not KERNELS, reason="this CPU has neither AMX-BF16 nor AVX512_BF16")
# the bf16 engines of the attention this CPU runs (the GEMMs' engines, on the AVX-512 variant)
ATTN_KERNELS = [k for k in ("amx", "avx512_bf16") if _vision._attn_available(k)]


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest-even bf16, returned as float64 (the value the kernels multiply)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


@needs_bf16
@pytest.mark.parametrize("kernel", KERNELS or ["none"])
@pytest.mark.parametrize("btype", [F32, F16, BF16, Q8_0], ids=["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bf16_gemm_matches_float64(shape, btype, kernel):
    m, n, k = shape
    if btype == Q8_0 and k % 32:
        k = (k + 31) // 32 * 32
    rng = np.random.default_rng(m * 7919 + n * 104729 + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    raw, w = _weights(rng, n, k, btype)
    bias = rng.standard_normal(n).astype(np.float32)
    got = _vision._gemm_bf16_for_tests(a, raw, btype, n, bias, False, 1, kernel).astype(np.float64)

    # same rounded inputs: exact products, f32 sums of K terms
    exact = _bf16(a) @ _bf16(w.astype(np.float32)).T + bias
    scale = np.abs(_bf16(a)).max() * np.abs(w).max()
    assert np.abs(got - exact).max() <= 1e-6 * k * scale + 1e-6, kernel

    # against the unrounded inputs: two bf16 roundings (relative 2^-9 each) per product, random
    # signs, so ~2^-8 |a||w| sqrt(K) (5 sigma of margin)
    want = a.astype(np.float64) @ w.T + bias
    assert np.abs(got - want).max() <= 5 * 2.0**-8 * scale * math.sqrt(k) + 1e-6, kernel


@needs_bf16
@pytest.mark.parametrize("kernel", KERNELS or ["none"])
def test_bf16_gemm_gelu(kernel):
    rng = np.random.default_rng(5)
    m, n, k = 45, 70, 96
    a = rng.standard_normal((m, k)).astype(np.float32)
    raw, w = _weights(rng, n, k, F32)
    bias = rng.standard_normal(n).astype(np.float32)
    got = _vision._gemm_bf16_for_tests(a, raw, F32, n, bias, True, 1, kernel)
    want = _gelu(_bf16(a) @ _bf16(w.astype(np.float32)).T + bias)
    assert np.abs(got - want).max() <= 1e-5


@needs_bf16
@pytest.mark.parametrize("kernel", KERNELS or ["none"])
@pytest.mark.parametrize("shape", [(130, 150, 544), (37, 300, 96), (300, 37, 96)], ids=lambda s: "x".join(map(str, s)))
def test_bf16_gemm_same_bits_for_any_thread_count(shape, kernel):
    m, n, k = shape
    rng = np.random.default_rng(11)
    a = rng.standard_normal((m, k)).astype(np.float32)
    raw, _ = _weights(rng, n, k, F16)
    bias = rng.standard_normal(n).astype(np.float32)
    one = _vision._gemm_bf16_for_tests(a, raw, F16, n, bias, True, 1, kernel)
    for threads in (2, 3, 7):
        assert np.array_equal(one, _vision._gemm_bf16_for_tests(a, raw, F16, n, bias, True, threads, kernel))


@pytest.mark.skipif(len(KERNELS) < 2, reason="needs both AMX and AVX512_BF16 to compare them")
def test_amx_and_avx512_bf16_agree():
    rng = np.random.default_rng(3)
    m, n, k = 100, 64, 800
    a = rng.standard_normal((m, k)).astype(np.float32)
    raw, w = _weights(rng, n, k, BF16)
    amx = _vision._gemm_bf16_for_tests(a, raw, BF16, n, None, False, 1, "amx")
    avx = _vision._gemm_bf16_for_tests(a, raw, BF16, n, None, False, 1, "avx512_bf16")
    assert np.abs(amx - avx).max() <= 1e-6 * k * np.abs(a).max() * np.abs(w).max()


def test_unsupported_kernel_is_refused():
    a = np.zeros((2, 32), np.float32)
    raw = np.zeros((2, 128), np.uint8)
    with pytest.raises(RuntimeError):
        _vision._gemm_bf16_for_tests(a, raw, F32, 2, None, False, 1, "sse")
    for kernel in {"amx", "avx512_bf16"} - set(KERNELS):
        with pytest.raises(RuntimeError):  # asked for a kernel this CPU lacks
            _vision._gemm_bf16_for_tests(a, raw, F32, 2, None, False, 1, kernel)


# --- the encoder -------------------------------------------------------------------------------

# bf16 compute against the f32 transformers oracle, f32 weights (max abs, relative RMS). Measured on
# a Sapphire Rapids (AMX matmuls and attention; features up to |3.7|): tiny 2.5e-2 / 7.6e-3,
# tiny-alt 2.6e-2 / 7.0e-3, full size (5 rows of one view) 2.6e-2 / 7.3e-3. For scale: bf16
# *weights* with f32 compute (the bf16 GGUF) measure 1.8e-2 / 5e-3.
BF16_COMPUTE_BOUNDS = (6e-2, 1.5e-2)


@pytest.mark.parametrize("config,fixture", CONFIGS)
def test_bf16_encoder_matches_transformers_within_bf16_bounds(vision_gguf, oracle, config, fixture):
    want = oracle(fixture)["features"]
    with VisionEncoder(vision_gguf(config, "f32"), n_threads=2, precision="bf16") as enc:
        # bf16 where the CPU multiplies bf16, else the f32 path (and then the f32 bound holds)
        assert enc.precision == ("bf16" if KERNELS else "f32")
        assert enc.kernel_isa["gemm"] == (BEST if KERNELS else _vision._gemm_best_isa())
        assert enc.kernel_isa["attention"] == (BEST if ATTN_KERNELS else _vision._attn_best_isa())
        got = enc.encode(oracle_pixels(config, n_views=want.shape[0]))
    assert got.shape == want.shape and np.isfinite(got).all()
    max_abs, rel_rms = _errors(got, want)
    bound_abs, bound_rms = BF16_COMPUTE_BOUNDS if KERNELS else (1e-3, 1e-4)
    assert max_abs <= bound_abs and rel_rms <= bound_rms, (max_abs, rel_rms)


@needs_bf16
def test_bf16_encoder_same_bits_for_any_thread_count(tiny_vision_gguf):
    px = oracle_pixels("tiny", n_views=2)
    with VisionEncoder(tiny_vision_gguf, n_threads=1, precision="bf16") as enc:
        one = enc.encode(px)
        enc.set_n_threads(3)
        assert np.array_equal(one, enc.encode(px))


def test_f32_is_the_default_and_bad_precision_is_refused(tiny_vision_gguf):
    with VisionEncoder(tiny_vision_gguf, n_threads=1) as enc:
        assert enc.precision == "f32"
        assert enc.kernel_isa["gemm"] == _vision._gemm_best_isa()
    with VisionEncoder(tiny_vision_gguf, n_threads=1, cpu_kernels=False, precision="bf16") as enc:
        assert enc.precision == "f32" and enc.kernel_isa == {"gemm": "ggml", "attention": "ggml", "layernorm": "ggml"}
    with pytest.raises(ValueError, match="precision"):
        VisionEncoder(tiny_vision_gguf, precision="fp8")


@pytest.mark.skipif(BEST != "amx", reason="forcing the AVX512_BF16 kernel is only meaningful on an AMX CPU")
def test_encoder_runs_the_avx512_bf16_kernel_when_forced(tiny_vision_gguf, oracle):
    # the choice is made once per process, so the forced run is a child process
    code = (
        "import sys, numpy as np\n"
        "from gotocr_fast.vision import VisionEncoder\n"
        "from gotocr_fast import synth\n"
        "enc = VisionEncoder(sys.argv[1], n_threads=2, precision='bf16')\n"
        "print(enc.kernel_isa['gemm'])\n"
        "np.save(sys.argv[2], enc.encode(synth.synth_pixels(enc.image_size, n_views=2, seed=0)))\n"
    )
    out_path = os.path.join(os.path.dirname(str(tiny_vision_gguf)), "forced_avx512_bf16.npy")
    env = dict(os.environ, GOTOCR_CPU_BF16_ISA="avx512_bf16")
    r = subprocess.run([sys.executable, "-c", code, str(tiny_vision_gguf), out_path], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "avx512_bf16"
    got = np.load(out_path)
    os.unlink(out_path)
    max_abs, rel_rms = _errors(got, oracle("tiny_vision")["features"])
    assert max_abs <= BF16_COMPUTE_BOUNDS[0] and rel_rms <= BF16_COMPUTE_BOUNDS[1], (max_abs, rel_rms)


@needs_bf16
@pytest.mark.skipif(os.environ.get("GOTOCR_SKIP_FULL_TESTS") == "1", reason="GOTOCR_SKIP_FULL_TESTS=1")
def test_full_config_bf16_rows_within_bf16_bounds(full_vision_gguf, oracle):
    o = oracle("full_vision")
    with VisionEncoder(full_vision_gguf, n_threads=2, precision="bf16") as enc:
        assert enc.precision == "bf16"
        got = enc.encode(synth.synth_pixels(1024, n_views=1, seed=0))[0]
    max_abs, rel_rms = _errors(got[o["rows"].astype(int)], o["feature_rows"])
    assert max_abs <= BF16_COMPUTE_BOUNDS[0] and rel_rms <= BF16_COMPUTE_BOUNDS[1], (max_abs, rel_rms)


# --- attention with its two products in bf16 -------------------------------------------------------

def test_bf16_attention_engines_follow_the_gemm_kernels():
    # an engine the GEMM has and the attention lacks would leave the bf16 encoder's attention in
    # f32 without a word
    assert ATTN_KERNELS == (KERNELS if _vision._attn_available("avx512") else [])


@pytest.mark.skipif(not ATTN_KERNELS, reason="this CPU has neither AMX-BF16 nor AVX512_BF16")
@pytest.mark.parametrize("kernel", ATTN_KERNELS or ["none"])
@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=lambda s: "B{}G{}S{}H{}d{}{}{}".format(
    *s[:5], "" if s[5] else "-norel", "-biased" if s[6] else ""))
def test_bf16_attention_matches_float64_within_bf16(shape, kernel):
    _, _, S, H, _, _, has_bias = shape
    qkv, bias, tab_h, tab_w, scale = attention_inputs(shape)
    want = attn_reference(qkv, bias, H, S, tab_h, tab_w, scale, has_bias)
    got = _vision._attn_for_tests(qkv, H, S, bias, has_bias, tab_h, tab_w, scale, 1, kernel)
    assert np.all(np.isfinite(got))
    # q, k, v and the softmax weights are rounded to bf16 (relative 2^-9 each); the output is a
    # convex combination of v: measured 1.0e-3 .. 7.7e-3 here (max |out| 1.3 .. 2.8); the bound
    # 2^-6 max|out| is 4x or more above each
    assert np.abs(got - want).max() <= 2**-9 * 8 * max(1.0, np.abs(want).max()), np.abs(got - want).max()
    for nt in (2, 3):
        again = _vision._attn_for_tests(qkv, H, S, bias, has_bias, tab_h, tab_w, scale, nt, kernel)
        assert np.array_equal(again.view(np.uint32), got.view(np.uint32)), nt
