"""The training's SAM attention (train/model.py) against transformers' own module.

The training replaces ``GotOcr2VisionAttention.forward`` by a fused-kernel version that folds the
decomposed relative positions into the query and key; what it trains must be the module the
converter and the engine read, so its output and every gradient must match transformers' forward
(float rounding apart), for the global blocks and the windowed ones.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the train extra (torch) is not installed")
pytest.importorskip("transformers", reason="the train extra (transformers) is not installed")


@pytest.mark.parametrize("grid, window", [(12, 0), (8, 4), (6, 6)], ids=["global", "windowed", "one-window"])
def test_fused_attention_matches_transformers(grid, window):
    from transformers.models.got_ocr2 import modeling_got_ocr2

    from train.config import demo_model
    from train.model import _vision_attention_sdpa, build_hf_model

    torch.manual_seed(0)
    cfg = demo_model(384)
    hf = build_hf_model(cfg)
    config = hf.model.vision_tower.config
    attn = modeling_got_ocr2.GotOcr2VisionAttention(config, window_size=window)
    with torch.no_grad():  # rel-pos tables are zero at init: give them values, sized for this grid
        size = window if window else grid
        attn.rel_pos_h = torch.nn.Parameter(torch.randn(2 * size - 1, attn.rel_pos_h.shape[1]) * 0.5)
        attn.rel_pos_w = torch.nn.Parameter(torch.randn(2 * size - 1, attn.rel_pos_w.shape[1]) * 0.5)
    side = window if window else grid
    x = torch.randn(3, side, side, cfg.vision.hidden_size)
    g = torch.randn(3, side, side, cfg.vision.hidden_size)

    def run(forward):
        attn.zero_grad()
        xi = x.clone().requires_grad_()
        out = forward(attn, xi)[0]
        (out * g).sum().backward()
        return out.detach(), xi.grad, {n: p.grad.clone() for n, p in attn.named_parameters()}

    want_out, want_dx, want_grads = run(modeling_got_ocr2.GotOcr2VisionAttention.forward)  # the class: never patched
    got_out, got_dx, got_grads = run(_vision_attention_sdpa)
    torch.testing.assert_close(got_out, want_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_dx, want_dx, rtol=1e-4, atol=1e-5)
    assert set(got_grads) == set(want_grads)
    for name in want_grads:
        assert want_grads[name].abs().max() > 0, name  # every parameter takes part
        # A weight gradient sums over every position: f32 rounding grows with the gradient's
        # scale (transformers' own f32 gradient is ~1e-6 of its largest element off an f64 run).
        atol = 2e-6 * want_grads[name].abs().max().item()
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=atol, msg=name)


def test_bf16_kernel_stays_within_bf16_rounding():
    """--bf16-attention: only the fused kernel runs in bf16; the result is transformers' to bf16's
    precision (relative error of a few 1e-3), in f32."""
    from transformers.models.got_ocr2 import modeling_got_ocr2

    from train.config import demo_model
    from train.model import _vision_attention_sdpa, build_hf_model

    torch.manual_seed(1)
    cfg = demo_model(384)
    attn = modeling_got_ocr2.GotOcr2VisionAttention(build_hf_model(cfg).model.vision_tower.config, window_size=0)
    with torch.no_grad():
        attn.rel_pos_h.normal_(0, 0.5)
        attn.rel_pos_w.normal_(0, 0.5)
    x = torch.randn(2, 12, 12, cfg.vision.hidden_size)
    with torch.no_grad():
        want = modeling_got_ocr2.GotOcr2VisionAttention.forward(attn, x)[0]
        got = _vision_attention_sdpa(attn, x, kernel_dtype=torch.bfloat16)[0]
    assert got.dtype == torch.float32
    rel = float((got - want).norm() / want.norm())
    assert 1e-5 < rel < 2e-2, rel  # rounded (so bf16 did run), but only by bf16's precision


def test_the_fused_attention_is_installed_per_model():
    """Only the model given runs the fused attention: transformers' class keeps its forward, so the
    comparisons above (and any other model in the process) see transformers' own arithmetic."""
    from transformers.models.got_ocr2 import modeling_got_ocr2

    from train.config import demo_model
    from train.model import build_hf_model, use_fast_vision_attention

    cls = modeling_got_ocr2.GotOcr2VisionAttention
    original = cls.forward
    cfg = demo_model(384)
    model, other = build_hf_model(cfg), build_hf_model(cfg)
    assert use_fast_vision_attention(model, bf16_kernel=True) == cfg.vision.num_layers
    assert cls.forward is original
    for m in model.modules():
        if isinstance(m, cls):
            assert "forward" in vars(m)
    assert not any("forward" in vars(m) for m in other.modules() if isinstance(m, cls))
