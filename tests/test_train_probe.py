"""train/probe.py: the per-stage read-outs tell a trained state from an untrained one.

Needs torch and transformers (the ``train`` extra); skipped without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

CHECKPOINT = Path(__file__).resolve().parents[1] / "train" / "checkpoint"


def test_probe_reads_the_committed_state_and_not_a_random_one():
    import torch

    from train import probe
    from train.config import run_config
    from train.model import DemoTrainer, use_fast_vision_attention, use_guided_attention

    use_guided_attention()
    model = probe.load_state(CHECKPOINT)
    use_fast_vision_attention(model)
    trained = probe.probe(model, level=0.75, pages=3)
    torch.manual_seed(0)
    model = DemoTrainer(run_config(CHECKPOINT), torch.from_numpy(np.load(CHECKPOINT / "used_ids.npy")))
    use_fast_vision_attention(model)
    untrained = probe.probe(model, level=0.75, pages=3)
    for r in (trained, untrained):
        assert all(0.0 <= v <= 1.0 for v in (r.patch, r.slot, r.guide, r.next_char)), r
        assert np.isfinite(r.loss)
    # 95 character classes: an untrained head is near chance; the committed state's ViT reads
    # mid-size type (0.97 measured at this level)
    assert untrained.patch < 0.2 and trained.patch > 0.8, (trained, untrained)
    assert trained.next_char > untrained.next_char + 0.3


def test_checkpoints_older_than_the_row_heads_still_load_and_nothing_else_is_let_through():
    import torch

    from train.config import run_config
    from train.model import DemoTrainer

    used = torch.from_numpy(np.load(CHECKPOINT / "used_ids.npy"))
    torch.manual_seed(1)
    source = DemoTrainer(run_config(CHECKPOINT), used)
    old = {k: v for k, v in source.state_dict().items() if not k.startswith(DemoTrainer.LATER_HEADS)}
    model = DemoTrainer(run_config(CHECKPOINT), used)
    assert sorted(model.load_weights(old)) == sorted(k for k in source.state_dict() if k.startswith(DemoTrainer.LATER_HEADS))
    assert torch.equal(model.embed, source.embed)
    with pytest.raises(ValueError, match="does not fit"):
        model.load_weights({k: v for k, v in old.items() if k != "embed"})
    with pytest.raises(ValueError, match="does not fit"):
        model.load_weights(dict(old, stray_head=torch.zeros(1)))


def _guide_gradient_by_head(model, pages, full_to_used):
    """The guide loss's gradient on the last layer's query projection, as one norm per head."""
    from train.train import collate

    batch = collate(pages, full_to_used, int(model.used_ids[0]))
    model.train()
    model.zero_grad()
    _, _, guide = model(**batch)
    guide.backward()
    attn = model.box_guided_attention
    grad = attn.q_proj.weight.grad
    if grad is None:
        return [0.0] * model.cfg.text.num_heads
    return [float(g.norm()) for g in grad.view(model.cfg.text.num_heads, -1, grad.shape[-1])]


def test_box_pages_guide_one_head_of_the_last_layer_and_plain_pages_do_not():
    # the look that picks the boxed line needs two layers below it to read the prompt's digits,
    # so on box pages (and only there) one head of the last layer is guided to the boxed line
    import torch

    from gotocr_fast import tokens
    from train import data
    from train.config import demo_model
    from train.model import BOX_GUIDE_HEAD, GUIDE_LAYER, DemoTrainer, use_guided_attention

    use_guided_attention()
    used = np.load(CHECKPOINT / "used_ids.npy")
    full_to_used = np.full(tokens.VOCAB_SIZE, -1, dtype=np.int64)
    full_to_used[used] = np.arange(len(used))
    torch.manual_seed(0)
    model = DemoTrainer(demo_model(384), torch.from_numpy(used))
    assert model.box_guide_layer == model.cfg.text.num_layers - 1 != GUIDE_LAYER
    pages = data.make_batch(3, 11, 12, 8000, 8000, 384, 6, 36, full_to_used, 24, box_fraction=0.5)
    boxed = [p for p in pages if p.page.box is not None]
    plain = [p for p in pages if p.page.box is None]
    assert boxed and plain
    assert max(_guide_gradient_by_head(model, plain, full_to_used)) == 0.0
    with_box = _guide_gradient_by_head(model, boxed, full_to_used)
    assert with_box[BOX_GUIDE_HEAD] > 0.0
    assert all(g == 0.0 for h, g in enumerate(with_box) if h != BOX_GUIDE_HEAD), with_box
