"""The CPU kernels (GEMM, fused attention, LayerNorm) against ggml's own ops on a model whose every
size is off the SIMD widths: hidden 36 (head dim 12), neck 20, MLP 60, grid 10, window 3.

The committed transformers oracles only cover sizes that are multiples of 8 on AVX2, so the
kernels' vector tails would go untested there; ggml's ops are an independent implementation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gotocr_fast import synth
from gotocr_fast.convert import convert_checkpoint
from gotocr_fast.vision import VisionEncoder

ODD = dataclasses.replace(
    synth.CONFIGS["tiny"],
    name="odd",
    vision=dataclasses.replace(
        synth.CONFIGS["tiny"].vision, image_size=160, hidden_size=36, num_heads=3, mlp_dim=60,
        window_size=3, global_layers=(1,), num_layers=3, neck_channels=20,
    ),
)


@pytest.fixture(scope="module")
def odd_vision_gguf(tmp_path_factory):
    ckpt = synth.write_checkpoint(tmp_path_factory.mktemp("ckpt-odd"), config=ODD, layout="hf", seed=3)
    out = tmp_path_factory.mktemp("model-odd")
    convert_checkpoint(ckpt, out, outtype="f32", progress=False)
    return next(out.glob("got-vision-*.gguf"))


@pytest.mark.parametrize("n_threads", [1, 3])
def test_odd_sizes_match_ggml_ops(odd_vision_gguf, n_threads):
    px = synth.synth_pixels(ODD.vision.image_size, n_views=2, seed=5)
    with VisionEncoder(odd_vision_gguf, n_threads=1, cpu_kernels=False) as ref_enc:
        ref = ref_enc.encode(px)
    with VisionEncoder(odd_vision_gguf, n_threads=n_threads, cpu_kernels=True) as enc:
        assert enc.cpu_kernels
        got = enc.encode(px)
    assert got.shape == ref.shape == (2, ODD.tokens_per_view, ODD.output_width)
    assert np.isfinite(got).all()
    scale = float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) <= 1e-5 * max(scale, 1.0)
