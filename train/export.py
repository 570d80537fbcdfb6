"""Write the compact demo model (the package's ``data/demo_model``) from a training checkpoint.

``python -m train.export STATE [BUNDLE_DIR]`` reads a run folder (its ``checkpoint.pt``) or a
compact state such as ``train/checkpoint`` and writes the format :mod:`gotocr_fast.demo_model`
reads: float16 tensors under transformers hub names, the embedding as its used rows only, and
``config.json``. ``--checkpoint DIR`` also writes the full
transformers-layout checkpoint (for transformers or ``gotocr convert``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from gotocr_fast import demo_model

from . import compact
from .config import run_config
from .model import DemoTrainer

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "src" / "gotocr_fast" / "data" / "demo_model"


def load_trainer(run_dir: Path) -> DemoTrainer:
    used = torch.from_numpy(np.load(run_dir / "used_ids.npy"))
    model = DemoTrainer(run_config(run_dir), used)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    model.load_weights(state["model"])
    model.eval()
    return model


def load_state(path: Path) -> DemoTrainer:
    """A run folder (``checkpoint.pt``) or a compact state (``train/checkpoint``), in eval mode."""
    if (path / "checkpoint.pt").exists():
        return load_trainer(path)
    model = DemoTrainer(run_config(path), torch.from_numpy(np.load(path / "used_ids.npy")))
    compact.load_compact(model, path)
    model.eval()
    return model


def export_bundle(model: DemoTrainer, bundle: Path) -> Path:
    from safetensors.numpy import save_file

    bundle.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, t in model.hf_state_dict().items():
        if name == demo_model.EMBED_NAME:
            continue
        tensors[name] = t.numpy().astype(np.float16)
    tensors[demo_model.EMBED_ROWS] = model.used_ids.numpy().astype(np.int32)
    tensors[demo_model.EMBED_VALUES] = model.embed.detach().float().numpy().astype(np.float16)
    save_file(tensors, str(bundle / "model.safetensors"))
    demo_model.save_config(bundle, model.cfg)
    return bundle


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.export", description=__doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("bundle", type=Path, nargs="?", default=DEFAULT_BUNDLE)
    p.add_argument("--checkpoint", type=Path, default=None, help="also write a transformers-layout checkpoint here")
    args = p.parse_args(argv)
    bundle = export_bundle(load_state(args.run_dir), args.bundle)
    size = (bundle / "model.safetensors").stat().st_size
    print(f"{bundle}: {size / 2**20:.1f} MiB")
    if args.checkpoint:
        print(demo_model.write_checkpoint(args.checkpoint, bundle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
