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

