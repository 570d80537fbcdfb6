"""Baseline: onnxruntime (CPU, f32) on an ONNX export of transformers' GOT vision encoder + projector.

The export is made once per checkpoint (``torch.onnx.export``) and cached; the timed call is
``InferenceSession.run`` on one normalised 1024² view.
"""

from __future__ import annotations

import pytest

from harness import BASELINE_HINT, SETTINGS, need, run_rounds, tag, vision_flops


@pytest.fixture(scope="module")
def ort_session(onnx_vision_path):
    need("onnxruntime", hint=BASELINE_HINT)
    from baselines import onnx_vision

    return onnx_vision.session(onnx_vision_path, SETTINGS.threads)


def test_vision(benchmark, ort_session, got_config):
    from baselines import onnx_vision
    from gotocr_fast.synth import synth_pixels

    px = synth_pixels(got_config.vision.image_size, 1, seed=0)
    out = onnx_vision.encode(ort_session, px)
    assert out.shape == (1, got_config.tokens_per_view, got_config.text.hidden_size)
    tag(benchmark, "vision_view", "onnxruntime", "f32", units=1, unit="view",
        flops=vision_flops(got_config))
    run_rounds(benchmark, onnx_vision.encode, rounds=3, setup=lambda: ((ort_session, px), {}))
