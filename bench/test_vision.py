"""Ours: the ggml vision encoder (``gotocr_fast.vision.VisionEncoder``) per 1024² view.

Encoder + neck + projector on one normalised view, weights converted to f32 / f16 / bf16 / q8_0
(matmul weights take the type; see docs/ARCHITECTURE.md), all computed in f32; and once more with
bf16 compute (``precision="bf16"``: AMX tiles or AVX512_BF16 where the CPU has them, else the
same f32 path) on the bf16 weights. Each case records the instruction set every kind of kernel
ran on and the CPU. The baselines are transformers' ``get_image_features`` and onnxruntime on its
ONNX export.
"""

from __future__ import annotations

import platform

import pytest

from gotocr_fast.cpus import cpu_info
from harness import OUTTYPES, SETTINGS, construct, need_attr, run_rounds, tag, vision_flops

# (weights, compute) of each case; its label in RESULTS.md is the weight type, plus " compute"
# for bf16 arithmetic
CASES = [(t, "f32") for t in OUTTYPES] + [("bf16", "bf16")]


def _cpu_name() -> str:
    return cpu_info().get("model name") or platform.processor() or "unknown"


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c[0] if c[1] == "f32" else f"{c[0]}-compute-{c[1]}")
def encoder(request, model_files):
    VisionEncoder = need_attr("gotocr_fast.vision", "VisionEncoder")
    weights, precision = request.param
    files = model_files(weights)
    enc = construct(VisionEncoder, str(files.vision), n_threads=SETTINGS.threads, precision=precision)
    yield weights, precision, enc
    enc.close()


def test_vision(benchmark, encoder, got_config):
    from gotocr_fast.synth import synth_pixels

    weights, precision, enc = encoder
    px = synth_pixels(got_config.vision.image_size, 1, seed=0)
    out = enc.encode(px)
    assert out.shape == (1, got_config.tokens_per_view, got_config.text.hidden_size)
    dtype = weights if precision == "f32" else f"{weights} compute"
    tag(benchmark, "vision_view", "ours", dtype, units=1, unit="view", flops=vision_flops(got_config),
        precision=enc.precision, kernel_isa=enc.kernel_isa, cpu=_cpu_name())
    run_rounds(benchmark, enc.encode, rounds=3, setup=lambda: ((px,), {}))
