"""Where a training step's gradients go: box mode's last-layer guided head and the box drills that
teach the boxed-row read-out from the prompt's coordinate digits, and a run with a frozen ViT.

Needs torch and transformers (the ``train`` extra); skipped without them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

CHECKPOINT = Path(__file__).resolve().parents[1] / "train" / "checkpoint"


def _full_to_used():
    from gotocr_fast import tokens

    used = np.load(CHECKPOINT / "used_ids.npy")
    full_to_used = np.full(tokens.VOCAB_SIZE, -1, dtype=np.int64)
    full_to_used[used] = np.arange(len(used))
    return used, full_to_used


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

    from train import data
    from train.config import demo_model
    from train.model import BOX_GUIDE_HEAD, GUIDE_LAYER, DemoTrainer, use_guided_attention

    use_guided_attention()
    used, full_to_used = _full_to_used()
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



def test_box_drills_are_box_prompts_with_the_row_of_their_boxs_centre():
    from gotocr_fast.prompt import OcrMode, build_prompt, build_query
    from train import data

    _, full_to_used = _full_to_used()
    drills = data.box_drills(0, 5, 64, 12, 144)
    assert drills == data.box_drills(0, 5, 64, 12, 144) != data.box_drills(0, 6, 64, 12, 144)
    rows = set()
    for d in drills:
        text = data.decode(d.prompt_ids)
        coords = [int(c) for c in text[text.index("[") + 1:text.index("]")].split(",")]
        x1, y1, x2, y2 = coords
        assert 0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1000
        assert 45 <= y2 - y1 + 1 and y2 - y1 <= 136
        assert d.row == int((y1 + y2) / 2 / 1000 * 12)
        # the prompt a rendered box page with that box gets, token for token, within the used rows
        query = build_query(OcrMode(boxes=((x1, y1, x2, y2),)), image_size=(1000, 1000))
        assert data.decode(data.encode(build_prompt(query, 144))) == text
        assert all(full_to_used[t] >= 0 for t in d.prompt_ids)
        rows.add(d.row)
    assert len(rows) >= 10  # they cover the grid


def test_box_drills_train_the_row_read_out_through_the_language_model_only():
    import torch

    from train import data
    from train.config import demo_model
    from train.model import DemoTrainer, use_guided_attention
    from train.train import collate, collate_drills

    use_guided_attention()
    used, full_to_used = _full_to_used()
    torch.manual_seed(0)
    model = DemoTrainer(demo_model(384), torch.from_numpy(used))
    torch.nn.init.normal_(model.box_row_head.weight, std=0.02)  # zero-initialised: no gradient below it yet
    pages = data.make_batch(3, 11, 2, 8000, 8000, 384, 6, 36, full_to_used, 24, box_fraction=0.0)
    batch = collate(pages, full_to_used, int(used[0]))
    model.train()

    def aux_gradients(**drills):
        model.zero_grad()
        _, aux, _ = model(**batch, **drills)
        aux.backward()
        return float(aux), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    without, plain = aux_gradients()
    drills = collate_drills(data.box_drills(0, 1, 5, 6, 36), full_to_used, int(used[0]))
    with_drills, drilled = aux_gradients(**drills)
    assert with_drills > without
    # (the vision tower's relative-position gradients are summed in a thread-dependent order:
    # equal to rounding, not bit for bit)
    changed = {n for n in drilled if n not in plain or not torch.allclose(drilled[n], plain[n], rtol=1e-4, atol=1e-9)}
    assert "box_row_head.weight" in changed
    assert "hf.model.language_model.layers.0.self_attn.q_proj.weight" in changed
    # the image tokens are given, not trained, by the drills
    assert not [n for n in changed if ".vision_tower." in n or ".multi_modal_projector." in n], changed


def test_a_frozen_vit_trains_everything_after_it_and_nothing_of_it():
    # --freeze-vit: the ViT runs without a gradient (half a step's arithmetic); the neck, the
    # projector, the language model and the heads still learn from every loss
    import torch

    from train import data
    from train.config import demo_model
    from train.model import DemoTrainer, use_guided_attention
    from train.train import collate

    use_guided_attention()
    used, full_to_used = _full_to_used()
    torch.manual_seed(0)
    model = DemoTrainer(demo_model(384), torch.from_numpy(used))
    pages = data.make_batch(3, 11, 2, 8000, 8000, 384, 6, 36, full_to_used, 24, box_fraction=0.0)
    batch = collate(pages, full_to_used, int(used[0]))
    model.train()

    def trained(frozen: bool) -> set[str]:
        model.vit_frozen = frozen
        model.zero_grad(set_to_none=True)
        loss, aux, guide = model(**batch)
        (loss + aux + guide).backward()
        return {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.any())}

    vit = {n for n, _ in model.named_parameters()
           if ".vision_tower." in n and ".neck." not in n}
    assert vit and vit <= trained(False)
    frozen = trained(True)
    assert not frozen & vit
    for part in (".vision_tower.neck.", ".multi_modal_projector.", ".language_model.", "token_slot_head.", "embed"):
        assert any(part in n or n.startswith(part) for n in frozen), part


def test_without_box_lessons_box_pages_train_like_plain_pages():
    # --no-box-guide: no look of the last layer is guided, the row heads learn nothing and the
    # drills add nothing, so a box page trains only the answer, the auxiliary heads and the
    # second layer's guided head
    import torch

    from train import data
    from train.config import demo_model
    from train.model import DemoTrainer, use_guided_attention
    from train.train import collate, collate_drills

    use_guided_attention()
    used, full_to_used = _full_to_used()
    torch.manual_seed(0)
    model = DemoTrainer(demo_model(384), torch.from_numpy(used))
    torch.nn.init.normal_(model.box_row_head.weight, std=0.02)
    torch.nn.init.normal_(model.key_row_head.weight, std=0.02)
    pages = data.make_batch(3, 11, 12, 8000, 8000, 384, 6, 36, full_to_used, 24, box_fraction=0.5)
    boxed = [p for p in pages if p.page.box is not None]
    assert boxed
    assert max(_guide_gradient_by_head(model, boxed, full_to_used)) > 0.0  # the lessons' default
    model.box_guided = False
    assert max(_guide_gradient_by_head(model, boxed, full_to_used)) == 0.0

    batch = collate(boxed, full_to_used, int(used[0]))
    drills = collate_drills(data.box_drills(0, 1, 5, 6, 36), full_to_used, int(used[0]))
    model.zero_grad(set_to_none=True)
    loss, aux, guide = model(**batch, **drills)
    (loss + aux + guide).backward()
    assert model.box_row_head.weight.grad is None and model.key_row_head.weight.grad is None
    model.zero_grad(set_to_none=True)
    _, aux_without_drills, _ = model(**batch)
    assert torch.allclose(aux, aux_without_drills, rtol=1e-6)
    assert guide > 0.0  # the second layer's guided head still learns on box pages
