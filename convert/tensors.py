"""Lazy tensor readers for checkpoint weights: safetensors (read here, no torch) and torch ``.bin``.

safetensors is parsed directly (8-byte header length, JSON header, raw little-endian data) and
memory-mapped, so a 600M-parameter checkpoint converts tensor by tensor without holding it in
memory and bf16 works without torch. ``.bin`` files in torch's zip format are read without
torch too (a restricted unpickler that resolves only state-dict globals); only the legacy
pre-1.6 format needs torch, imported just for such a file.
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


_TORCH_STORAGES: dict[str, str] = {
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",  # widened to float32 on load
    "DoubleStorage": "<f8",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass(frozen=True)
class _Storage:
    """One storage of a torch zip checkpoint: ``numel`` elements of ``dtype`` in member ``key``."""

    archive: "_TorchZip"
    kind: str
    key: str
    numel: int

    def array(self) -> np.ndarray:
        return self.archive.storage_array(self)


@dataclass(frozen=True)
class _TorchTensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def load(self) -> np.ndarray:
        base = self.storage.array()
        needed = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride)) + 1
        if self.shape and min(self.shape) > 0 and needed > base.size:
            raise ConvertError(f"torch tensor view reaches past its storage {self.storage.key}")
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:], shape=self.shape, strides=tuple(s * item for s in self.stride), writeable=False
        )
        if self.storage.kind == "BFloat16Storage":
            return (view.astype(np.uint32) << 16).view(np.float32)
        return np.array(view, dtype=np.float32)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _TorchTensor(storage, int(storage_offset), tuple(int(x) for x in size), tuple(int(x) for x in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _TorchZip:
    """torch's zip checkpoint format read without torch: ``<prefix>/data.pkl`` (a pickle whose
    tensors reference storages by persistent id) + one raw little-endian member per storage.

    The unpickler resolves only the handful of globals a state dict uses (tensor / parameter
    rebuild, storage types, OrderedDict) and refuses everything else, so a checkpoint cannot run
    code.
    """

    def __init__(self, path: Path):
        import pickle
        import zipfile
        from collections import OrderedDict

        self.path = path
        self._zip = zipfile.ZipFile(path)
        names = self._zip.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ConvertError(f"{path} is a zip but not a PyTorch checkpoint (no data.pkl)")
        self._prefix = pkl[0][: -len("data.pkl")]
        byteorder = self._prefix + "byteorder"
        if byteorder in names and self._zip.read(byteorder).strip() != b"little":
            raise ConvertError(f"{path} is a big-endian PyTorch checkpoint")
        archive = self
        allowed = {
            ("collections", "OrderedDict"): OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        }

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str):
                if (module, name) in allowed:
                    return allowed[(module, name)]
                if module == "torch" and name in _TORCH_STORAGES:
                    return _StorageType(name)
                raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                        and isinstance(pid[1], _StorageType)):
                    raise pickle.UnpicklingError(f"unsupported storage reference {pid!r}")
                return _Storage(archive, pid[1].name, str(pid[2]), int(pid[4]))

        try:
            with self._zip.open(pkl[0]) as f:
                state = Unpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise ConvertError(f"cannot read {path} as a PyTorch state dict: {exc}") from None
        if not isinstance(state, dict):
            raise ConvertError(f"{path} does not hold a state dict")
        self.tensors = {k: v for k, v in state.items() if isinstance(v, _TorchTensor)}

    def storage_array(self, storage: _Storage) -> np.ndarray:
        dtype = np.dtype(_TORCH_STORAGES[storage.kind])
        info = self._zip.getinfo(f"{self._prefix}data/{storage.key}")
        if info.file_size != storage.numel * dtype.itemsize:
            raise ConvertError(f"{self.path}: storage {storage.key} has {info.file_size} bytes, "
                               f"expected {storage.numel} × {dtype.itemsize}")
        import zipfile

        if info.compress_type == zipfile.ZIP_STORED:  # torch stores uncompressed: memory-map it
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            return np.memmap(self.path, dtype=dtype, mode="r", offset=start, shape=(storage.numel,))
        return np.frombuffer(self._zip.read(info), dtype=dtype)


class TorchBinFile:
    """A PyTorch ``.bin`` state dict. The zip format (torch >= 1.6, what ``save_pretrained``
    writes) is read without torch; the legacy pre-1.6 format needs torch."""

    def __init__(self, path: Path):
        import zipfile

        self.path = path
        if zipfile.is_zipfile(path):
            self._zip: _TorchZip | None = _TorchZip(path)
            self._shapes = {name: t.shape for name, t in self._zip.tensors.items()}
            return
        self._zip = None
        try:
            import torch  # noqa: PLC0415 - only for legacy .bin checkpoints
        except ImportError:
            raise ConvertError(
                f"{path.name} is a legacy (non-zip) PyTorch checkpoint: reading it needs torch "
                f"(pip install torch), or convert the checkpoint to safetensors first"
            ) from None
        self._torch = torch
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise ConvertError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from None
        if not isinstance(state, dict):
            raise ConvertError(f"{path} does not hold a state dict")
        self._state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        self._shapes = {name: tuple(t.shape) for name, t in self._state.items()}

    def refs(self) -> list[TensorRef]:
        return [TensorRef(name, shape, self.path, self) for name, shape in self._shapes.items()]

    def load(self, name: str) -> np.ndarray:
        if self._zip is not None:
            return self._zip.tensors[name].load()
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
