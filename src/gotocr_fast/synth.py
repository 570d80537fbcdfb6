"""Seeded random-weight GOT-OCR2 checkpoints, in either of the two layouts real ones come in.

There are no real GOT weights where the tests run, so correctness is shown by parity with
HF transformers on models made here. A checkpoint written by :func:`write_checkpoint` looks
exactly like a real one of its layout:

- ``layout="hf"``: what transformers 5.x ``GotOcr2ForConditionalGeneration.save_pretrained``
  writes: ``config.json`` (``model_type`` ``got_ocr2``), ``generation_config.json``,
  ``model.safetensors`` with the hub names (``language_model.model.*``, ``vision_tower.*``,
  ``multi_modal_projector.*``; no ``lm_head``, it is tied), ``preprocessor_config.json``, and the
  tokenizer files (``tokenizer.json`` from :mod:`gotocr_fast.convert.vocab`, ``tokenizer_config.json``).
- ``layout="original"``: the GOT-OCR2.0 release (``GOTQwenForCausalLM``): LM at ``model.*``,
  ``lm_head.weight`` stored equal to the embeddings, vision at ``model.vision_tower_high.*``
  (the two stride-2 convs are ``model.vision_tower_high.net_2``/``net_3``), projector at
  ``model.mm_projector_vary``; a ``config.json`` holding only the Qwen2 sizes and GOT's fields
  (vision sizes must be read from tensor shapes), and ``qwen.tiktoken``.

Both layouts of one seed hold the same tensors: every tensor is drawn from its own stream,
keyed by the seed and its canonical (hf) name, so a tensor never depends on which others
exist or on the order they are written in.

Weights follow the parity-friendly recipe in docs/MODEL.md ("Random-weight checkpoints"): N(0, 1/fan_in)
matrices, a larger gain on q/k so attention is not uniform, embeddings with std 0.05 and a
final norm scaled so logits have std ~3, norm weights 1 + small noise, non-trivial biases,
``pos_embed`` and ``rel_pos``. Everything is float32 (the real release is bf16; float32 keeps
the parity tests about our code, not about rounding).

numpy only: no torch here.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import shutil
import struct
import sys
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gotocr_fast import tokens
# GOT's normalisation constants live with the converter, which writes them into every vision GGUF.
from gotocr_fast.convert.checkpoint import CLIP_MEAN, CLIP_STD

LAYOUTS = ("hf", "original")

QK_GAIN = 1.3
"""Gain on q and k projections: scaled dot products get std ~QK_GAIN², so attention is peaked."""


@dataclass(frozen=True)
class VisionConfig:
    """Sizes of the SAM-style image encoder + neck + projector convs."""

    image_size: int = 1024
    patch_size: int = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    window_size: int = 14
    global_layers: tuple[int, ...] = (2, 5, 8, 11)
    neck_channels: int = 256
    layer_norm_eps: float = 1e-6
    num_channels: int = 3

    @property
    def grid(self) -> int:
        """Patches per side (G)."""
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def projector_channels(self) -> int:
        """Channels of the first stride-2 projector conv (``net_2``/``conv_upsampler1``)."""
        return 2 * self.neck_channels

    def attention_size(self, layer: int) -> int:
        """Side of the square a layer attends over: the window, or the whole grid if global."""
        return self.grid if layer in self.global_layers else self.window_size


@dataclass(frozen=True)
class TextConfig:
    """Sizes of the Qwen2 language model."""

    vocab_size: int = tokens.VOCAB_SIZE
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    num_kv_heads: int = 16
    ffn_dim: int = 2816
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class GotConfig:
    name: str
    vision: VisionConfig
    text: TextConfig

    @property
    def token_grid(self) -> int:
        """Image embeddings per side of a view: the patch grid after two stride-2 convs (= S/P/4)."""
        side = self.vision.grid
        for _ in range(2):
            side = (side + 1) // 2  # conv k3 s2 p1: ceil(n / 2)
        return side

    @property
    def tokens_per_view(self) -> int:
        """Image embeddings per view: ``token_grid`` squared."""
        return self.token_grid * self.token_grid

    @property
    def output_width(self) -> int:
        """E, the width of one image token's embedding (= LM hidden size)."""
        return self.text.hidden_size


CONFIGS: dict[str, GotConfig] = {
    # Test model: grid 16 pads to 21 for 7x7 windows (3x3 windows), 16 image tokens per view.
    "tiny": GotConfig(
        "tiny",
        VisionConfig(
            image_size=256, patch_size=16, hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128,
            window_size=7, global_layers=(1, 3), neck_channels=32,
        ),
        TextConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, ffn_dim=128),
    ),
    # Other shapes: grid 12 pads to 15 for 5x5 windows, a global first layer, 3 heads of 16,
    # neck 24 (projector 48), 9 image tokens per view; GQA LM (4 heads / 2 KV heads), 3 layers,
    # and another RoPE base / RMS eps so hard-coded values show.
    "tiny-alt": GotConfig(
        "tiny-alt",
        VisionConfig(
            image_size=192, patch_size=16, hidden_size=48, num_layers=3, num_heads=3, mlp_dim=96,
            window_size=5, global_layers=(0,), neck_channels=24,
        ),
        TextConfig(
            hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, ffn_dim=96,
            rope_theta=10_000.0, rms_norm_eps=1e-5,
        ),
    ),
    # The real GOT-OCR2 sizes (docs/MODEL.md, "Architecture").
    "full": GotConfig("full", VisionConfig(), TextConfig()),
}
# tiny's vision with a one-layer LM of 256-wide rows: the tiny rows (64) are shorter than a k-quant
# super-block (256 values), so llama.cpp falls back to q5_0/q8_0 there; here its k-quant mixes
# (and their q4_K repacking) really apply.
CONFIGS["kquant"] = GotConfig(
    "kquant", CONFIGS["tiny"].vision,
    TextConfig(hidden_size=256, num_layers=1, num_heads=4, num_kv_heads=4, ffn_dim=512),
)


# --------------------------------------------------------------------------------------------
# Tensor recipe


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: its canonical (hf hub) name, shape, and how to draw it."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "normal" (std * N(0,1)), "ones" (1 + std * N(0,1))
    std: float


def _tensor_specs(cfg: GotConfig) -> list[TensorSpec]:
    """Every tensor of the model, under the names transformers 5.x ``save_pretrained`` writes."""
    v, t = cfg.vision, cfg.text
    specs: list[TensorSpec] = []

    def normal(name: str, shape: tuple[int, ...], std: float) -> None:
        specs.append(TensorSpec(name, shape, "normal", std))

    def norm_weight(name: str, shape: tuple[int, ...]) -> None:
        specs.append(TensorSpec(name, shape, "ones", 0.1))

    d, hd = v.hidden_size, v.head_dim
    qk_gain = QK_GAIN
    vt = "vision_tower"
    normal(f"{vt}.patch_embed.projection.weight", (d, v.num_channels, v.patch_size, v.patch_size),
           (v.num_channels * v.patch_size**2) ** -0.5)
    normal(f"{vt}.patch_embed.projection.bias", (d,), 0.1)
    normal(f"{vt}.pos_embed", (1, v.grid, v.grid, d), 0.5)
    for i in range(v.num_layers):
        p = f"{vt}.layers.{i}"
        s = v.attention_size(i)
        norm_weight(f"{p}.layer_norm1.weight", (d,))
        normal(f"{p}.layer_norm1.bias", (d,), 0.1)
        # qkv rows are [q; k; v]; q and k get the gain (see _draw)
        specs.append(TensorSpec(f"{p}.attn.qkv.weight", (3 * d, d), "qkv", d**-0.5 * qk_gain))
        normal(f"{p}.attn.qkv.bias", (3 * d,), 0.1)
        normal(f"{p}.attn.proj.weight", (d, d), d**-0.5)
        normal(f"{p}.attn.proj.bias", (d,), 0.1)
        # q coords have std ~qk_gain: q . rel_pos then has std ~1
        normal(f"{p}.attn.rel_pos_h", (2 * s - 1, hd), 1.0 / (qk_gain * math.sqrt(hd)))
        normal(f"{p}.attn.rel_pos_w", (2 * s - 1, hd), 1.0 / (qk_gain * math.sqrt(hd)))
        norm_weight(f"{p}.layer_norm2.weight", (d,))
        normal(f"{p}.layer_norm2.bias", (d,), 0.1)
        normal(f"{p}.mlp.lin1.weight", (v.mlp_dim, d), d**-0.5)
        normal(f"{p}.mlp.lin1.bias", (v.mlp_dim,), 0.1)
        normal(f"{p}.mlp.lin2.weight", (d, v.mlp_dim), v.mlp_dim**-0.5)
        normal(f"{p}.mlp.lin2.bias", (d,), 0.1)
    n = v.neck_channels
    normal(f"{vt}.neck.conv1.weight", (n, d, 1, 1), d**-0.5)
    norm_weight(f"{vt}.neck.layer_norm1.weight", (n,))
    normal(f"{vt}.neck.layer_norm1.bias", (n,), 0.1)
    normal(f"{vt}.neck.conv2.weight", (n, n, 3, 3), (9 * n) ** -0.5)
    norm_weight(f"{vt}.neck.layer_norm2.weight", (n,))
    normal(f"{vt}.neck.layer_norm2.bias", (n,), 0.1)

    e, c = t.hidden_size, v.projector_channels
    mm = "multi_modal_projector"
    normal(f"{mm}.conv_upsampler1.weight", (c, n, 3, 3), (9 * n) ** -0.5)
    normal(f"{mm}.conv_upsampler2.weight", (e, c, 3, 3), (9 * c) ** -0.5)
    normal(f"{mm}.multimodal_projector.weight", (e, e), e**-0.5)
    normal(f"{mm}.multimodal_projector.bias", (e,), 0.1)

    lm = "language_model.model"
    q_dim, kv_dim = t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
    normal(f"{lm}.embed_tokens.weight", (t.vocab_size, e), 0.05)
    for i in range(t.num_layers):
        p = f"{lm}.layers.{i}"
        norm_weight(f"{p}.input_layernorm.weight", (e,))
        normal(f"{p}.self_attn.q_proj.weight", (q_dim, e), e**-0.5 * qk_gain)
        normal(f"{p}.self_attn.q_proj.bias", (q_dim,), 0.1)
        normal(f"{p}.self_attn.k_proj.weight", (kv_dim, e), e**-0.5 * qk_gain)
        normal(f"{p}.self_attn.k_proj.bias", (kv_dim,), 0.1)
        normal(f"{p}.self_attn.v_proj.weight", (kv_dim, e), e**-0.5)
        normal(f"{p}.self_attn.v_proj.bias", (kv_dim,), 0.1)
        normal(f"{p}.self_attn.o_proj.weight", (e, q_dim), q_dim**-0.5)
        norm_weight(f"{p}.post_attention_layernorm.weight", (e,))
        normal(f"{p}.mlp.gate_proj.weight", (t.ffn_dim, e), e**-0.5)
        normal(f"{p}.mlp.up_proj.weight", (t.ffn_dim, e), e**-0.5)
        normal(f"{p}.mlp.down_proj.weight", (e, t.ffn_dim), t.ffn_dim**-0.5)
    # Tied head: logits = rmsnorm(h) * w @ embed.T; each logit is a sum of e terms of std
    # |w| * 0.05, so |w| = 3 / (0.05 sqrt(e)) gives logits std ~3.
    specs.append(TensorSpec(f"{lm}.norm.weight", (e,), "final_norm", 3.0 / (0.05 * math.sqrt(e))))
    return specs


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode())])))


def _draw(spec: TensorSpec, seed: int, vision_hidden: int) -> np.ndarray:
    rng = _rng(seed, spec.name)
    x = rng.standard_normal(spec.shape, dtype=np.float32)
    if spec.kind == "normal":
        x *= np.float32(spec.std)
    elif spec.kind == "ones":
        x *= np.float32(spec.std)
        x += np.float32(1.0)
    elif spec.kind == "qkv":
        x *= np.float32(spec.std)
        x[2 * vision_hidden:] /= np.float32(QK_GAIN)  # v rows: no gain
    elif spec.kind == "final_norm":
        x *= np.float32(0.1)
        x += np.float32(1.0)
        x *= np.float32(spec.std)
    else:
        raise ValueError(f"unknown tensor kind {spec.kind!r}")
    return x


def _get_config(config: str | GotConfig) -> GotConfig:
    if isinstance(config, GotConfig):
        return config
    try:
        return CONFIGS[config]
    except KeyError:
        raise ValueError(f"unknown config {config!r}; choose from {sorted(CONFIGS)}") from None


def canonical_names(config: str | GotConfig = "tiny") -> list[str]:
    """The canonical (hf hub) names of every tensor, in generation order."""
    return [s.name for s in _tensor_specs(_get_config(config))]


def tensors(config: str | GotConfig = "tiny", seed: int = 0,
            include: Callable[[str], bool] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (canonical hf name, float32 array) for every tensor of the seeded model.

    ``include(name)`` picks tensors without drawing the others (e.g. only the vision tower).
    """
    cfg = _get_config(config)
    for spec in _tensor_specs(cfg):
        if include is None or include(spec.name):
            yield spec.name, _draw(spec, seed, cfg.vision.hidden_size)


# --------------------------------------------------------------------------------------------
# Layout names


def original_name(hf_name: str) -> str:
    """The GOT-OCR2.0 release's name for a tensor's hf hub name."""
    renames = (
        ("language_model.model.", "model."),
        ("vision_tower.patch_embed.projection.", "model.vision_tower_high.patch_embed.proj."),
        ("vision_tower.neck.conv1.", "model.vision_tower_high.neck.0."),
        ("vision_tower.neck.layer_norm1.", "model.vision_tower_high.neck.1."),
        ("vision_tower.neck.conv2.", "model.vision_tower_high.neck.2."),
        ("vision_tower.neck.layer_norm2.", "model.vision_tower_high.neck.3."),
        ("vision_tower.layers.", "model.vision_tower_high.blocks."),
        ("vision_tower.", "model.vision_tower_high."),
        ("multi_modal_projector.conv_upsampler1.", "model.vision_tower_high.net_2."),
        ("multi_modal_projector.conv_upsampler2.", "model.vision_tower_high.net_3."),
        ("multi_modal_projector.multimodal_projector.", "model.mm_projector_vary."),
    )
    for old, new in renames:
        if hf_name.startswith(old):
            name = new + hf_name[len(old):]
            if new == "model.vision_tower_high.blocks.":
                name = name.replace(".layer_norm1.", ".norm1.").replace(".layer_norm2.", ".norm2.")
            return name
    raise ValueError(f"no original name for {hf_name!r}")


def layout_names(config: str | GotConfig, layout: str) -> dict[str, str]:
    """Map canonical hf name → the name stored in ``layout`` (the original also has ``lm_head``)."""
    names = canonical_names(config)
    if layout == "hf":
        return {n: n for n in names}
    if layout == "original":
        return {n: original_name(n) for n in names}
    raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")


EMBED_NAME = "language_model.model.embed_tokens.weight"


# --------------------------------------------------------------------------------------------
# safetensors (written by hand: streamed tensor by tensor, byte-for-byte deterministic)


def _write_safetensors(path: Path, entries: Sequence[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]],
                       holes: Collection[str] = ()) -> None:
    """Write float32 tensors; ``entries`` are (name, shape, make) with make() drawing the array.

    Tensors named in ``holes`` are all zeros, left as holes of a sparse file: they cost no disk
    blocks where the file system supports holes (and read back as zeros everywhere)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in entries:
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as safetensors itself writes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, make in entries:
            if name in holes:
                f.seek(4 * math.prod(shape), io.SEEK_CUR)
                continue
            arr = make()
            if arr.shape != tuple(shape) or arr.dtype != np.float32:
                raise AssertionError(f"{name}: drew {arr.dtype} {arr.shape}, declared {shape}")
            f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
        f.truncate()  # a hole at the end still counts towards the file's length


# --------------------------------------------------------------------------------------------
# Config / tokenizer files


def _hf_config(cfg: GotConfig) -> dict:
    v, t = cfg.vision, cfg.text
    return {
        "architectures": ["GotOcr2ForConditionalGeneration"],
        "dtype": "float32",
        "image_seq_length": cfg.tokens_per_view,
        "image_token_index": tokens.IMG_PAD_ID,
        "model_type": "got_ocr2",
        "text_config": {
            "attention_dropout": 0.0,
            "bos_token_id": tokens.ENDOFTEXT_ID,
            "eos_token_id": tokens.ENDOFTEXT_ID,
            "hidden_act": "silu",
            "hidden_size": t.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": t.ffn_dim,
            "layer_types": ["full_attention"] * t.num_layers,
            "max_position_embeddings": t.max_position_embeddings,
            "max_window_layers": t.num_layers,
            "model_type": "qwen2",
            "num_attention_heads": t.num_heads,
            "num_hidden_layers": t.num_layers,
            "num_key_value_heads": t.num_kv_heads,
            "pad_token_id": None,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"},
            "sliding_window": None,
            "tie_word_embeddings": True,
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": t.vocab_size,
        },
        "tie_word_embeddings": True,
        "transformers_version": "5.24.0",
        "vision_config": {
            "attention_dropout": 0.0,
            "global_attn_indexes": list(v.global_layers),
            "hidden_act": "gelu",
            "hidden_size": v.hidden_size,
            "image_size": v.image_size,
            "initializer_range": 1e-10,
            "layer_norm_eps": v.layer_norm_eps,
            "mlp_dim": v.mlp_dim,
            "model_type": "got_ocr2_vision",
            "num_attention_heads": v.num_heads,
            "num_channels": v.num_channels,
            "num_hidden_layers": v.num_layers,
            "output_channels": v.neck_channels,
            "patch_size": v.patch_size,
            "qkv_bias": True,
            "use_abs_pos": True,
            "use_rel_pos": True,
            "window_size": v.window_size,
        },
    }


def _hf_generation_config() -> dict:
    return {
        "_from_model_config": True,
        "bos_token_id": tokens.ENDOFTEXT_ID,
        "eos_token_id": tokens.ENDOFTEXT_ID,
        "transformers_version": "5.24.0",
        "use_cache": True,
    }


def _hf_preprocessor_config(cfg: GotConfig) -> dict:
    s = cfg.vision.image_size
    return {
        "crop_to_patches": False,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_processor_type": "GotOcr2ImageProcessor",
        "image_std": list(CLIP_STD),
        "max_patches": 12,
        "min_patches": 1,
        "processor_class": "GotOcr2Processor",
        "resample": 3,  # PIL bicubic
        "rescale_factor": 1 / 255,
        "size": {"height": s, "width": s},
    }


def _hf_tokenizer_config() -> dict:
    added = {
        str(i): {
            "content": text, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for text, i in tokens.SPECIAL_TOKENS.items()
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": tokens.ENDOFTEXT,
        "clean_up_tokenization_spaces": True,
        "eos_token": tokens.ENDOFTEXT,
        "extra_special_tokens": [t for t in tokens.SPECIAL_TOKENS if t != tokens.ENDOFTEXT],
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 8000,
        "pad_token": tokens.ENDOFTEXT,
        "processor_class": "GotOcr2Processor",
        "tokenizer_class": "TokenizersBackend",
    }


def _original_config(cfg: GotConfig) -> dict:
    """GOT-OCR2.0's config.json: Qwen2 sizes and GOT's fields only (no vision sizes)."""
    t = cfg.text
    return {
        "architectures": ["GOTQwenForCausalLM"],
        "auto_map": {
            "AutoConfig": "modeling_GOT.GOTConfig",
            "AutoModel": "modeling_GOT.GOTQwenForCausalLM",
        },
        "attention_dropout": 0.0,
        "bos_token_id": tokens.ENDOFTEXT_ID,
        "eos_token_id": tokens.ENDOFTEXT_ID,
        "freeze_vision_tower": False,
        "hidden_act": "silu",
        "hidden_size": t.hidden_size,
        "im_end_token": tokens.IMG_END_ID,
        "im_patch_token": tokens.IMG_PAD_ID,
        "im_start_token": tokens.IMG_START_ID,
        "image_token_len": cfg.tokens_per_view,
        "initializer_range": 0.02,
        "intermediate_size": t.ffn_dim,
        "max_position_embeddings": t.max_position_embeddings,
        "max_window_layers": t.num_layers,
        "model_type": "GOT",
        "num_attention_heads": t.num_heads,
        "num_hidden_layers": t.num_layers,
        "num_key_value_heads": t.num_kv_heads,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_theta,
        "sliding_window": t.max_position_embeddings,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "transformers_version": "4.37.2",
        "use_cache": True,
        "use_im_start_end": True,
        "use_sliding_window": False,
        "vocab_size": t.vocab_size,
    }


def _original_tokenizer_config() -> dict:
    return {
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
        "model_max_length": 8000,
        "padding_side": "right",
        "tokenizer_class": "QWenTokenizer",
    }


def qwen_tiktoken_path() -> Path:
    """``qwen.tiktoken`` (GOT's tokenizer ranks): the package's bundled copy of dashscope 2.0.2's file."""
    from gotocr_fast.convert.vocab import find_qwen_tiktoken

    return Path(find_qwen_tiktoken())


@functools.lru_cache(maxsize=1)
def _qwen_bpe():
    from gotocr_fast.convert.vocab import load_qwen_bpe

    return load_qwen_bpe(qwen_tiktoken_path())


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_hf_tokenizer(out: Path) -> None:
    """tokenizer.json from the real Qwen ranks + GOT's specials, via gotocr_fast.convert.vocab."""
    from gotocr_fast.convert.vocab import write_tokenizer_json

    write_tokenizer_json(out / "tokenizer.json", _qwen_bpe(), tokens.SPECIAL_TOKENS)


def _write_hf_files(out: Path, cfg: GotConfig) -> None:
    """Everything of a transformers-layout checkpoint except the weights."""
    _write_json(out / "config.json", _hf_config(cfg))
    _write_json(out / "generation_config.json", _hf_generation_config())
    _write_json(out / "preprocessor_config.json", _hf_preprocessor_config(cfg))
    _write_json(out / "tokenizer_config.json", _hf_tokenizer_config())
    _write_hf_tokenizer(out)


# --------------------------------------------------------------------------------------------
# Public API


def write_hf_checkpoint(out_dir: str | Path, config: GotConfig, weights: dict[str, np.ndarray]) -> Path:
    """Write given weights (transformers hub names, see :func:`canonical_names`) as a checkpoint
    of the transformers layout, with the config, preprocessor and tokenizer files of ``config``."""
    expected = set(canonical_names(config))
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ValueError(f"weights do not match the config: missing {missing[:5]}, unexpected {extra[:5]}")
    shapes = {s.name: s.shape for s in _tensor_specs(config)}
    for name, arr in weights.items():
        if tuple(arr.shape) != shapes[name]:
            raise ValueError(f"{name}: shape {tuple(arr.shape)}, the config needs {shapes[name]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = [(name, shapes[name], (lambda a=weights[name]: np.ascontiguousarray(a, dtype=np.float32)))
               for name in sorted(weights)]
    _write_safetensors(out / "model.safetensors", entries)
    _write_hf_files(out, config)
    return out


def write_checkpoint(out_dir: str | Path, config: str | GotConfig = "tiny", layout: str = "hf",
                     seed: int = 0, zeros: Collection[str] = ()) -> Path:
    """Write a seeded random-weight GOT checkpoint directory of ``layout``; returns the directory.

    ``zeros``: canonical (transformers) names of tensors written as zeros, as sparse-file holes —
    for checkpoints of which a test uses only a part (the full vision tower without its 0.6 GB
    token embedding)."""
    cfg = _get_config(config)
    names = layout_names(cfg, layout)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    specs = _tensor_specs(cfg)
    hv = cfg.vision.hidden_size
    entries = [(names[s.name], s.shape, (lambda s=s: _draw(s, seed, hv))) for s in specs]
    if layout == "original":
        embed = next(s for s in specs if s.name == EMBED_NAME)
        entries.append(("lm_head.weight", embed.shape, lambda: _draw(embed, seed, hv)))
    entries.sort(key=lambda e: e[0])
    unknown = set(zeros) - {s.name for s in specs}
    if unknown:
        raise ValueError(f"no such tensors: {sorted(unknown)}")
    _write_safetensors(out / "model.safetensors", entries, holes={names[n] for n in zeros})

    if layout == "hf":
        _write_hf_files(out, cfg)
    else:
        _write_json(out / "config.json", _original_config(cfg))
        _write_json(out / "generation_config.json", {
            "_from_model_config": True, "bos_token_id": tokens.ENDOFTEXT_ID,
            "eos_token_id": tokens.ENDOFTEXT_ID, "transformers_version": "4.37.2",
        })
        _write_json(out / "special_tokens_map.json", {"pad_token": tokens.ENDOFTEXT})
        _write_json(out / "tokenizer_config.json", _original_tokenizer_config())
        shutil.copyfile(qwen_tiktoken_path(), out / "qwen.tiktoken")
    return out


# --------------------------------------------------------------------------------------------
# Deterministic test inputs (version-proof: a counter hash, not a numpy RNG stream)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def synth_image_u8(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic noise image, uint8 [H, W, 3] (RGB): byte k = top byte of splitmix64(seed·2^40 + k)."""
    idx = np.arange(height * width * 3, dtype=np.uint64) + np.uint64(seed) * np.uint64(1 << 40)
    return (_splitmix64(idx) >> np.uint64(56)).astype(np.uint8).reshape(height, width, 3)


def synth_pixels(image_size: int, n_views: int = 2, seed: int = 0) -> np.ndarray:
    """Normalised pixel input float32 [n_views, 3, S, S] for vision parity tests.

    View i is ``synth_image_u8(S, S, seed + i)`` scaled by 1/255 and normalised with the CLIP
    mean/std (computed in float32: ``(u8 / 255 - mean) / std``), channels first.
    """
    views = []
    for i in range(n_views):
        u8 = synth_image_u8(image_size, image_size, seed + i)
        x = u8.astype(np.float32) / np.float32(255.0)
        x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
        views.append(x.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(views), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# CLI: gotocr synth --config tiny --layout hf OUT


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gotocr synth",
                                     description="Write a seeded random-weight GOT checkpoint.")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    parser.add_argument("--layout", default="hf", choices=LAYOUTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_checkpoint(args.out, config=args.config, layout=args.layout, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
