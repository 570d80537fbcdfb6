"""TextModel's choice of llama.cpp context options."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gotocr_fast.engine.model import _default_flash_attn


def _llama(gpu: bool):
    return SimpleNamespace(llama_supports_gpu_offload=lambda: gpu)


@pytest.mark.parametrize("gpu", [False, True])
def test_f32_cache_never_uses_flash_attention(gpu):
    # CPU flash attention rounds through f16: f32-cache parity needs it off everywhere
    assert _default_flash_attn(_llama(gpu), "f32") is False


def test_cpu_only_build_runs_without_flash_attention():
    assert _default_flash_attn(_llama(False), "f16") is False


def test_gpu_build_leaves_flash_attention_to_llama_cpp():
    assert _default_flash_attn(_llama(True), "f16") is None

