"""The bundled demo model: a small GOT-architecture model trained here on printed text lines.

It reads the task of :mod:`gotocr_fast.reading` (1 to 4 printed lines, box mode); it is not
GOT-OCR2 and reads nothing else well. It exists so that a fresh install shows real reading with
no download: ``gotocr demo``, and ``gotocr ocr`` / ``gotocr serve`` without ``--model``.

The package carries it compactly (``data/demo_model/``, see :func:`bundle_path`):

- ``model.safetensors``: every tensor in float16 under its transformers hub name, except the token
  embedding, stored as the ids of the rows the model uses (``…embed_tokens.rows``, int32) and those
  rows (``…embed_tokens.values``). All other rows of GOT's 151,860-row embedding are exactly zero:
  the training never touched them (see ``train/``), and under the tied output head a zero row has
  logit 0, so writing them back as zeros gives the very model that was trained.
- ``config.json``: the sizes (:class:`gotocr_fast.synth.GotConfig` fields).

On first use it is expanded into a transformers-layout checkpoint (:func:`write_checkpoint`) and
converted to GGUF in a cache folder (:func:`model_dir`); later uses find the converted files there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from . import tokens
from .synth import GotConfig, TextConfig, VisionConfig

__all__ = [
    "DEFAULT_OUTTYPE",
    "has_bundle",
    "NOTICE",
    "bundle_path",
    "load_config",
    "load_weights",
    "model_dir",
    "write_checkpoint",
]

CONFIG_FILE = "config.json"
"""The sizes in a bundle (and in a training run folder, which uses the same format)."""
EMBED_NAME = "language_model.model.embed_tokens.weight"
EMBED_ROWS = "language_model.model.embed_tokens.rows"
EMBED_VALUES = "language_model.model.embed_tokens.values"

DEFAULT_OUTTYPE = "f16"
"""Weight type the demo model is converted to: f16 reads the held-out set as f32 does (bench/)."""

NOTICE = ("using the bundled demo model: a small model trained on printed text lines, not GOT-OCR2 "
          "(pass --model for a converted GOT-OCR2 checkpoint)")

CACHE_ENV = "GOTOCR_CACHE_DIR"


def _bundle_dir() -> Path:
    return Path(str(resources.files("gotocr_fast").joinpath("data/demo_model")))


def has_bundle() -> bool:
    """Whether this installation carries the demo model."""
    return (_bundle_dir() / "model.safetensors").is_file()


def bundle_path() -> Path:
    """The folder of the bundled compact model inside the installed package."""
    path = _bundle_dir()
    if not has_bundle():
        raise FileNotFoundError(
            "no model: pass --model DIR (a folder made by `gotocr convert`) or set GOTOCR_MODEL; "
            f"this installation has no bundled demo model ({path})")
    return path


def load_config(bundle: Path | None = None) -> GotConfig:
    raw = json.loads(((bundle or bundle_path()) / CONFIG_FILE).read_text("utf-8"))
    vision = dict(raw["vision"])
    vision["global_layers"] = tuple(vision["global_layers"])
    return GotConfig(raw.get("name", "demo"), VisionConfig(**vision), TextConfig(**raw["text"]))


def save_config(bundle: Path, config: GotConfig) -> None:
    """Write ``config.json`` of a bundle (used by the training's exporter)."""
    raw = {"name": config.name, "vision": dataclasses.asdict(config.vision), "text": dataclasses.asdict(config.text)}
    (bundle / CONFIG_FILE).write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")


def load_weights(bundle: Path | None = None) -> dict[str, np.ndarray]:
    """All weights in float32 under transformers hub names, the full embedding included."""
    from safetensors.numpy import load_file

    bundle = bundle or bundle_path()
    config = load_config(bundle)
    stored = load_file(str(bundle / "model.safetensors"))
    rows = stored.pop(EMBED_ROWS).astype(np.int64)
    values = stored.pop(EMBED_VALUES).astype(np.float32)
    if rows.ndim != 1 or values.shape != (len(rows), config.text.hidden_size):
        raise ValueError(f"bad embedding rows in the demo model: {rows.shape}, {values.shape}")
    if len(rows) and (rows.min() < 0 or rows.max() >= config.text.vocab_size):
        raise ValueError("embedding row id outside the vocabulary in the demo model")
    embed = np.zeros((config.text.vocab_size, config.text.hidden_size), dtype=np.float32)
    embed[rows] = values
    weights = {name: arr.astype(np.float32) for name, arr in stored.items()}
    weights[EMBED_NAME] = embed
    return weights


def write_checkpoint(out_dir: str | Path, bundle: Path | None = None) -> Path:
    """Expand the bundle into a transformers-layout checkpoint (what ``gotocr convert`` reads)."""
    from .synth import write_hf_checkpoint

    bundle = bundle or bundle_path()
    return write_hf_checkpoint(out_dir, load_config(bundle), load_weights(bundle))


def _cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gotocr_fast"


def _bundle_digest(bundle: Path) -> str:
    h = hashlib.sha256()
    for name in (CONFIG_FILE, "model.safetensors"):
        h.update((bundle / name).read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def model_dir(outtype: str = DEFAULT_OUTTYPE, cache_dir: str | Path | None = None,
              bundle: Path | None = None) -> Path:
    """The converted demo model folder (text + vision GGUF), converting it on first use.

    The folder name carries a digest of the bundle, so an upgraded package never reads an older
    conversion. Concurrent first uses wait on a file lock instead of converting twice. ``bundle``
    converts another bundle of the same format (one ``python -m train.export`` wrote) instead of
    the installed one.
    """
    from .convert import convert_checkpoint

    bundle = bundle or bundle_path()
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    target = root / f"demo-{_bundle_digest(bundle)}-{outtype}"
    if (target / "complete").is_file():
        return target
    with _locked(root / f".demo-{outtype}.lock"):
        if (target / "complete").is_file():
            return target
        with tempfile.TemporaryDirectory(prefix=".demo-", dir=root) as tmp:
            ckpt = write_checkpoint(Path(tmp) / "checkpoint", bundle)
            staged = Path(tmp) / "model"
            convert_checkpoint(ckpt, staged, outtype=outtype, progress=False)
            (staged / "complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(staged, target)
    return target


def used_token_ids(bundle: Path | None = None) -> np.ndarray:
    """Ids of the embedding rows the demo model uses (the others are zero)."""
    from safetensors import safe_open

    with safe_open(str((bundle or bundle_path()) / "model.safetensors"), framework="numpy") as f:
        return f.get_tensor(EMBED_ROWS).astype(np.int64)


assert tokens.VOCAB_SIZE == TextConfig().vocab_size
