"""GGUF keys and tensor names of the vision GGUF (``general.architecture = "got-vision"``).

The one place these strings live in Python (docs/ARCHITECTURE.md has the table with shapes and
types; native/got_vision.cpp mirrors them in C++). Dependency-free so the runtime can import it.

Tensor shapes are given in numpy/PyTorch order as written by gguf-py (ggml ``ne`` is reversed).
"""

from __future__ import annotations

ARCH = "got-vision"

# --- hyper-parameter keys -------------------------------------------------------------------
KEY_IMAGE_SIZE = f"{ARCH}.image_size"  # u32
KEY_PATCH_SIZE = f"{ARCH}.patch_size"  # u32
KEY_NUM_CHANNELS = f"{ARCH}.num_channels"  # u32
# D, the width of the ViT blocks, as llama.cpp's GGUF convention has it (`{arch}.embedding_length`
# is the width of the blocks; llama.cpp's CLIP files use `clip.vision.embedding_length` the same
# way). The encoder's output width is KEY_PROJECTION_DIM.
KEY_EMBEDDING_LENGTH = f"{ARCH}.embedding_length"  # u32, D
KEY_BLOCK_COUNT = f"{ARCH}.block_count"  # u32
KEY_HEAD_COUNT = f"{ARCH}.attention.head_count"  # u32, H
KEY_FEED_FORWARD_LENGTH = f"{ARCH}.feed_forward_length"  # u32, F
KEY_LAYER_NORM_EPS = f"{ARCH}.attention.layer_norm_epsilon"  # f32
KEY_WINDOW_SIZE = f"{ARCH}.window_size"  # u32, S for windowed blocks
KEY_GLOBAL_ATTENTION_LAYERS = f"{ARCH}.global_attention_layers"  # arr[u32]
KEY_USE_ABS_POS = f"{ARCH}.use_abs_pos"  # bool
KEY_USE_REL_POS = f"{ARCH}.use_rel_pos"  # bool
KEY_NECK_CHANNELS = f"{ARCH}.neck.channels"  # u32, N
KEY_NECK_LAYER_NORM_EPS = f"{ARCH}.neck.layer_norm_epsilon"  # f32
KEY_PROJECTOR_CHANNELS = f"{ARCH}.projector.channels"  # u32, 2N (first stride-2 conv)
# E, the width of each image token's embedding (the projector's output = the LM hidden size); the
# name llama.cpp's CLIP files give the same quantity (`clip.vision.projection_dim`). Vision GGUFs
# written by earlier converters carry E as `got-vision.projector.output_length` instead; the loader
# (native/got_vision.cpp) reads that name when this one is absent, so those files stay loadable.
KEY_PROJECTION_DIM = f"{ARCH}.projection_dim"  # u32, E
KEY_IMAGE_TOKEN_COUNT = f"{ARCH}.image_token_count"  # u32, tokens per view
KEY_IMAGE_MEAN = f"{ARCH}.image_mean"  # arr[f32] (3)
KEY_IMAGE_STD = f"{ARCH}.image_std"  # arr[f32] (3)

KEY_TYPES: dict[str, str] = {
    KEY_IMAGE_SIZE: "u32",
    KEY_PATCH_SIZE: "u32",
    KEY_NUM_CHANNELS: "u32",
    KEY_EMBEDDING_LENGTH: "u32",
    KEY_BLOCK_COUNT: "u32",
    KEY_HEAD_COUNT: "u32",
    KEY_FEED_FORWARD_LENGTH: "u32",
    KEY_LAYER_NORM_EPS: "f32",
    KEY_WINDOW_SIZE: "u32",
    KEY_GLOBAL_ATTENTION_LAYERS: "arr[u32]",
    KEY_USE_ABS_POS: "bool",
    KEY_USE_REL_POS: "bool",
    KEY_NECK_CHANNELS: "u32",
    KEY_NECK_LAYER_NORM_EPS: "f32",
    KEY_PROJECTOR_CHANNELS: "u32",
    KEY_PROJECTION_DIM: "u32",
    KEY_IMAGE_TOKEN_COUNT: "u32",
    KEY_IMAGE_MEAN: "arr[f32]",
    KEY_IMAGE_STD: "arr[f32]",
}
"""Every hyper-parameter key of the vision GGUF and its GGUF value type."""

# --- tensors (whole model) --------------------------------------------------------------------
PATCH_EMBD_WEIGHT = "v.patch_embd.weight"  # [D, C, P, P]
PATCH_EMBD_BIAS = "v.patch_embd.bias"  # [D]
POS_EMBD = "v.pos_embd"  # [1, G, G, D]  (only when use_abs_pos)
NECK_CONV1_WEIGHT = "v.neck.conv1.weight"  # [N, D, 1, 1]
NECK_LN1_WEIGHT = "v.neck.ln1.weight"  # [N]
NECK_LN1_BIAS = "v.neck.ln1.bias"  # [N]
NECK_CONV2_WEIGHT = "v.neck.conv2.weight"  # [N, N, 3, 3]
NECK_LN2_WEIGHT = "v.neck.ln2.weight"  # [N]
NECK_LN2_BIAS = "v.neck.ln2.bias"  # [N]
MM_CONV1_WEIGHT = "mm.conv1.weight"  # [2N, N, 3, 3]
MM_CONV2_WEIGHT = "mm.conv2.weight"  # [E, 2N, 3, 3]
MM_PROJ_WEIGHT = "mm.proj.weight"  # [E, E]
MM_PROJ_BIAS = "mm.proj.bias"  # [E]

# --- tensors (per block; format with i=block index) ------------------------------------------
BLK_LN1_WEIGHT = "v.blk.{i}.ln1.weight"  # [D]
BLK_LN1_BIAS = "v.blk.{i}.ln1.bias"  # [D]
BLK_ATTN_QKV_WEIGHT = "v.blk.{i}.attn_qkv.weight"  # [3D, D]
BLK_ATTN_QKV_BIAS = "v.blk.{i}.attn_qkv.bias"  # [3D]
BLK_ATTN_OUT_WEIGHT = "v.blk.{i}.attn_out.weight"  # [D, D]
BLK_ATTN_OUT_BIAS = "v.blk.{i}.attn_out.bias"  # [D]
BLK_ATTN_REL_POS_H = "v.blk.{i}.attn_rel_pos_h"  # [2S-1, D/H]  (only when use_rel_pos)
BLK_ATTN_REL_POS_W = "v.blk.{i}.attn_rel_pos_w"  # [2S-1, D/H]
BLK_LN2_WEIGHT = "v.blk.{i}.ln2.weight"  # [D]
BLK_LN2_BIAS = "v.blk.{i}.ln2.bias"  # [D]
BLK_FFN_UP_WEIGHT = "v.blk.{i}.ffn_up.weight"  # [F, D]
BLK_FFN_UP_BIAS = "v.blk.{i}.ffn_up.bias"  # [F]
BLK_FFN_DOWN_WEIGHT = "v.blk.{i}.ffn_down.weight"  # [D, F]
BLK_FFN_DOWN_BIAS = "v.blk.{i}.ffn_down.bias"  # [D]

BLOCK_TENSORS: tuple[str, ...] = (
    BLK_LN1_WEIGHT,
    BLK_LN1_BIAS,
    BLK_ATTN_QKV_WEIGHT,
    BLK_ATTN_QKV_BIAS,
    BLK_ATTN_OUT_WEIGHT,
    BLK_ATTN_OUT_BIAS,
    BLK_ATTN_REL_POS_H,
    BLK_ATTN_REL_POS_W,
    BLK_LN2_WEIGHT,
    BLK_LN2_BIAS,
    BLK_FFN_UP_WEIGHT,
    BLK_FFN_UP_BIAS,
    BLK_FFN_DOWN_WEIGHT,
    BLK_FFN_DOWN_BIAS,
)

MATMUL_WEIGHTS: tuple[str, ...] = (
    BLK_ATTN_QKV_WEIGHT,
    BLK_ATTN_OUT_WEIGHT,
    BLK_FFN_UP_WEIGHT,
    BLK_FFN_DOWN_WEIGHT,
    MM_PROJ_WEIGHT,
)
"""2-D matmul weights (templates): stored in the ``--outtype`` (q8_0 falls back to f16 for a
tensor whose row length is not a multiple of 32, the q8_0 block size)."""

CONV_WEIGHTS: tuple[str, ...] = (PATCH_EMBD_WEIGHT, NECK_CONV1_WEIGHT, NECK_CONV2_WEIGHT, MM_CONV1_WEIGHT, MM_CONV2_WEIGHT)
"""Conv kernels: f32 for ``--outtype f32``, f16 otherwise. Every other tensor is always f32."""


def block_tensor(template: str, i: int) -> str:
    """The name of block ``i``'s tensor for a ``BLK_*`` template."""
    return template.format(i=i)
