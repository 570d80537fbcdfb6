"""The vision GGUF (``got-vision``): SAM encoder + neck + projector, as docs/ARCHITECTURE.md fixes.

Key and tensor names come from :mod:`gotocr_fast.ggml_names`. Types by ``--outtype``: the 2-D
matmul weights take the outtype (q8_0 through gguf-py's quantizer; a tensor whose rows are not
whole q8_0 blocks of 32 stays f16), conv kernels are f32 for ``f32`` and f16 otherwise, every
other tensor (norms, biases, ``pos_embd``, ``rel_pos``) is f32.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf

from gotocr_fast import ggml_names as G

from . import names as N
from .checkpoint import Checkpoint
from .gguf_io import FILE_TYPES, OUTTYPES, PlannedTensor, QType, fits_q8_0, write_gguf

_BLOCK_SOURCES: dict[str, str] = {
    G.BLK_LN1_WEIGHT: "layer_norm1.weight",
    G.BLK_LN1_BIAS: "layer_norm1.bias",
    G.BLK_ATTN_QKV_WEIGHT: "attn.qkv.weight",
    G.BLK_ATTN_QKV_BIAS: "attn.qkv.bias",
    G.BLK_ATTN_OUT_WEIGHT: "attn.proj.weight",
    G.BLK_ATTN_OUT_BIAS: "attn.proj.bias",
    G.BLK_ATTN_REL_POS_H: "attn.rel_pos_h",
    G.BLK_ATTN_REL_POS_W: "attn.rel_pos_w",
    G.BLK_LN2_WEIGHT: "layer_norm2.weight",
    G.BLK_LN2_BIAS: "layer_norm2.bias",
    G.BLK_FFN_UP_WEIGHT: "mlp.lin1.weight",
    G.BLK_FFN_UP_BIAS: "mlp.lin1.bias",
    G.BLK_FFN_DOWN_WEIGHT: "mlp.lin2.weight",
    G.BLK_FFN_DOWN_BIAS: "mlp.lin2.bias",
}

_NECK_AND_PROJECTOR: tuple[tuple[str, str], ...] = (
    (G.NECK_CONV1_WEIGHT, N.VISION_PREFIX + "neck.conv1.weight"),
    (G.NECK_LN1_WEIGHT, N.VISION_PREFIX + "neck.layer_norm1.weight"),
    (G.NECK_LN1_BIAS, N.VISION_PREFIX + "neck.layer_norm1.bias"),
    (G.NECK_CONV2_WEIGHT, N.VISION_PREFIX + "neck.conv2.weight"),
    (G.NECK_LN2_WEIGHT, N.VISION_PREFIX + "neck.layer_norm2.weight"),
    (G.NECK_LN2_BIAS, N.VISION_PREFIX + "neck.layer_norm2.bias"),
    (G.MM_CONV1_WEIGHT, N.PROJECTOR_PREFIX + "conv_upsampler1.weight"),
    (G.MM_CONV2_WEIGHT, N.PROJECTOR_PREFIX + "conv_upsampler2.weight"),
    (G.MM_PROJ_WEIGHT, N.PROJECTOR_PREFIX + "multimodal_projector.weight"),
    (G.MM_PROJ_BIAS, N.PROJECTOR_PREFIX + "multimodal_projector.bias"),
)


def tensor_names(ckpt: Checkpoint) -> list[tuple[str, str, str]]:
    """(canonical checkpoint name, GGUF name, name template) for every vision tensor, in file order."""
    vt = N.VISION_PREFIX
    triples = [
        (vt + "patch_embed.projection.weight", G.PATCH_EMBD_WEIGHT, G.PATCH_EMBD_WEIGHT),
        (vt + "patch_embed.projection.bias", G.PATCH_EMBD_BIAS, G.PATCH_EMBD_BIAS),
    ]
    if ckpt.vision.use_abs_pos:
        triples.append((vt + "pos_embed", G.POS_EMBD, G.POS_EMBD))
    for i in range(ckpt.vision.num_layers):
        for template in G.BLOCK_TENSORS:
            if template in (G.BLK_ATTN_REL_POS_H, G.BLK_ATTN_REL_POS_W) and not ckpt.vision.use_rel_pos:
                continue
            triples.append((f"{vt}layers.{i}.{_BLOCK_SOURCES[template]}", G.block_tensor(template, i), template))
    triples += [(src, dst, dst) for dst, src in _NECK_AND_PROJECTOR]
    return triples


def tensor_type(template: str, shape: tuple[int, ...], outtype: str) -> QType:
    """Storage type of a vision tensor (see the module docstring)."""
    if template in G.MATMUL_WEIGHTS:
        qtype = OUTTYPES[outtype]
        if qtype == QType.Q8_0 and not fits_q8_0(shape):
            return QType.F16
        return qtype
    if template in G.CONV_WEIGHTS:
        return QType.F32 if outtype == "f32" else QType.F16
    return QType.F32


def plan_vision(ckpt: Checkpoint, outtype: str) -> list[PlannedTensor]:
    plan = []
    for canonical, name, template in tensor_names(ckpt):
        ref = ckpt.get(canonical)
        shape = tuple(ref.shape)
        plan.append(PlannedTensor(name, shape, tensor_type(template, shape, outtype), ref.load))
    return plan


def _metadata(ckpt: Checkpoint, outtype: str) -> Callable[[gguf.GGUFWriter], None]:
    v = ckpt.vision
    U = gguf.GGUFValueType

    def add(w: gguf.GGUFWriter) -> None:
        w.add_name("GOT-OCR2 vision encoder")
        w.add_file_type(int(FILE_TYPES[outtype]))
        w.add_uint32(G.KEY_IMAGE_SIZE, v.image_size)
        w.add_uint32(G.KEY_PATCH_SIZE, v.patch_size)
        w.add_uint32(G.KEY_NUM_CHANNELS, v.num_channels)
        w.add_uint32(G.KEY_EMBEDDING_LENGTH, v.hidden_size)
        w.add_uint32(G.KEY_BLOCK_COUNT, v.num_layers)
        w.add_uint32(G.KEY_HEAD_COUNT, v.num_heads)
        w.add_uint32(G.KEY_FEED_FORWARD_LENGTH, v.mlp_dim)
        w.add_float32(G.KEY_LAYER_NORM_EPS, v.layer_norm_eps)
        w.add_uint32(G.KEY_WINDOW_SIZE, v.window_size)
        w.add_key_value(G.KEY_GLOBAL_ATTENTION_LAYERS, [int(i) for i in v.global_layers], U.ARRAY, sub_type=U.UINT32)
        w.add_bool(G.KEY_USE_ABS_POS, v.use_abs_pos)
        w.add_bool(G.KEY_USE_REL_POS, v.use_rel_pos)
        w.add_uint32(G.KEY_NECK_CHANNELS, v.neck_channels)
        w.add_float32(G.KEY_NECK_LAYER_NORM_EPS, v.neck_layer_norm_eps)
        w.add_uint32(G.KEY_PROJECTOR_CHANNELS, v.projector_channels)
        w.add_uint32(G.KEY_PROJECTION_DIM, v.projection_dim)
        w.add_uint32(G.KEY_IMAGE_TOKEN_COUNT, v.image_token_count)
        w.add_key_value(G.KEY_IMAGE_MEAN, [float(x) for x in v.image_mean], U.ARRAY, sub_type=U.FLOAT32)
        w.add_key_value(G.KEY_IMAGE_STD, [float(x) for x in v.image_std], U.ARRAY, sub_type=U.FLOAT32)

    return add


def write_vision_gguf(ckpt: Checkpoint, plan: list[PlannedTensor], path: Path, outtype: str,
                      on_progress: Callable[[int], None]) -> None:
    write_gguf(path, G.ARCH, _metadata(ckpt, outtype), plan, on_progress)
