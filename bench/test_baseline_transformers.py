"""Baseline: transformers ``GotOcr2ForConditionalGeneration`` on CPU (f32, and bf16 when faster).

Stages, each timed on its own: preprocessing (transformers' GOT image processor), vision tower +
projector (``get_image_features``) per view, LM prefill of the one-view GOT prompt, greedy decode
per token (KV cache reused), and one page end to end with ``generate``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from harness import BASELINE_HINT, SETTINGS, need, run_rounds, tag, vision_flops


@pytest.fixture(scope="module", params=["f32", "bf16"])
def hf_model(request, checkpoint_dir):
    need("torch", "transformers", hint=BASELINE_HINT)
    from baselines import torch_got

    dtype = request.param
    if dtype == "bf16":
        forced = os.environ.get("GOTOCR_BENCH_TORCH_BF16")
        if forced == "0":
            pytest.skip("transformers bf16 turned off (GOTOCR_BENCH_TORCH_BF16=0)")
        if forced != "1":
            faster, why = torch_got.bf16_is_faster(SETTINGS.threads)
            if not faster:
                pytest.skip(f"transformers bf16 not run: {why} (GOTOCR_BENCH_TORCH_BF16=1 forces it)")
    model = torch_got.load_model(checkpoint_dir, dtype, SETTINGS.threads)
    yield dtype, model
    del model


@pytest.fixture(scope="module")
def hf_processor(checkpoint_dir):
    need("torch", "transformers", hint=BASELINE_HINT)
    from baselines import torch_got

    return torch_got.image_processor(checkpoint_dir)


def _view_pixels(got_config, n: int = 1, seed: int = 0):
    import torch

    from gotocr_fast.synth import synth_pixels

    return torch.from_numpy(synth_pixels(got_config.vision.image_size, n, seed))


@pytest.mark.parametrize("crop", [False, True], ids=["1view", "crop"])
def test_preprocess(benchmark, hf_processor, pages, crop):
    from baselines import torch_got

    page = pages(1)[0]
    pv = torch_got.pixel_values(hf_processor, page, crop=crop)
    tag(benchmark, "preprocess_crop" if crop else "preprocess_1view", "transformers",
        units=1, unit="page", views=int(pv.shape[0]))
    run_rounds(benchmark, torch_got.pixel_values, rounds=10,
               setup=lambda: ((hf_processor, page, crop), {}))


def test_vision(benchmark, hf_model, got_config):
    from baselines import torch_got

    dtype, model = hf_model
    px = _view_pixels(got_config)
    tag(benchmark, "vision_view", "transformers", dtype, units=1, unit="view",
        flops=vision_flops(got_config))
    run_rounds(benchmark, torch_got.image_features, rounds=3, setup=lambda: ((model, px), {}))


def _embeds(model, prompt_ids, got_config):
    import torch

    from baselines import torch_got
    from gotocr_fast.tokens import IMG_PAD_ID

    rng = np.random.default_rng(0)
    feats = torch.from_numpy(
        rng.normal(0, 0.5, (1, got_config.tokens_per_view, got_config.text.hidden_size)).astype(np.float32))
    return torch_got.prompt_embeds(model, prompt_ids, feats, IMG_PAD_ID)


def test_prefill(benchmark, hf_model, prompt_ids, got_config):
    from baselines import torch_got

    dtype, model = hf_model
    embeds = _embeds(model, prompt_ids, got_config)
    tag(benchmark, "prefill", "transformers", dtype, units=1, unit="prompt",
        prompt_tokens=len(prompt_ids))
    run_rounds(benchmark, torch_got.prefill, rounds=3, setup=lambda: ((model, embeds), {}))


def test_decode(benchmark, hf_model, prompt_ids, got_config):
    from baselines import torch_got

    dtype, model = hf_model
    embeds = _embeds(model, prompt_ids, got_config)
    n = SETTINGS.tokens

    def setup():
        cache, token = torch_got.prefill(model, embeds)
        return (model, cache, token, n), {}

    tag(benchmark, "decode", "transformers", dtype, units=n, unit="token",
        context_start=len(prompt_ids))
    run_rounds(benchmark, torch_got.decode, rounds=3, setup=setup)


def test_page(benchmark, hf_model, hf_processor, prompt_ids, pages):
    from baselines import torch_got

    dtype, model = hf_model
    page = pages(1)[0]
    n = SETTINGS.tokens
    tag(benchmark, "page", "transformers", dtype, units=1, unit="page", completion_tokens=n,
        prompt_tokens=len(prompt_ids))
    # no warm-up round: the model is warm from this module's earlier stages (same dtype)
    generated = run_rounds(benchmark, torch_got.generate_page, rounds=2, warmup=0,
                           setup=lambda: ((model, hf_processor, page, prompt_ids, n), {}))
    assert generated == n
