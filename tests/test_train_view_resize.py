"""A trained state carried to another view size (train/view_resize.py): its position tables are
resized so that the same page position keeps the same vector.

The rule is plain numpy and tested without torch: expected values come from the geometry (a
table that is linear in position stays linear, scaled to the new grid), and, where torch is
installed, from torch's own ``F.interpolate``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

view_resize = pytest.importorskip("train.view_resize", reason="needs the repository's train/ folder")

CHECKPOINT = Path(__file__).resolve().parents[1] / "train" / "checkpoint"


@pytest.mark.parametrize("old, new", [(24, 48), (47, 95), (48, 24), (15, 15)])
def test_interpolation_rows_are_convex_weights(old, new):
    w = view_resize.linear_weights(old, new)
    assert w.shape == (new, old)
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    if old == new:
        np.testing.assert_array_equal(w, np.eye(old))


def test_relative_offsets_scale_with_the_grid():
    # A table whose row i holds its offset i - (G - 1): at a grid twice as fine, offset d' must hold
    # the old table's value at the same page distance, d' * (2G - 1) / (2G' - 1) old patches.
    old_grid, new_grid = 24, 48
    old_len, new_len = 2 * old_grid - 1, 2 * new_grid - 1
    offsets = np.arange(old_len) - (old_grid - 1)
    table = np.stack([offsets, -2.0 * offsets], axis=1).astype(np.float32)
    out = view_resize.resize_table(table, new_len)
    assert out.shape == (new_len, 2) and out.dtype == np.float32
    new_offsets = np.arange(new_len) - (new_grid - 1)
    interior = np.abs(new_offsets) <= new_grid - 3  # clear of the clamped ends
    scale = old_len / new_len
    np.testing.assert_allclose(out[interior, 0], new_offsets[interior] * scale, atol=1e-4)
    np.testing.assert_allclose(out[interior, 1], -2.0 * new_offsets[interior] * scale, atol=1e-4)
    assert out[new_grid - 1, 0] == pytest.approx(0.0, abs=1e-6)  # offset 0 stays offset 0


def test_position_embedding_keeps_its_value_at_each_page_position():
    # Linear in the patch centre's page fraction: the resized grid must give, at every new patch
    # centre, the value the old grid gives at that page position.
    old, new = 24, 48

    def linear_in_page(grid):
        centre = (np.arange(grid) + 0.5) / grid  # page fraction of each patch centre
        y, x = np.meshgrid(centre, centre, indexing="ij")
        return np.stack([3.0 * y + 1.0, -x, np.ones_like(x)], axis=-1)[None].astype(np.float32)

    out = view_resize.resize_grid(linear_in_page(old), new)
    assert out.shape == (1, new, new, 3)
    expected = linear_in_page(new)
    inner = slice(1, new - 1)  # the outermost new patches lie beyond the old centres (clamped)
    np.testing.assert_allclose(out[0, inner, inner], expected[0, inner, inner], atol=1e-5)
    np.testing.assert_allclose(out[..., 2], 1.0, atol=1e-6)


def test_only_view_dependent_tables_are_resized():
    same = np.zeros((15, 64), np.float16)
    assert view_resize.resize_for_view("hf.model.vision_tower.layers.0.attn.rel_pos_h", same, (15, 64)) is same
    grown = view_resize.resize_for_view("hf.model.vision_tower.layers.1.attn.rel_pos_w", np.zeros((47, 64), np.float16), (95, 64))
    assert grown.shape == (95, 64)
    with pytest.raises(ValueError, match="does not fit"):
        view_resize.resize_for_view("hf.model.multi_modal_projector.linear.weight", np.zeros((4, 4)), (8, 8))
    with pytest.raises(ValueError, match="does not fit"):  # a table of another head size is another model
        view_resize.resize_for_view("hf.model.vision_tower.layers.1.attn.rel_pos_w", np.zeros((47, 32)), (95, 64))
    # a head over the token grid's rows does not carry over to another grid
    assert view_resize.resize_for_view("box_row_head.bias", np.zeros(12), (6,)) is None
    kept = np.ones(12)
    assert view_resize.resize_for_view("box_row_head.bias", kept, (12,)) is kept


def test_the_rule_is_torch_interpolate_without_corner_alignment():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    table = rng.standard_normal((47, 8)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(table).t()[None], size=95, mode="linear", align_corners=False)[0].t()
    np.testing.assert_allclose(view_resize.resize_table(table, 95), ref.numpy(), atol=1e-5)
    pos = rng.standard_normal((1, 24, 24, 8)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(pos).permute(0, 3, 1, 2), size=(48, 48), mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1)
    np.testing.assert_allclose(view_resize.resize_grid(pos, 48), ref.numpy(), atol=1e-5)


def test_a_committed_state_starts_a_run_at_another_view(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch
    from safetensors.numpy import load_file

    from train import compact, config
    from train.model import DemoTrainer

    src_view = config.run_config(CHECKPOINT).vision.image_size
    view = next(v for v in config.VIEW_SIZES if v != src_view)
    compact.seed_run_dir(CHECKPOINT, tmp_path, image_size=view)
    cfg = config.run_config(tmp_path)
    assert cfg.vision.image_size == view
    model = DemoTrainer(cfg, torch.from_numpy(np.load(CHECKPOINT / "used_ids.npy")))
    step = compact.load_compact(model, CHECKPOINT)
    saved = load_file(str(CHECKPOINT / compact.WEIGHTS))
    params = dict(model.named_parameters())
    assert step > 0
    pos = params[view_resize.POS_EMBED].detach().numpy()
    assert pos.shape == (1, cfg.vision.grid, cfg.vision.grid, cfg.vision.hidden_size)
    np.testing.assert_allclose(pos, view_resize.resize_grid(saved[view_resize.POS_EMBED], cfg.vision.grid).astype(np.float32))
    # windowed blocks keep their tables; the language model is untouched
    windowed = [i for i in range(cfg.vision.num_layers) if i not in cfg.vision.global_layers][0]
    name = f"hf.model.vision_tower.layers.{windowed}.attn.rel_pos_h"
    np.testing.assert_array_equal(params[name].detach().numpy(), saved[name].astype(np.float32))
    name = "hf.model.language_model.layers.0.mlp.up_proj.weight"
    np.testing.assert_array_equal(params[name].detach().numpy(), saved[name].astype(np.float32))
    # the token-row heads name rows of the new grid: they start from their (zero) initialisation
    assert params["box_row_head.weight"].shape[0] == cfg.token_grid
    assert not params["box_row_head.weight"].detach().numpy().any()
