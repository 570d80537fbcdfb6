"""A compact, resumable training state that fits in git: trainable weights in float16, no optimiser.

``checkpoint.pt`` (written every ``checkpoint_every`` steps) holds float32 weights and AdamW's
two moments, about 80 MB for the demo model; this format holds what a later session needs to
train on (``python -m train.train --out RUN --from-compact DIR``): the weights of every trained
tensor (auxiliary heads included; the frozen full embedding is not stored, only its used rows),
the used-token ids, the step, and the log so far. AdamW's moments restart from zero, which costs a
few dozen steps of re-warming, not the run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .config import CONFIG, demo_model, run_config, save_run_config

WEIGHTS = "weights.safetensors"
STATE = "state.json"


RECIPE_FIELDS = ("steps", "batch_size", "lr", "seed", "curriculum_steps", "curriculum_start", "box_fraction",
                 "box_drills", "box_guide", "freeze_vit")
"""What a compact state records of the recipe it was trained under, so that a run started from it
continues the same schedule and curriculum unless told otherwise."""


def save_compact(model, step: int, run_dir: Path, out_dir: Path, recipe: dict | None = None) -> Path:
    """``recipe``: the run's ``TrainConfig`` fields; its ``RECIPE_FIELDS`` are recorded in
    ``state.json``."""
    import torch
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().to(torch.float16).cpu().contiguous()
               for name, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, str(out_dir / WEIGHTS))
    np.save(out_dir / "used_ids.npy", model.used_ids.cpu().numpy())
    state: dict = {"step": step}
    if recipe:
        state["recipe"] = {k: recipe[k] for k in RECIPE_FIELDS if k in recipe}
    (out_dir / STATE).write_text(json.dumps(state, indent=2) + "\n")
    for name in ("log.csv", CONFIG):
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, out_dir / name)
    return out_dir


def load_compact(model, src: Path) -> int:
    """Load the weights into ``model`` (float32); returns the step they were saved at.

    Tensors of parts the model no longer has (an auxiliary head replaced since) are skipped and
    parts the state lacks keep their initialisation; both are printed. The network itself (vision
    tower, projector, language model) must be complete. A state of another view size has its
    position tables resized to the model's and its token-row heads restarted
    (:mod:`train.view_resize`).
    """
    import torch
    from safetensors.numpy import load_file

    from .view_resize import resize_for_view

    params = dict(model.named_parameters())
    resized = []
    tensors = {}
    for name, value in load_file(str(src / WEIGHTS)).items():
        if name in params and tuple(value.shape) != tuple(params[name].shape):
            value = resize_for_view(name, value, tuple(params[name].shape))
            if value is None:  # a head of the old view's token grid: starts anew (listed as new below)
                continue
            resized.append(name)
        tensors[name] = torch.tensor(value)  # a copy: the loaded arrays are read-only
    if resized:
        print(f"compact state: {len(resized)} position tables resized to the model's view", flush=True)
    if "embed" in tensors and (src / "used_ids.npy").exists():
        tensors["embed"] = _embedding_rows_for(model, np.load(src / "used_ids.npy"), tensors["embed"])
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if any(n.startswith("hf.") for n in missing):
        raise ValueError(f"{src}: no weights for {[n for n in missing if n.startswith('hf.')][:5]}")
    skipped = [n for n in tensors if n not in params]
    if missing or skipped:
        print(f"compact state: new {missing}, dropped {sorted({n.rsplit('.', 1)[0] for n in skipped})}", flush=True)
    with torch.no_grad():
        for name, t in tensors.items():
            if name in params:
                params[name].copy_(t.float())
    return state_step(src)


def state_step(src: Path) -> int:
    """The step a compact state was saved at."""
    return int(json.loads((src / STATE).read_text())["step"])


def _embedding_rows_for(model, saved_ids: np.ndarray, saved):
    """The saved embedding rows rearranged for the model's used ids: a row is matched by token
    id, so a state trained with another used vocabulary (the BPE answers before the
    character-level ones) keeps every row the two share; the model's other rows keep their
    initialisation."""
    ids = model.used_ids.cpu().numpy()
    if np.array_equal(ids, saved_ids):
        return saved
    out = model.embed.detach().to(saved.dtype).clone()
    where = {int(t): i for i, t in enumerate(saved_ids)}
    shared = [(j, where[int(t)]) for j, t in enumerate(ids) if int(t) in where]
    if shared:
        rows, src_rows = zip(*shared)
        out[list(rows)] = saved[list(src_rows)]
    print(f"compact state: {len(shared)} of {len(ids)} embedding rows matched by token id", flush=True)
    return out


def recorded_recipe(src: Path) -> dict:
    """The recipe a compact state records, and the warm-up restarting at its step: a run started
    from any compact state has fresh optimiser moments, so a state that records no recipe still
    gets ``warmup_start``. States written before the recipe was recorded carry the schedule's end
    alone, as ``schedule_steps``."""
    state = json.loads((src / STATE).read_text())
    recipe = dict(state.get("recipe", {}))
    if "steps" not in recipe and "schedule_steps" in state:
        recipe["steps"] = state["schedule_steps"]
    recipe["warmup_start"] = int(state["step"])
    return recipe


def seed_run_dir(src: Path, run_dir: Path, image_size: int | None = None) -> None:
    """Start a run folder from a compact state: its model sizes and log (the used ids are the
    recipe's own: the state's rows are matched to them by token id when loaded). With
    ``image_size`` the run trains that view instead of the state's (its position tables are
    resized when the weights are loaded)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if image_size is not None and not (run_dir / CONFIG).exists():
        if run_config(src).vision.image_size != image_size:
            save_run_config(run_dir, demo_model(image_size))
    for name in ("log.csv", CONFIG):
        if (src / name).exists() and not (run_dir / name).exists():
            shutil.copyfile(src / name, run_dir / name)


def main(argv: list[str] | None = None) -> int:
    import argparse

    import torch

    from .model import DemoTrainer

    p = argparse.ArgumentParser(prog="python -m train.compact",
                                description="Write the compact training state of RUN_DIR/checkpoint.pt into OUT_DIR.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    args = p.parse_args(argv)
    used = torch.from_numpy(np.load(args.run_dir / "used_ids.npy"))
    model = DemoTrainer(run_config(args.run_dir), used)
    state = torch.load(args.run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    model.load_weights(state["model"])
    out = save_compact(model, state["step"], args.run_dir, args.out_dir, recipe=state.get("train_config"))
    print(f"{out}: step {state['step']}, {(out / WEIGHTS).stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
