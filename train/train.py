"""Train the demo GOT model: ``python -m train.train --out runs/demo`` (needs the ``train`` extra).

Deterministic for a seed (pages come from per-step seeds, the model from ``torch.manual_seed``),
resumable (``--out`` holds ``checkpoint.pt``, rewritten atomically every ``checkpoint_every`` steps;
a rerun with the same ``--out`` continues from it), and logs every step's losses and each
validation's character error rate to ``--out/log.csv``. ``--export DIR`` writes the compact demo
model (see :mod:`train.export`) from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from gotocr_fast import reading, tokens

from . import compact, data
from .config import (CONFIG, DEFAULT_VIEW, VIEW_SIZES, TrainConfig, demo_model, pinned_curriculum, run_config,
                     save_run_config)
from .model import DemoTrainer, cpu_has_native_bf16, use_fast_vision_attention, use_guided_attention

LOG_FIELDS = ("step", "elapsed_s", "loss", "aux_loss", "guide_loss", "lr", "val_cer", "val_exact")


def _right_padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [N, longest], attention mask): the sequences left-aligned, ``pad_id`` after them."""
    ids = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def collate(examples: list[data.Example], full_to_used: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors of one batch (CPU); ``pad_id`` fills the right padding (any used token)."""
    ids, attn = _right_padded([e.prompt_ids + e.answer_ids[:-1] for e in examples], pad_id)
    label_pos, labels, guide = [], [], []
    box_rows, prompt_ends = [], []
    for i, e in enumerate(examples):
        start = len(e.prompt_ids) - 1  # the last prompt position predicts the first answer token
        first_image = e.prompt_ids.index(tokens.IMG_PAD_ID)
        grid = math.isqrt(e.prompt_ids.count(tokens.IMG_PAD_ID))  # image tokens a side
        boxed = e.page.box is not None and len(e.cells) > 0 and e.cells[0] >= 0
        box_rows.append(int(e.cells[0]) // grid if boxed else -1)
        prompt_ends.append(start)
        for k, (tok, cell) in enumerate(zip(e.answer_ids, e.cells)):
            label_pos.append((i, start + k))
            labels.append(int(full_to_used[tok]))
            guide.append(first_image + int(cell) if cell >= 0 else -1)
    pixels = torch.from_numpy(np.stack([e.pixels for e in examples]))
    bag = torch.from_numpy(np.stack([e.bag for e in examples]))
    patch_aux = torch.from_numpy(np.stack([e.patch_aux for e in examples]))
    token_slots = torch.from_numpy(np.stack([e.token_slots for e in examples]))
    return dict(pixels=pixels, input_ids=ids, attention_mask=attn, image_mask=ids == tokens.IMG_PAD_ID,
                label_positions=torch.tensor(label_pos), labels=torch.tensor(labels), bag_targets=bag,
                patch_aux_targets=patch_aux, token_slot_targets=token_slots, guide_keys=torch.tensor(guide),
                box_rows=torch.tensor(box_rows), prompt_ends=torch.tensor(prompt_ends))


def collate_drills(drills: list[data.BoxDrill], full_to_used: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """The box drills' tensors: right-padded prompts, their last positions and boxed rows."""
    ids, mask = _right_padded([d.prompt_ids for d in drills], pad_id)
    return dict(drill_ids=ids, drill_mask=mask, drill_ends=torch.tensor([len(d.prompt_ids) - 1 for d in drills]),
                drill_rows=torch.tensor([d.row for d in drills]))


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is the collated batch of that step: pages depend on (seed, step) only, so
    any number of loader workers gives the same run."""

    def __init__(self, tc: TrainConfig, cfg, full_to_used: np.ndarray, pad_id: int):
        self.tc, self.cfg, self.full_to_used, self.pad_id = tc, cfg, full_to_used, pad_id

    def __len__(self) -> int:
        return self.tc.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        tc, cfg = self.tc, self.cfg
        grid = cfg.token_grid
        pages = data.make_batch(tc.seed, step, tc.batch_size, step - tc.curriculum_start, tc.curriculum_steps,
                                cfg.vision.image_size, grid,
                                cfg.tokens_per_view, self.full_to_used, cfg.vision.grid, tc.box_fraction)
        batch = collate(pages, self.full_to_used, self.pad_id)
        if tc.box_guide and tc.box_drills:
            drills = data.box_drills(tc.seed, step, tc.box_drills, grid, cfg.tokens_per_view)
            batch.update(collate_drills(drills, self.full_to_used, self.pad_id))
        return batch


def batches(source: StepBatches, start: int, end: int, workers: int):
    """Batches of steps ``start``..``end - 1`` in order.

    Without workers the next batch is drawn on a thread while this step computes (rendering
    releases the GIL for most of its time); with workers, by a process pool (an accelerator
    outruns one CPU core's page rendering many times over).
    """
    if workers > 0:
        loader = torch.utils.data.DataLoader(source, batch_size=None, sampler=range(start, end),
                                             num_workers=workers, prefetch_factor=4, pin_memory=torch.cuda.is_available())
        yield from loader
        return
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        upcoming = prefetch.submit(source.__getitem__, start) if start < end else None
        for at in range(start, end):
            batch = upcoming.result()
            if at + 1 < end:
                upcoming = prefetch.submit(source.__getitem__, at + 1)
            yield batch


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps`` from ``warmup_start``, then cosine decay to ``steps``.

    A run started from a compact state (its optimiser moments start at zero) or under a changed
    recipe sets ``warmup_start`` to its first step: it warms up again and its cosine spans its own
    steps, not the ones before it."""
    into = step - tc.warmup_start
    if 0 <= into < tc.warmup_steps:
        return tc.lr * (into + 1) / tc.warmup_steps
    decay_from = tc.warmup_start + tc.warmup_steps
    p = min(1.0, max(0, step - decay_from) / max(1, tc.steps - decay_from))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def validation_pages(count: int) -> list[reading.Page]:
    """Fixed validation pages: full-task pages from seeds outside training and the held-out set."""
    pages = []
    for i in range(count):
        rng = np.random.default_rng([data.TRAIN_SEED_TAG, 0xFA11, i])
        pages.append(reading.render_page(rng, min_lines=1, max_lines=4, box_mode=(i % 4 == 3)))
    return pages


def character_error_rate(pairs: list[tuple[str, str]]) -> float:
    from rapidfuzz.distance import Levenshtein

    errors = sum(Levenshtein.distance(truth, got) for truth, got in pairs)
    return errors / max(1, sum(len(truth) for truth, _ in pairs))


@torch.no_grad()
def evaluate(model: DemoTrainer, pages: list[reading.Page]) -> tuple[float, float, list[tuple[str, str]]]:
    from gotocr_fast.prompt import OcrMode, build_prompt, build_query

    model.eval()
    cfg = model.cfg
    pairs = []
    for page in pages:
        mode = OcrMode(boxes=(page.box,)) if page.box is not None else OcrMode()
        prompt = data.encode(build_prompt(build_query(mode, image_size=page.image.size), cfg.tokens_per_view))
        px = torch.from_numpy(data.pixel_values(page.image, cfg.vision.image_size)).to(model.used_ids.device)
        with torch.autocast(model.used_ids.device.type, dtype=torch.bfloat16, enabled=model.bf16):
            got = data.decode(model.greedy(px, prompt, max_new=len(data.char_token_ids(page.truth)) + 16))
        pairs.append((page.truth, got))
    model.train()
    exact = sum(t == g for t, g in pairs) / max(1, len(pairs))
    return character_error_rate(pairs), exact, pairs


def save_checkpoint(path: Path, model: DemoTrainer, opt: torch.optim.Optimizer, step: int, tc: TrainConfig) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "train_config": dataclasses.asdict(tc)}, tmp)
    os.replace(tmp, path)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows after ``step``: a resumed run redoes them from the checkpoint."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--curriculum-steps", type=int, default=None)
    p.add_argument("--curriculum-start", type=int, default=None,
                   help="step at which the curriculum starts from its easiest pages")
    p.add_argument("--level", type=float, default=None,
                   help="hold the curriculum at this level for the run (0: one short line in huge type, "
                        "1: the full task; a fifth of the pages review easier levels); sets "
                        "--curriculum-start and --curriculum-steps")
    p.add_argument("--box-fraction", type=float, default=None,
                   help=f"share of the multi-line pages that ask for one boxed line (default {TrainConfig.box_fraction})")
    p.add_argument("--box-drills", type=int, default=None,
                   help="box prompts a step, without a page, for the read-out of the boxed row from the prompt's "
                        f"digits (default {TrainConfig.box_drills}; 0: none)")
    p.add_argument("--box-guide", action=argparse.BooleanOptionalAction, default=None,
                   help="box mode's own lessons: the last layer's box-guided head, the row heads and the box "
                        f"drills (default {TrainConfig.box_guide}; recorded in the compact state's recipe)")
    p.add_argument("--freeze-vit", action=argparse.BooleanOptionalAction, default=None,
                   help="run the ViT without a gradient, training the neck, projector and language model "
                        f"(default {TrainConfig.freeze_vit}; recorded in the compact state's recipe)")
    p.add_argument("--warmup-start", type=int, default=None,
                   help="step at which the learning-rate warm-up starts")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (pays off on wide models only)")
    p.add_argument("--bf16-attention", choices=("auto", "on", "off"), default="auto",
                   help="the vision attention's fused kernel in bf16, everything else f32: twice as fast an "
                        "attention on a CPU with AMX, a 10 %% faster step with AVX512_BF16, slower without "
                        "native bf16; auto: on where the CPU has AMX-BF16 or AVX512_BF16; --bf16 implies it")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many steps of this run")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--workers", type=int, default=0, help="page-rendering processes (0: one thread)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="stop (with a checkpoint) when this many seconds of this run have passed")
    p.add_argument("--fit-steps", action="store_true",
                   help="with --deadline-s: after 150 steps, set --steps to what the deadline allows at the "
                        "measured rate, so the schedule ends with the run (the value is printed and logged)")
    p.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    p.add_argument("--eval-every", type=int, default=TrainConfig.eval_every)
    p.add_argument("--compact-out", type=Path, default=None,
                   help="also write the compact state (train.compact) here at every checkpoint")
    p.add_argument("--image-size", type=int, default=None, choices=VIEW_SIZES,
                   help=f"view size of a new run (default {DEFAULT_VIEW}, or the --from-compact state's); a state of "
                        "another view starts it with its position tables resized; a run keeps its own")
    p.add_argument("--from-compact", type=Path, default=None,
                   help="start from a compact training state (train.compact) when --out has no checkpoint yet")
    return p


def plan_run(args: argparse.Namespace, resumed: dict | None) -> tuple[TrainConfig, int]:
    """This run's config and the step it starts at. Recipe flags not given keep what the run (its
    checkpoint ``resumed``) or the compact state recorded, else ``TrainConfig``'s defaults.
    Refuses (SystemExit) a run that would train nothing."""
    if resumed is not None:
        recorded = resumed.get("train_config", {})
    elif args.from_compact is not None:
        recorded = compact.recorded_recipe(args.from_compact)
    else:
        recorded = {}
    recipe = {f: getattr(args, f) if getattr(args, f) is not None else recorded.get(f, getattr(TrainConfig, f))
              for f in (*compact.RECIPE_FIELDS, "warmup_start")}
    start = (resumed["step"] if resumed is not None
             else compact.state_step(args.from_compact) if args.from_compact is not None else 0)
    if args.fit_steps and args.deadline_s and args.steps is None:
        recipe["steps"] = start + 10**6  # provisional: --fit-steps sets the end after 150 steps
    if args.level is not None:
        if args.curriculum_start is not None or args.curriculum_steps is not None:
            raise SystemExit("--level sets the curriculum: give it or --curriculum-start/--curriculum-steps, not both")
        try:
            recipe["curriculum_start"], recipe["curriculum_steps"] = pinned_curriculum(args.level, start)
        except ValueError as e:
            raise SystemExit(f"--level: {e}") from None
    if recipe["box_drills"] < 0:
        raise SystemExit(f"--box-drills must be >= 0, got {recipe['box_drills']}")
    if not 0.0 <= recipe["box_fraction"] <= 1.0:
        raise SystemExit(f"--box-fraction must be between 0 and 1, got {recipe['box_fraction']}")
    tc = dataclasses.replace(TrainConfig(), **recipe, bf16=args.bf16, checkpoint_every=args.checkpoint_every,
                             eval_every=args.eval_every)
    if start >= tc.steps:
        # A state records the end of the schedule it was trained under; without --steps a run
        # started from a finished state would do nothing, silently.
        raise SystemExit(f"nothing to train: the state is at step {start} and its schedule ends at step "
                         f"{tc.steps}; pass --steps N with N > {start} (the step to train to)")
    return tc, start


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ckpt_path = args.out / "checkpoint.pt"
    resumed = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path.exists() else None
    tc, _ = plan_run(args, resumed)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_compact is not None and not ckpt_path.exists():
        compact.seed_run_dir(args.from_compact, args.out, image_size=args.image_size)
    used_path = args.out / "used_ids.npy"
    if used_path.exists():
        used = np.load(used_path)
    else:
        used = data.used_token_ids()
        np.save(used_path, used)
    print(f"used vocabulary: {len(used)} tokens", flush=True)

    if (args.out / CONFIG).exists() or ckpt_path.exists():
        cfg = run_config(args.out)  # a run keeps its sizes; a compact state's came with it
    else:
        cfg = demo_model(args.image_size or DEFAULT_VIEW)
        save_run_config(args.out, cfg)
    if args.image_size and args.image_size != cfg.vision.image_size:
        raise SystemExit(f"{args.out} trains a {cfg.vision.image_size}-pixel view; --image-size {args.image_size} "
                         "needs a new --out")
    print(f"view {cfg.vision.image_size} px, {cfg.tokens_per_view} image tokens", flush=True)
    bf16_attention = tc.bf16 or args.bf16_attention == "on" or (
        args.bf16_attention == "auto" and args.device == "cpu" and cpu_has_native_bf16())
    print(f"vision attention kernel: {'bf16' if bf16_attention else 'f32'}", flush=True)
    use_guided_attention()
    torch.manual_seed(tc.seed)
    model = DemoTrainer(cfg, torch.from_numpy(used))
    use_fast_vision_attention(model, bf16_kernel=bf16_attention)
    model.bf16 = tc.bf16
    model.vit_frozen = tc.freeze_vit
    model.box_guided = tc.box_guide
    print(f"ViT: {'frozen' if tc.freeze_vit else 'trained'}; box-mode lessons: {'on' if tc.box_guide else 'off'}",
          flush=True)
    params = [q for q in model.parameters() if q.requires_grad]
    decay = [q for q in params if q.dim() >= 2]
    no_decay = [q for q in params if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.98))
    step = 0
    if resumed is not None:
        if model.load_weights(resumed["model"]):
            # the optimiser's state has no moments for the new heads: a new run from the compact
            # state (fresh moments, re-warmed) is the way on
            raise SystemExit(f"{ckpt_path} predates heads the recipe has now; continue with "
                             f"python -m train.compact {args.out} STATE, then a new --out with --from-compact STATE")
        opt.load_state_dict(resumed["optimizer"])
        step = resumed["step"]
        del resumed  # the optimiser holds its own copy of the moments now
        print(f"resumed at step {step}", flush=True)
    elif args.from_compact is not None:
        step = compact.load_compact(model, args.from_compact)
        print(f"started from the compact state of step {step} (optimiser moments reset)", flush=True)
    n_params = sum(q.numel() for q in params)
    print(f"trainable parameters: {n_params / 1e6:.2f} M", flush=True)

    log_path = args.out / "log.csv"
    if log_path.exists():
        _truncate_log(log_path, step)
    new_log = not log_path.exists()
    log = open(log_path, "a", newline="")
    writer = csv.DictWriter(log, fieldnames=LOG_FIELDS)
    if new_log:
        writer.writeheader()
    val_pages = validation_pages(TrainConfig.eval_pages)
    full_to_used = model.full_to_used.numpy()
    device = torch.device(args.device)
    model.to(device)
    # moments were loaded on the CPU: move them with the parameters
    for state_of in opt.state.values():
        for k, v in state_of.items():
            if torch.is_tensor(v) and k != "step":
                state_of[k] = v.to(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t0 = time.time()
    elapsed0 = 0.0
    if not new_log:
        try:
            rows = list(csv.DictReader(open(log_path)))
            elapsed0 = float(rows[-1]["elapsed_s"]) if rows else 0.0
        except (OSError, ValueError, KeyError):
            elapsed0 = 0.0
    model.train()
    end = tc.steps if args.stop_after is None else min(tc.steps, step + args.stop_after)
    source = StepBatches(tc, cfg, full_to_used, int(model.used_ids[0]))
    first_step = step
    fit_from = 0.0

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, model, opt, step, tc)
        if args.compact_out is not None:
            log.flush()
            compact.save_compact(model, step, args.out, args.compact_out, recipe=dataclasses.asdict(tc))

    for batch in batches(source, step, end, args.workers):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        lr = lr_at(step, tc)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
            loss, aux, guide = model(**batch)
        total = loss + tc.aux_weight * aux + tc.guide_weight * guide
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        step += 1
        ran = time.time() - t0
        if args.fit_steps and args.deadline_s and step - first_step == 50:
            fit_from = ran  # the first steps wait for the loader's workers to start
        if args.fit_steps and args.deadline_s and step - first_step == 150:
            rate = 100 / (ran - fit_from)
            tc = dataclasses.replace(tc, steps=max(step + 1, step + int((args.deadline_s - ran - 20) * rate)))
            source.tc = tc  # the loader's workers keep their copy: only the schedule uses steps
            print(f"--fit-steps: {rate:.1f} steps/s, schedule now ends at step {tc.steps}", flush=True)
        last = step == end or (args.deadline_s is not None and ran >= args.deadline_s) or step >= tc.steps
        row = {"step": step, "elapsed_s": f"{elapsed0 + ran:.1f}", "loss": f"{loss.item():.4f}",
               "aux_loss": f"{aux.item():.4f}", "guide_loss": f"{guide.item():.4f}", "lr": f"{lr:.2e}",
               "val_cer": "", "val_exact": ""}
        if step % tc.eval_every == 0 or last:
            cer, exact, pairs = evaluate(model, val_pages)
            row["val_cer"], row["val_exact"] = f"{cer:.4f}", f"{exact:.3f}"
            for truth, got in pairs[:3]:
                print(f"    truth {truth!r}\n    read  {got!r}", flush=True)
        writer.writerow(row)
        if step % tc.checkpoint_every == 0 or last:
            checkpoint()
        log.flush()
        if step % 10 == 0 or row["val_cer"]:
            print(" ".join(f"{k}={v}" for k, v in row.items() if v != ""), flush=True)
        if last:
            break
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
