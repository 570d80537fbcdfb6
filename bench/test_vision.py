"""Ours: the ggml vision encoder (``gotocr_fast.vision.VisionEncoder``) per 1024² view.

Encoder + neck + projector on one normalised view, weights converted to f32 / f16 / bf16 / q8_0
(matmul weights take the type; see docs/ARCHITECTURE.md). The baselines are transformers'
``get_image_features`` and onnxruntime on its ONNX export.
"""

from __future__ import annotations

import pytest

from harness import OUTTYPES, SETTINGS, construct, need_attr, run_rounds, tag, vision_flops


@pytest.fixture(scope="module", params=list(OUTTYPES))
def encoder(request, model_files):
    VisionEncoder = need_attr("gotocr_fast.vision", "VisionEncoder")
    files = model_files(request.param)
    enc = construct(VisionEncoder, str(files.vision), n_threads=SETTINGS.threads)
    yield request.param, enc
    enc.close()


def test_vision(benchmark, encoder, got_config):
    from gotocr_fast.synth import synth_pixels

    dtype, enc = encoder
    px = synth_pixels(got_config.vision.image_size, 1, seed=0)
    out = enc.encode(px)
    assert out.shape == (1, got_config.tokens_per_view, got_config.text.hidden_size)
    tag(benchmark, "vision_view", "ours", dtype, units=1, unit="view", flops=vision_flops(got_config))
    run_rounds(benchmark, enc.encode, rounds=3, setup=lambda: ((px,), {}))
