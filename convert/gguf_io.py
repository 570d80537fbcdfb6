"""Streamed GGUF writing: plan every tensor (name, shape, type) first, then write one at a time.

The writer never holds more than one tensor in memory, which matters for the full model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from .errors import ConvertError

QType = gguf.GGMLQuantizationType

OUTTYPES: dict[str, QType] = {
    "f32": QType.F32,
    "f16": QType.F16,
    "bf16": QType.BF16,
    "q8_0": QType.Q8_0,
}

FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}


LLAMA_QUANTIZED: dict[str, str] = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
"""Text outtypes made by llama.cpp's own quantizer from an f32 staging GGUF (the ``llama_cpp``
constant of each); the k-quant mixes pick per-tensor types the way llama-quantize does."""

TEXT_ONLY_OUTTYPES: dict[str, str] = {"q6_k": "f16", "q5_k_m": "f16", "q4_k_m": "f16"}
"""Outtypes that exist for the text model only, and the vision type written beside them (the
vision encoder's kernels take f32, f16, bf16 and q8_0 weights)."""

ALL_OUTTYPES: tuple[str, ...] = (*OUTTYPES, *TEXT_ONLY_OUTTYPES)

DEFAULT_OUTTYPE = "f16"
"""What ``gotocr convert`` writes unless told otherwise. Measured (bench/RESULTS*.md): f16 decodes
about twice as fast as f32 (a token reads every weight once) and the demo model's f16 text equals
its f32 text on 97.8-98.7 % of the held-out pages (two training states), its error rates within
0.1 of a point; the quantized types are faster again but change the text more often, so they stay
a choice (README.md, "Weight types")."""


def check_outtype(outtype: str) -> None:
    if outtype not in ALL_OUTTYPES:
        raise ConvertError(f"unknown outtype {outtype!r}: choose from {', '.join(ALL_OUTTYPES)}")


def vision_outtype(outtype: str) -> str:
    """The vision GGUF's weight type for a conversion to ``outtype``."""
    return TEXT_ONLY_OUTTYPES.get(outtype, outtype)


def fits_q8_0(shape: Sequence[int]) -> bool:
    """Whether rows (last axis) split into whole q8_0 blocks."""
    block, _ = gguf.GGML_QUANT_SIZES[QType.Q8_0]
    return shape[-1] % block == 0


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: GGUF name, numpy-order shape, storage type, and how to read it (float32)."""

    name: str
    shape: tuple[int, ...]
    qtype: QType
    load: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(gguf.quants.quant_shape_to_byte_shape(self.shape, self.qtype))


def encode(array: np.ndarray, qtype: QType) -> np.ndarray:
    """float32 data → the bytes / array gguf-py writes for ``qtype``."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if qtype == QType.F32:
        return array
    if qtype == QType.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array, qtype)


def write_gguf(
    path: Path,
    arch: str,
    add_metadata: Callable[[gguf.GGUFWriter], None],
    plan: Sequence[PlannedTensor],
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Write a GGUF file: metadata via ``add_metadata(writer)``, then ``plan``'s tensors in order."""
    writer = gguf.GGUFWriter(path, arch)
    try:
        add_metadata(writer)
        for t in plan:
            if t.qtype in (QType.F32, QType.F16):
                dtype = np.float32 if t.qtype == QType.F32 else np.float16
                writer.add_tensor_info(t.name, t.shape, np.dtype(dtype), t.nbytes)
            else:
                byte_shape = gguf.quants.quant_shape_to_byte_shape(t.shape, t.qtype)
                writer.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=t.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in plan:
            data = t.load()
            if tuple(data.shape) != t.shape:
                raise ConvertError(f"{t.name}: read shape {tuple(data.shape)}, planned {t.shape}")
            writer.write_tensor_data(encode(data, t.qtype))
            if on_progress is not None:
                on_progress(t.nbytes)
    finally:
        writer.close()
