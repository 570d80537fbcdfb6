"""Shared test fixtures: seeded random-weight GOT checkpoints and models converted from them.

Checkpoints come from :func:`gotocr_fast.synth.write_checkpoint` (seed 0, the seed the committed
oracles in ``tests/fixtures/`` were made with), built once per session in temporary folders.

- ``synth_checkpoint(config, layout, seed=0)``: factory, cached per (config, layout, seed).
- ``tiny_hf_dir``, ``tiny_original_dir``, ``tiny_alt_hf_dir``, ``tiny_alt_original_dir``.
- ``converted_model(config, layout="hf", outtype="f32")``: factory, a folder with
  ``got-text-<outtype>.gguf`` + ``got-vision-<outtype>.gguf`` from ``gotocr_fast.convert``.
- ``tiny_model_dir`` (tiny, hf layout, f32), ``tiny_model_dir_f16``, ``tiny_alt_model_dir`` (f32),
  ``tiny_original_model_dir`` (tiny, original layout, f32).
- ``full_vision_gguf``: the full-size vision GGUF (f32) alone, in a folder removed after the session.
- ``fixtures_dir``, ``oracle(name)``: the committed oracle files (``tests/fixtures/<name>.npz`` +
  ``<name>.json``), see ``tests/fixtures/README.md``.

Nothing here imports torch: the converter and the oracles are numpy / gguf only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

FIXTURES_DIR = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES_DIR


class Oracle:
    """One committed oracle: ``arrays`` (the npz, loaded eagerly) and ``meta`` (the json)."""

    def __init__(self, name: str) -> None:
        npz_path = FIXTURES_DIR / f"{name}.npz"
        json_path = FIXTURES_DIR / f"{name}.json"
        if not npz_path.is_file() and not json_path.is_file():
            raise FileNotFoundError(f"no oracle {name!r} in {FIXTURES_DIR} (see tests/fixtures/README.md)")
        self.name = name
        self.arrays: dict[str, np.ndarray] = {}
        if npz_path.is_file():
            with np.load(npz_path, allow_pickle=False) as data:
                self.arrays = {k: data[k] for k in data.files}
        self.meta: dict = json.loads(json_path.read_text(encoding="utf-8")) if json_path.is_file() else {}

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


@pytest.fixture(scope="session")
def oracle() -> Callable[[str], Oracle]:
    cache: dict[str, Oracle] = {}

    def load(name: str) -> Oracle:
        if name not in cache:
            cache[name] = Oracle(name)
        return cache[name]

    return load


@pytest.fixture(scope="session")
def synth_checkpoint(tmp_path_factory) -> Callable[..., Path]:
    from gotocr_fast import synth

    cache: dict[tuple[str, str, int], Path] = {}

    def build(config: str = "tiny", layout: str = "hf", seed: int = 0) -> Path:
        key = (config, layout, seed)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ckpt-{config}-{layout}-s{seed}")
            cache[key] = synth.write_checkpoint(out, config=config, layout=layout, seed=seed)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def tiny_hf_dir(synth_checkpoint) -> Path:
    return synth_checkpoint("tiny", "hf")


@pytest.fixture(scope="session")
def tiny_original_dir(synth_checkpoint) -> Path:
    return synth_checkpoint("tiny", "original")


@pytest.fixture(scope="session")
def tiny_alt_hf_dir(synth_checkpoint) -> Path:
    return synth_checkpoint("tiny-alt", "hf")


@pytest.fixture(scope="session")
def tiny_alt_original_dir(synth_checkpoint) -> Path:
    return synth_checkpoint("tiny-alt", "original")


@pytest.fixture(scope="session")
def converted_model(synth_checkpoint, tmp_path_factory) -> Callable[..., Path]:
    cache: dict[tuple[str, str, str], Path] = {}

    def build(config: str = "tiny", layout: str = "hf", outtype: str = "f32") -> Path:
        key = (config, layout, outtype)
        if key not in cache:
            from gotocr_fast.convert import convert_checkpoint

            src = synth_checkpoint(config, layout)
            out = tmp_path_factory.mktemp(f"model-{config}-{layout}-{outtype}")
            convert_checkpoint(src, out, outtype=outtype, progress=False)
            cache[key] = out
        return cache[key]

    return build


@pytest.fixture(scope="session")
def full_vision_gguf() -> Iterator[Path]:
    """``got-vision-f32.gguf`` of the full config (0.4 GB), made once per session and deleted after it.

    Not through ``converted_model``: that keeps a 2.3 GB checkpoint and a 2 GB text GGUF in pytest's
    tmp folders, which pytest keeps for three runs (15 GB). Here the checkpoint has the full vision
    config and a one-layer LM of the real hidden size (the projector's output) and vocabulary (the
    tokenizer's); synth draws each tensor from its name and the seed, so the vision tensors are the
    full config's. The token embedding (0.6 GB, unused here) is written as a sparse-file hole. Only
    the vision GGUF is written, then the checkpoint is deleted: about 0.8 GB on disk at the peak.
    """
    from gotocr_fast import synth
    from gotocr_fast.convert.checkpoint import open_checkpoint
    from gotocr_fast.convert.vision_gguf import plan_vision, write_vision_gguf

    full = synth.CONFIGS["full"]
    cfg = replace(full, name="full-vision", text=replace(full.text, num_layers=1, ffn_dim=64))
    with tempfile.TemporaryDirectory(prefix="gotocr-full-vision-") as tmp:
        src = synth.write_checkpoint(Path(tmp) / "checkpoint", cfg, "hf", seed=0, zeros=[synth.EMBED_NAME])
        ckpt = open_checkpoint(src)
        assert ckpt.vision.image_size == full.vision.image_size and ckpt.text.hidden_size == full.text.hidden_size
        path = Path(tmp) / "got-vision-f32.gguf"
        write_vision_gguf(ckpt, plan_vision(ckpt, "f32"), path, "f32", lambda n: None)
        del ckpt
        shutil.rmtree(src)
        yield path


@pytest.fixture(scope="session")
def tiny_model_dir(converted_model) -> Path:
    return converted_model("tiny", "hf", "f32")


@pytest.fixture(scope="session")
def tiny_model_dir_f16(converted_model) -> Path:
    return converted_model("tiny", "hf", "f16")


@pytest.fixture(scope="session")
def tiny_alt_model_dir(converted_model) -> Path:
    return converted_model("tiny-alt", "hf", "f32")


@pytest.fixture(scope="session")
def tiny_original_model_dir(converted_model) -> Path:
    return converted_model("tiny", "original", "f32")
