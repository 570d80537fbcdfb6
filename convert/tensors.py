"""Lazy tensor readers for checkpoint weights: safetensors (read here, no torch) and torch ``.bin``.

safetensors is parsed directly (8-byte header length, JSON header, raw little-endian data) and
memory-mapped, so a 600M-parameter checkpoint converts tensor by tensor without holding it in
memory and bf16 works without torch. ``.bin`` files are torch zip pickles: they need torch,
imported only when such a file is opened.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConvertError

_SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",  # widened to float32 on load
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


@dataclass(frozen=True)
class TensorRef:
    """Where one stored tensor lives; ``load()`` gives it as float32."""

    name: str
    shape: tuple[int, ...]
    file: Path
    _store: Any

    def load(self) -> np.ndarray:
        return self._store.load(self.name)


class SafetensorsFile:
    """One ``.safetensors`` file, memory-mapped; tensors load as float32 numpy arrays."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len > 100_000_000:
                    raise ValueError("header length is implausible")
                header = json.loads(f.read(header_len))
        except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
            raise ConvertError(f"cannot read {path} as safetensors: {exc}") from None
        header.pop("__metadata__", None)
        self._data_start = 8 + header_len
        self._header: dict[str, dict] = header
        self._map: np.memmap | None = None
        size = path.stat().st_size - self._data_start
        for name, entry in header.items():
            dtype = entry.get("dtype")
            if dtype not in _SAFETENSORS_DTYPES:
                raise ConvertError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
            begin, end = entry["data_offsets"]
            expected = math.prod(entry["shape"]) * np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
            if end - begin != expected or end > size:
                raise ConvertError(f"{path}: tensor {name!r} data range is inconsistent with its shape")

    def refs(self) -> list[TensorRef]:
        return [TensorRef(name, tuple(e["shape"]), self.path, self) for name, e in self._header.items()]

    def load(self, name: str) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start)
        entry = self._header[name]
        begin, end = entry["data_offsets"]
        raw = self._map[begin:end].view(_SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        if entry["dtype"] == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return np.asarray(raw, dtype=np.float32)


class TorchBinFile:
    """A torch ``.bin`` state dict (zip pickle). Needs torch; loaded with ``weights_only=True``."""

    def __init__(self, path: Path):
        self.path = path
        try:
            import torch  # noqa: PLC0415 - only for .bin checkpoints
        except ImportError:
            raise ConvertError(
                f"{path.name} is a PyTorch .bin checkpoint: reading it needs torch "
                f"(pip install torch), or convert the checkpoint to safetensors first"
            ) from None
        self._torch = torch
        try:
            try:  # zip format (torch >= 1.6): memory-mapped, nothing loaded up front
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise ConvertError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from None
        if not isinstance(state, dict):
            raise ConvertError(f"{path} does not hold a state dict")
        self._state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}

    def refs(self) -> list[TensorRef]:
        return [TensorRef(name, tuple(t.shape), self.path, self) for name, t in self._state.items()]

    def load(self, name: str) -> np.ndarray:
        return self._state[name].detach().to(self._torch.float32).numpy()


def weight_files(src: Path) -> list[Path]:
    """The weight files of a checkpoint folder: an index's shards, else every safetensors / bin."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = src / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted({str(v) for v in weight_map.values()})
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConvertError(f"cannot read {index}: {exc}") from None
            paths = [src / f for f in files]
            missing = [p.name for p in paths if not p.is_file()]
            if missing:
                raise ConvertError(f"{index.name} lists shard(s) that are not in {src}: {', '.join(missing)}")
            return paths
    safetensors = sorted(src.glob("*.safetensors"))
    if safetensors:
        return safetensors
    bins = sorted(p for p in src.glob("*.bin") if p.name.startswith(("pytorch_model", "model")))
    if bins:
        return bins
    raise ConvertError(f"no weights in {src}: expected *.safetensors (or pytorch_model*.bin)")


def open_tensors(files: Iterable[Path]) -> dict[str, TensorRef]:
    """Every tensor of the given weight files by stored name (a name in two files fails)."""
    refs: dict[str, TensorRef] = {}
    for path in files:
        store = SafetensorsFile(path) if path.suffix == ".safetensors" else TorchBinFile(path)
        for ref in store.refs():
            if ref.name in refs:
                raise ConvertError(f"tensor {ref.name!r} is in both {refs[ref.name].file.name} and {path.name}")
            refs[ref.name] = ref
    return refs
