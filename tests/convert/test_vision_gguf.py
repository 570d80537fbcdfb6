"""The vision GGUF: every key of docs/ARCHITECTURE.md with its type and value, tensor shapes and
types per outtype, tensor data equal to the checkpoint's.

Expected values come from the synth configs (the model the checkpoint was drawn from) and the
checkpoint read with the ``safetensors`` library, not from the converter.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from gotocr_fast import ggml_names as G
from gotocr_fast import synth

U = gguf.GGUFValueType
T = gguf.GGMLQuantizationType


def _reader(model_dir, outtype: str) -> gguf.GGUFReader:
    return gguf.GGUFReader(model_dir / f"got-vision-{outtype}.gguf")


def _value(reader: gguf.GGUFReader, key: str):
    field = reader.fields[key]
    return field.types, field.contents()


def _expected_keys(cfg: synth.GotConfig) -> dict[str, tuple[list, object]]:
    v = cfg.vision
    return {
        "got-vision.image_size": ([U.UINT32], v.image_size),
        "got-vision.patch_size": ([U.UINT32], v.patch_size),
        "got-vision.num_channels": ([U.UINT32], v.num_channels),
        "got-vision.embedding_length": ([U.UINT32], v.hidden_size),
        "got-vision.block_count": ([U.UINT32], v.num_layers),
        "got-vision.attention.head_count": ([U.UINT32], v.num_heads),
        "got-vision.feed_forward_length": ([U.UINT32], v.mlp_dim),
        "got-vision.attention.layer_norm_epsilon": ([U.FLOAT32], pytest.approx(v.layer_norm_eps, rel=1e-6)),
        "got-vision.window_size": ([U.UINT32], v.window_size),
        "got-vision.global_attention_layers": ([U.ARRAY, U.UINT32], list(v.global_layers)),
        "got-vision.use_abs_pos": ([U.BOOL], True),
        "got-vision.use_rel_pos": ([U.BOOL], True),
        "got-vision.neck.channels": ([U.UINT32], v.neck_channels),
        "got-vision.neck.layer_norm_epsilon": ([U.FLOAT32], pytest.approx(1e-6, rel=1e-6)),
        "got-vision.projector.channels": ([U.UINT32], v.projector_channels),
        "got-vision.projection_dim": ([U.UINT32], cfg.text.hidden_size),
        "got-vision.image_token_count": ([U.UINT32], cfg.tokens_per_view),
        "got-vision.image_mean": ([U.ARRAY, U.FLOAT32], pytest.approx([0.48145466, 0.4578275, 0.40821073], rel=1e-6)),
        "got-vision.image_std": ([U.ARRAY, U.FLOAT32], pytest.approx([0.26862954, 0.26130258, 0.27577711], rel=1e-6)),
    }


def _expected_tensors(cfg: synth.GotConfig) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """GGUF name → (hf checkpoint name, torch-order shape, kind) from the docs table."""
    v, e = cfg.vision, cfg.text.hidden_size
    d, f, n, c, g, hd = v.hidden_size, v.mlp_dim, v.neck_channels, v.projector_channels, v.grid, v.head_dim
    vt, mm = "vision_tower.", "multi_modal_projector."
    out = {
        "v.patch_embd.weight": (vt + "patch_embed.projection.weight", (d, 3, v.patch_size, v.patch_size), "conv"),
        "v.patch_embd.bias": (vt + "patch_embed.projection.bias", (d,), "f32"),
        "v.pos_embd": (vt + "pos_embed", (1, g, g, d), "f32"),
        "v.neck.conv1.weight": (vt + "neck.conv1.weight", (n, d, 1, 1), "conv"),
        "v.neck.ln1.weight": (vt + "neck.layer_norm1.weight", (n,), "f32"),
        "v.neck.ln1.bias": (vt + "neck.layer_norm1.bias", (n,), "f32"),
        "v.neck.conv2.weight": (vt + "neck.conv2.weight", (n, n, 3, 3), "conv"),
        "v.neck.ln2.weight": (vt + "neck.layer_norm2.weight", (n,), "f32"),
        "v.neck.ln2.bias": (vt + "neck.layer_norm2.bias", (n,), "f32"),
        "mm.conv1.weight": (mm + "conv_upsampler1.weight", (c, n, 3, 3), "conv"),
        "mm.conv2.weight": (mm + "conv_upsampler2.weight", (e, c, 3, 3), "conv"),
        "mm.proj.weight": (mm + "multimodal_projector.weight", (e, e), "matmul"),
        "mm.proj.bias": (mm + "multimodal_projector.bias", (e,), "f32"),
    }
    for i in range(v.num_layers):
        p, b = f"v.blk.{i}.", f"{vt}layers.{i}."
        s = g if i in v.global_layers else v.window_size
        out.update({
            p + "ln1.weight": (b + "layer_norm1.weight", (d,), "f32"),
            p + "ln1.bias": (b + "layer_norm1.bias", (d,), "f32"),
            p + "attn_qkv.weight": (b + "attn.qkv.weight", (3 * d, d), "matmul"),
            p + "attn_qkv.bias": (b + "attn.qkv.bias", (3 * d,), "f32"),
            p + "attn_out.weight": (b + "attn.proj.weight", (d, d), "matmul"),
            p + "attn_out.bias": (b + "attn.proj.bias", (d,), "f32"),
            p + "attn_rel_pos_h": (b + "attn.rel_pos_h", (2 * s - 1, hd), "f32"),
            p + "attn_rel_pos_w": (b + "attn.rel_pos_w", (2 * s - 1, hd), "f32"),
            p + "ln2.weight": (b + "layer_norm2.weight", (d,), "f32"),
            p + "ln2.bias": (b + "layer_norm2.bias", (d,), "f32"),
            p + "ffn_up.weight": (b + "mlp.lin1.weight", (f, d), "matmul"),
            p + "ffn_up.bias": (b + "mlp.lin1.bias", (f,), "f32"),
            p + "ffn_down.weight": (b + "mlp.lin2.weight", (d, f), "matmul"),
            p + "ffn_down.bias": (b + "mlp.lin2.bias", (d,), "f32"),
        })
    return out


def _expected_type(kind: str, outtype: str, shape: tuple[int, ...]) -> T:
    if kind == "f32" or outtype == "f32":
        return T.F32
    if kind == "conv":
        return T.F16
    if outtype == "q8_0" and shape[-1] % 32:
        return T.F16  # documented fallback: rows that are not whole q8_0 blocks
    return {"f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0}[outtype]


def _as_float(t) -> np.ndarray:
    shape = tuple(int(x) for x in reversed(t.shape))
    if t.tensor_type in (T.F32, T.F16):
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)


@pytest.mark.parametrize("config", ["tiny", "tiny-alt"])
def test_vision_keys(converted_model, config):
    reader = _reader(converted_model(config, "hf", "f32"), "f32")
    assert reader.fields["general.architecture"].contents() == G.ARCH == "got-vision"
    expected = _expected_keys(synth.CONFIGS[config])
    assert set(G.KEY_TYPES) == set(expected)
    for key, (types, value) in expected.items():
        got_types, got_value = _value(reader, key)
        assert (key, got_types) == (key, types)
        assert got_value == value, key


@pytest.mark.parametrize("config,outtype", [
    ("tiny", "f32"), ("tiny", "f16"), ("tiny", "bf16"), ("tiny", "q8_0"), ("tiny-alt", "q8_0"),
])
def test_vision_tensors(converted_model, synth_checkpoint, config, outtype):
    cfg = synth.CONFIGS[config]
    reader = _reader(converted_model(config, "hf", outtype), outtype)
    ckpt = load_file(str(synth_checkpoint(config, "hf") / "model.safetensors"))
    expected = _expected_tensors(cfg)
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(expected)
    for name, (src, shape, kind) in expected.items():
        t = got[name]
        assert tuple(int(x) for x in reversed(t.shape)) == shape, name  # ggml ne is reversed
        assert t.tensor_type == _expected_type(kind, outtype, shape), name
        want = ckpt[src]
        data = _as_float(t)
        if t.tensor_type == T.F32:
            np.testing.assert_array_equal(data, want, err_msg=name)
        elif t.tensor_type == T.F16:
            np.testing.assert_array_equal(data, want.astype(np.float16).astype(np.float32), err_msg=name)
        else:  # bf16 / q8_0: within the type's rounding
            scale = np.abs(want).max(axis=-1, keepdims=True)
            tol = scale / 127 if t.tensor_type == T.Q8_0 else np.abs(want) / 128
            assert np.all(np.abs(data - want) <= tol + 1e-12), name


def test_vision_q8_0_has_quantized_and_fallback(converted_model):
    """tiny-alt has rows of 48 (not whole q8_0 blocks) and of 64 / 96: both paths are exercised."""
    reader = _reader(converted_model("tiny-alt", "hf", "q8_0"), "q8_0")
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["v.blk.0.attn_qkv.weight"] == T.F16  # [144, 48]
    assert types["v.blk.0.ffn_down.weight"] == T.Q8_0  # [48, 96]
    assert types["mm.proj.weight"] == T.Q8_0  # [64, 64]
