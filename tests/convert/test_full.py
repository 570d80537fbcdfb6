"""The full-size GOT config (600M parameters) converts and its text GGUF runs in llama.cpp.

Slow (minutes, GBs of temporary files): runs only with ``-m slow`` or ``GOTOCR_SLOW_TESTS=1``.

Reference for one token, computed here with numpy from the checkpoint: at a single position
softmax attention returns V exactly, so the Qwen2 forward needs no q/k/RoPE:
``h = E[t]; per layer: h += Wo·V(rms(h)); h += Wd·(silu(Wg·x) * Wu·x), x = rms(h); logits = E·rms(h)``.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

from gotocr_fast import synth, tokens

pytestmark = pytest.mark.slow

TOKEN = 9707  # "Hello"


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x.astype(np.float64) ** 2) + eps).astype(np.float32) * w


def _one_token_logits(ckpt_file, cfg: synth.TextConfig, token: int) -> np.ndarray:
    lm = "language_model.model."
    with safe_open(str(ckpt_file), framework="numpy") as f:
        def w(name: str) -> np.ndarray:
            return f.get_tensor(lm + name).astype(np.float32)

        embed = w("embed_tokens.weight")
        h = embed[token].copy()
        group = cfg.num_heads // cfg.num_kv_heads
        for i in range(cfg.num_layers):
            p = f"layers.{i}."
            x = _rms(h, w(p + "input_layernorm.weight"), cfg.rms_norm_eps)
            v = w(p + "self_attn.v_proj.weight") @ x + w(p + "self_attn.v_proj.bias")
            heads = np.repeat(v.reshape(cfg.num_kv_heads, cfg.head_dim), group, axis=0).reshape(-1)
            h = h + w(p + "self_attn.o_proj.weight") @ heads
            x = _rms(h, w(p + "post_attention_layernorm.weight"), cfg.rms_norm_eps)
            gate = w(p + "mlp.gate_proj.weight") @ x
            h = h + w(p + "mlp.down_proj.weight") @ (gate / (1 + np.exp(-gate)) * (w(p + "mlp.up_proj.weight") @ x))
        return embed @ _rms(h, w("norm.weight"), cfg.rms_norm_eps)


def test_full_config_converts_and_runs(synth_checkpoint, tmp_path, llama_logits, read_gguf):
    from gotocr_fast.convert import convert_checkpoint

    cfg = synth.CONFIGS["full"]
    src = synth_checkpoint("full", "hf")
    files = convert_checkpoint(src, tmp_path / "model", outtype="f16", progress=False)

    vision = read_gguf(files.vision)
    assert vision.kv["got-vision.block_count"] == 12
    assert vision.kv["got-vision.global_attention_layers"] == [2, 5, 8, 11]
    assert vision.kv["got-vision.image_token_count"] == 256
    assert vision.tensors["v.pos_embd"][1] == (1, 64, 64, 768)
    assert vision.tensors["v.blk.0.attn_rel_pos_h"][1] == (27, 64)
    assert vision.tensors["v.blk.2.attn_rel_pos_h"][1] == (127, 64)
    assert vision.tensors["mm.conv2.weight"][1] == (1024, 512, 3, 3)

    logits = llama_logits(files.text, [TOKEN], n_ctx=32)[0]
    assert logits.shape == (tokens.VOCAB_SIZE,)
    want = _one_token_logits(src / "model.safetensors", cfg.text, TOKEN)
    assert want.std() > 1.0  # a reference that would catch a wrong graph
    np.testing.assert_allclose(logits, want, atol=0.1, rtol=0)
    assert np.abs(logits - want).mean() < 0.02
