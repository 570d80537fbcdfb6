"""The tensor table of a GGUF file (name, ggml type, shape), read without decoding its metadata.

gguf-py's ``GGUFReader`` builds an object for every metadata value; for a GOT text model (a
151,860-token vocabulary and its merges as string arrays) that takes over ten seconds, which a
model load cannot afford. The table is all :mod:`gotocr_fast.llama_load` needs, so this reads the
header sequentially and skips the values by their sizes (GGUF v2/v3 layout).
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass

__all__ = ["GgufTensor", "layer_matrices", "read_tensor_table"]

_MAGIC = b"GGUF"
_STRING = 8
_ARRAY = 9
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
"""Bytes of each fixed-size metadata value type (uint8 … float64; 8 string and 9 array vary)."""


@dataclass(frozen=True)
class GgufTensor:
    name: str
    ggml_type: int
    ne: tuple[int, ...]
    """ggml order: ne[0] is the row length, ne[1] the number of rows of a matrix."""


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ValueError("truncated GGUF header")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError("truncated GGUF header")
        self.pos += n

    def string(self) -> bytes:
        n = self.take("<Q")
        start = self.pos
        self.skip(n)
        return bytes(self.buf[start:self.pos])

    def skip_value(self, vtype: int) -> None:
        if vtype in _SCALAR_SIZES:
            self.skip(_SCALAR_SIZES[vtype])
        elif vtype == _STRING:
            self.skip(self.take("<Q"))
        elif vtype == _ARRAY:
            etype, count = self.take("<I"), self.take("<Q")
            if etype in _SCALAR_SIZES:
                self.skip(count * _SCALAR_SIZES[etype])
            elif etype == _STRING:
                for _ in range(count):
                    self.skip(self.take("<Q"))
            else:
                raise ValueError(f"GGUF array of value type {etype}")
        else:
            raise ValueError(f"GGUF value type {vtype}")


def read_tensor_table(path: str | os.PathLike) -> list[GgufTensor]:
    """The tensors of the GGUF at ``path``; ``ValueError`` for a file that is not one."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            raise ValueError(f"{path}: too short for a GGUF file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != _MAGIC:
                raise ValueError(f"{path}: not a GGUF file")
            c = _Cursor(buf)
            c.skip(4)
            version = c.take("<I")
            if version not in (2, 3):
                raise ValueError(f"{path}: GGUF version {version}")
            n_tensors, n_kv = c.take("<Q"), c.take("<Q")
            for _ in range(n_kv):
                c.string()
                c.skip_value(c.take("<I"))
            out = []
            for _ in range(n_tensors):
                name = c.string().decode("utf-8", errors="replace")
                n_dims = c.take("<I")
                if n_dims > 8:
                    raise ValueError(f"{path}: tensor {name!r} has {n_dims} dimensions")
                ne = tuple(c.take("<Q") for _ in range(n_dims))
                ggml_type = c.take("<I")
                c.skip(8)  # data offset
                out.append(GgufTensor(name, ggml_type, ne))
            return out


_LAYER_WEIGHT = re.compile(r"^blk\.\d+\.[a-z_]+\.weight$")


def layer_matrices(table: list[GgufTensor]) -> list[GgufTensor]:
    """The transformer layers' weight matrices (``blk.N.*.weight``, two dimensions): the tensors a
    text model's weight type is about (embeddings, norms and biases keep their own types)."""
    return [t for t in table if len(t.ne) == 2 and _LAYER_WEIGHT.match(t.name)]
