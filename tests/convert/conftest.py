"""Fixtures for the converter tests: the independent tokenizer reference and llama.cpp runners.

Expected values never come from the converter: token ids come from tiktoken (Qwen's ranks as
tiktoken itself loads them, Qwen's split pattern written out here, GOT's specials), logits from
the committed transformers oracles (``tests/fixtures/tiny*_text.npz``).
"""

from __future__ import annotations

import mmap
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

CORPUS = Path(__file__).parent / "corpus" / "multilingual.txt"

# Qwen's tokenization_qwen.py PAT_STR (digits one by one), written out independently of
# gotocr_fast.convert.vocab.
QWEN_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running (full-size model); run with -m slow or GOTOCR_SLOW_TESTS=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the default run fast: slow converter tests run only when asked for."""
    import os

    if os.environ.get("GOTOCR_SLOW_TESTS") == "1" or "slow" in (config.getoption("markexpr") or ""):
        return
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason="slow: run with -m slow or GOTOCR_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords and here in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def qwen_tiktoken_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("dashscope")
    assert spec is not None and spec.submodule_search_locations, "dashscope==2.0.2 (test extra) is required"
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"


@pytest.fixture(scope="session")
def tiktoken_encoding(qwen_tiktoken_file):
    """GOT's tokenizer as tiktoken: Qwen ranks + GOT's specials; encode NFC text with it."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from gotocr_fast.tokens import SPECIAL_TOKENS

    ranks = load_tiktoken_bpe(str(qwen_tiktoken_file))
    return tiktoken.Encoding("got-qwen", pat_str=QWEN_PAT_STR, mergeable_ranks=ranks, special_tokens=SPECIAL_TOKENS)


@pytest.fixture(scope="session")
def got_encode(tiktoken_encoding) -> Callable[[str], list[int]]:
    """GOT's tokenization of a text: NFC, then tiktoken with every special allowed."""

    def encode(text: str) -> list[int]:
        return tiktoken_encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")

    return encode


@pytest.fixture(scope="session")
def corpus_text() -> str:
    with open(CORPUS, encoding="utf-8", newline="") as f:  # keep \r\n
        return f.read()


def _llama_logits(model_path: Path, ids: list[int] | np.ndarray, n_ctx: int = 64) -> np.ndarray:
    """Logits [len(ids), n_vocab] of a GGUF text model through llama-cpp-python."""
    import llama_cpp

    from gotocr_fast.llama_load import open_stock_llama

    # f32 KV cache: llama.cpp's default f16 cache alone moves tiny-model logits by ~1e-2.
    # Loaded with the engine's model parameters (no AMX buffers where they crash).
    llm = open_stock_llama(model_path=str(model_path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
                           n_threads=2, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                           verbose=False)
    try:
        ids = [int(i) for i in ids]
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


@pytest.fixture(scope="session")
def llama_logits() -> Callable[..., np.ndarray]:
    """``llama_logits(gguf_path, ids)`` → logits [len(ids), n_vocab] from llama-cpp-python."""
    return _llama_logits


@pytest.fixture(scope="session")
def llama_vocab() -> Callable[[Path], object]:
    """A vocab-only llama-cpp-python model per GGUF (cached): tokenize / detokenize only."""
    from gotocr_fast.llama_load import open_stock_llama

    cache: dict[Path, object] = {}

    def load(path: Path):
        if path not in cache:
            cache[path] = open_stock_llama(model_path=str(path), vocab_only=True, verbose=False)
        return cache[path]

    yield load
    for llm in cache.values():
        llm.close()


# --- a fast GGUF reader for tests ------------------------------------------------------------
# gguf-py's GGUFReader takes ~20 s of CPU on the text GGUF (it builds a numpy view per token
# string); this reads the same documented format in well under a second.

_GGUF_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
                 10: "<u8", 11: "<i8", 12: "<f8"}


class GgufFile:
    """``kv`` (key → python value), ``kv_types`` (key → GGUF type id, arrays as (9, elem type)),
    ``tensors`` (name → (ggml type id, numpy-order shape, raw bytes as np.uint8 array))."""

    def __init__(self, path: Path):
        import gguf
        import struct

        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        pos = 0

        def take(fmt: str):
            nonlocal pos
            (v,) = struct.unpack_from(fmt, data, pos)
            pos += struct.calcsize(fmt)
            return v

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", data, pos)
            s = data[pos + 8:pos + 8 + n].decode("utf-8")
            pos += 8 + n
            return s

        def value(vtype: int):
            nonlocal pos
            if vtype == 8:
                return string()
            if vtype == 9:
                etype, n = take("<I"), take("<Q")
                if etype == 8:
                    return [string() for _ in range(n)]
                arr = np.frombuffer(data, dtype=_GGUF_SCALARS[etype], count=n, offset=pos)
                pos += arr.nbytes
                return arr.tolist()
            arr = np.frombuffer(data, dtype=_GGUF_SCALARS[vtype], count=1, offset=pos)
            pos += arr.nbytes
            return arr[0].item()

        assert data[:4] == b"GGUF"
        pos = 4
        version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
        assert version == 3
        self.kv: dict = {}
        self.kv_types: dict = {}
        for _ in range(n_kv):
            key = string()
            vtype = take("<I")
            self.kv_types[key] = (9, struct.unpack_from("<I", data, pos)[0]) if vtype == 9 else vtype
            self.kv[key] = value(vtype)
        infos = []
        for _ in range(n_tensors):
            name = string()
            n_dims = take("<I")
            ne = [take("<Q") for _ in range(n_dims)]
            ttype, offset = take("<I"), take("<Q")
            infos.append((name, ne, ttype, offset))
        align = int(self.kv.get("general.alignment", 32))
        start = (pos + align - 1) // align * align
        self.tensors: dict[str, tuple[int, tuple[int, ...], np.ndarray]] = {}
        for name, ne, ttype, offset in infos:
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
            nbytes = int(np.prod(ne)) // block * size
            raw = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=start + offset)
            self.tensors[name] = (ttype, tuple(reversed(ne)), raw)


@pytest.fixture(scope="session")
def read_gguf() -> Callable[[Path], GgufFile]:
    return GgufFile
