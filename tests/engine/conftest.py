"""Fixtures for the engine tests: the reference Qwen tiktoken tokenizer (independent of our code)."""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import pytest

from gotocr_fast.tokens import SPECIAL_TOKENS

QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
"""Qwen's tiktoken split pattern (tokenization_qwen.py in Qwen / GOT's repository)."""


def _qwen_tiktoken_path() -> Path | None:
    spec = importlib.util.find_spec("dashscope")  # the package itself does not import without aiohttp
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    return p if p.is_file() else None


@pytest.fixture(scope="session")
def qwen_tiktoken():
    tiktoken = pytest.importorskip("tiktoken")
    path = _qwen_tiktoken_path()
    if path is None:
        pytest.skip("qwen.tiktoken (dashscope==2.0.2) not installed")
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return tiktoken.Encoding(
        "qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens=dict(SPECIAL_TOKENS)
    )
