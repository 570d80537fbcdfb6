"""Where a demo-model state loses the text: per curriculum level, how much of it each stage holds.

``python -m train.probe STATE [--levels 0,0.5,0.75,1] [--pages 12]`` (STATE: a run folder with
``checkpoint.pt`` or a compact state) renders training-distribution pages at each curriculum level
(seeds no training page uses) and prints, under teacher forcing:

- ``patch``: accuracy of the patch head (the characters under each ViT patch): what the ViT sees;
- ``slot``: accuracy of the token-slot head (the characters of each image token's cell, in order):
  what survives the neck and the projector's 4 x 4 merge into one image token;
- ``guide``: how often the guided attention head's strongest key is the image token where the
  character being predicted is printed: whether the language model looks in the right place;
- ``next``: next-character accuracy of the answer: what the language model makes of it;
- ``guide1``, ``first``: the guide and next-character accuracy of the answer's first token alone,
  where the language model has to find where to start reading (in box mode: which line);
- ``bguide``, ``bguide1`` (box pages): the same for the last layer's box-guided head, over the
  boxed line's characters and at its first;
- ``krow``, ``brow``: accuracy of the row heads at the box-guided layer's input: each image token's
  row of the token grid, and (box pages) the boxed line's row at the last prompt position.

``--box`` probes box-mode pages only (every page of two or more lines asks for one boxed line).

A stage that is much worse than the one before it is where the text is lost. The auxiliary
heads are linear read-outs, so ``slot`` is a lower bound on what a token carries.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import data
from .export import load_state
from .model import BOX_GUIDE_HEAD, GUIDE_HEAD, DemoTrainer, use_fast_vision_attention, use_guided_attention
from .train import collate

PROBE_SEED_TAG = 0x70726F62
"""Seed sequences of probe pages: (tag, level in hundredths, page) — never a training page's."""


@dataclass(frozen=True)
class Probe:
    level: float
    patch: float
    slot: float
    guide: float
    next_char: float
    loss: float
    first_guide: float
    first_char: float
    box_guide: float
    box_first_guide: float
    key_row: float
    box_row: float


def _head_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    chars = targets > 0
    return float((logits.argmax(-1)[chars] == targets[chars]).float().mean()) if chars.any() else float("nan")


@torch.no_grad()
def probe(model: DemoTrainer, level: float, pages: int = 12, box: bool = False) -> Probe:
    cfg = model.cfg
    full_to_used = model.full_to_used.numpy()
    steps = 10_000
    task = data.task_level(int(round(level * steps)), steps, box_fraction=1.0 if box else data.BOX_FRACTION)
    grid = cfg.token_grid
    examples = [data.make_example(np.random.default_rng([PROBE_SEED_TAG, int(round(level * 100)), i]), task,
                                  cfg.vision.image_size, grid, cfg.tokens_per_view, full_to_used, cfg.vision.grid)
                for i in range(pages)]
    batch = collate(examples, full_to_used, int(model.used_ids[0]))
    # each example's labels follow the previous example's: its first label is at this offset
    first = torch.tensor(np.cumsum([0] + [len(e.answer_ids) for e in examples[:-1]]))
    model.train()  # the guided head records its attention in training mode only; nothing is updated
    try:
        vit, feats = model.vision(batch["pixels"])
        n_classes = len(data.CHARSET) + 1
        patch = model.patch_aux_head(vit).view(vit.shape[0], -1, data.PATCH_AUX_SLOTS, n_classes)
        slot = model.token_slot_head(feats).view(feats.shape[0], -1, data.TOKEN_SLOTS, n_classes)
        loss, _, _ = model(**batch)
        keys = batch["guide_keys"]
        boxed = batch["box_rows"][batch["label_positions"][:, 0]] >= 0
        guide, first_guide = _look_accuracy(model.guided_attention.guide_log_probs[GUIDE_HEAD], batch, first,
                                            keys >= 0)
        box_guide, box_first_guide = _look_accuracy(model.box_guided_attention.guide_log_probs[BOX_GUIDE_HEAD],
                                                    batch, first, (keys >= 0) & boxed)
        out = model.lm(model.embed_prompt(batch["input_ids"], feats), attention_mask=batch["attention_mask"],
                       hidden_states=True)
        hidden = out.last_hidden_state
        key_row, box_row = _row_accuracy(model, out.hidden_states[model.box_guide_layer], batch)
        h = hidden[batch["label_positions"][:, 0], batch["label_positions"][:, 1]]
        hit = model.logits(h).argmax(-1) == batch["labels"]
        next_char = float(hit.float().mean())
        first_char = float(hit[first].float().mean())
    finally:
        model.eval()
    return Probe(level, _head_accuracy(patch, batch["patch_aux_targets"]),
                 _head_accuracy(slot, batch["token_slot_targets"]), guide, next_char, float(loss), first_guide,
                 first_char, box_guide, box_first_guide, key_row, box_row)


def _look_accuracy(log_probs: torch.Tensor, batch: dict, first: torch.Tensor, which: torch.Tensor
                   ) -> tuple[float, float]:
    """(over the labels ``which`` selects, at the first label of each page among them) how often a
    guided head's strongest key is the image token where the predicted character is printed."""
    pos = batch["label_positions"]
    hit = log_probs[pos[:, 0], pos[:, 1]].argmax(-1) == batch["guide_keys"]
    first_only = torch.zeros_like(which)
    first_only[first] = True
    return _mean(hit[which]), _mean(hit[which & first_only])


def _mean(hits: torch.Tensor) -> float:
    return float(hits.float().mean()) if hits.numel() else float("nan")


def _row_accuracy(model: DemoTrainer, guide_input: torch.Tensor, batch: dict) -> tuple[float, float]:
    """(image tokens naming their row, box pages naming their boxed row) by the row heads."""
    keys, boxes = model.row_read_outs(guide_input, batch["image_mask"], batch["box_rows"], batch["prompt_ends"])
    return tuple(float("nan") if r is None else _mean(r[0].argmax(-1) == r[1]) for r in (keys, boxes))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("state", type=Path, help="run folder (checkpoint.pt) or compact state")
    p.add_argument("--levels", default="0,0.25,0.5,0.75,1", help="curriculum levels, 0 (huge type) to 1 (the task)")
    p.add_argument("--pages", type=int, default=12)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--box", action="store_true", help="box-mode pages only (levels from 0.25, where pages have 2 lines)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    use_guided_attention()
    model = load_state(args.state)
    use_fast_vision_attention(model)
    print(f"{args.state}: view {model.cfg.vision.image_size} px, {args.pages} {'box-mode ' if args.box else ''}"
          "pages a level")
    print("level  patch  slot   guide  next   loss   guide1 first  bguide bguide1 krow   brow")
    for level in (float(x) for x in args.levels.split(",")):
        r = probe(model, level, args.pages, args.box)
        print(f"{r.level:5.2f}  {r.patch:.3f}  {r.slot:.3f}  {r.guide:.3f}  {r.next_char:.3f}  {r.loss:.3f}  "
              f"{r.first_guide:.3f}  {r.first_char:.3f}  {r.box_guide:.3f}  {r.box_first_guide:.3f}   "
              f"{r.key_row:.3f}  {r.box_row:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
