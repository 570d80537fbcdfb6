"""Fixtures for the converter tests: the independent tokenizer reference and llama.cpp runners.

Expected values never come from the converter: token ids come from tiktoken (Qwen's ranks as
tiktoken itself loads them, Qwen's split pattern written out here, GOT's specials), logits from
the committed transformers oracles (``tests/fixtures/tiny*_text.npz``).
"""

from __future__ import annotations

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
    config.addinivalue_line("markers", "slow: long-running (full-size model); deselect with -m 'not slow'")


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

    # f32 KV cache: llama.cpp's default f16 cache alone moves tiny-model logits by ~1e-2.
    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True,
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
    import llama_cpp

    cache: dict[Path, object] = {}

    def load(path: Path):
        if path not in cache:
            cache[path] = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        return cache[path]

    yield load
    for llm in cache.values():
        llm.close()
