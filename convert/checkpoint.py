"""Read a GOT checkpoint folder (either layout) and convert it to the two GGUFs.

``open_checkpoint`` finds the weights, config and tokenizer, maps tensor names to one canonical
spelling (:mod:`.names`) and derives every hyper-parameter, checking each tensor's shape against
them. ``convert_checkpoint`` writes ``got-text-<outtype>.gguf`` and ``got-vision-<outtype>.gguf``
under temporary names in the output folder and renames them only when both are complete.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gotocr_fast import tokens

from . import names as N
from .errors import ConvertError
from .tensors import TensorRef, open_tensors, weight_files
from .vocab import QwenBpe, load_qwen_bpe, read_tokenizer_json

TEXT_FILENAME = "got-text-{outtype}.gguf"
VISION_FILENAME = "got-vision-{outtype}.gguf"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VISION_LAYER_NORM_EPS = 1e-6  # GOT's SAM blocks (original layout has no vision config)
NECK_LAYER_NORM_EPS = 1e-6  # fixed in both GOT's code and transformers' GotOcr2LayerNorm


@dataclass(frozen=True)
class ModelFiles:
    """The two GGUFs of a converted model."""

    text: Path
    vision: Path


@dataclass(frozen=True)
class TextParams:
    """Qwen2 hyper-parameters (llama.cpp ``qwen2`` keys)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_dim: int
    rope_theta: float
    rms_norm_eps: float
    context_length: int
    tied: bool


@dataclass(frozen=True)
class VisionParams:
    """got-vision hyper-parameters (docs/ARCHITECTURE.md)."""

    image_size: int
    patch_size: int
    num_channels: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    layer_norm_eps: float
    window_size: int  # 0 when every block attends globally
    global_layers: tuple[int, ...]
    use_abs_pos: bool
    use_rel_pos: bool
    neck_channels: int
    neck_layer_norm_eps: float
    projector_channels: int
    projection_dim: int  # E: the projector's output width (= LM hidden size)
    image_token_count: int
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class Checkpoint:
    """An opened checkpoint: canonical name → stored tensor, hyper-parameters, tokenizer."""

    src: Path
    layout: str
    config: dict
    tensors: dict[str, TensorRef]
    text: TextParams
    vision: VisionParams
    bpe: QwenBpe
    specials: dict[str, int] = field(default_factory=dict)

    def get(self, canonical: str) -> TensorRef:
        try:
            return self.tensors[canonical]
        except KeyError:
            raise ConvertError(f"missing tensor {self.describe(canonical)} in {self.src}") from None

    def describe(self, canonical: str) -> str:
        """A tensor's name as this layout spells it (for messages)."""
        if self.layout == N.LAYOUT_HF:
            return repr(canonical)
        return f"{canonical!r} ({_original_spelling(canonical)!r} in the GOT-OCR2.0 layout)"


def _original_spelling(canonical: str) -> str:
    rules = (
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
        (N.LM_PREFIX, "model."),
    )
    for old, new in rules:
        if canonical.startswith(old):
            return (new + canonical[len(old):]).replace(".layer_norm1.", ".norm1.").replace(".layer_norm2.", ".norm2.")
    return canonical


# ---------------------------------------------------------------------------------------------
# Opening


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertError(f"cannot read {path}: {exc}") from None
    if not isinstance(value, dict):
        raise ConvertError(f"{path} is not a JSON object")
    return value


def open_checkpoint(src_dir: str | Path) -> Checkpoint:
    """Open and validate a GOT checkpoint folder of either layout (reads no tensor data)."""
    src = Path(src_dir)
    if not src.is_dir():
        raise ConvertError(f"{src} is not a folder (expected a GOT checkpoint folder)")
    files = weight_files(src)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConvertError(f"no config.json in {src}")
    config = _read_json(config_path)
    stored = open_tensors(files)
    layout = N.detect_layout(config, stored)
    mapping = N.canonicalize(stored, layout)
    tensors = {canonical: stored[name] for canonical, name in mapping.items()}
    if not any(c.startswith(N.LM_PREFIX) for c in tensors):
        raise ConvertError(f"no GOT language-model tensors in {src} (layout {layout})")

    ckpt = Checkpoint(src=src, layout=layout, config=config, tensors=tensors,
                      text=None, vision=None, bpe=None)  # type: ignore[arg-type]
    ckpt.text = _text_params(ckpt)
    ckpt.vision = _vision_params(ckpt)
    ckpt.bpe, ckpt.specials = _tokenizer(ckpt)
    return ckpt


def _expect_shape(ckpt: Checkpoint, canonical: str, shape: tuple[int, ...]) -> TensorRef:
    ref = ckpt.get(canonical)
    if tuple(ref.shape) != tuple(shape):
        raise ConvertError(
            f"shape mismatch for {ckpt.describe(canonical)}: expected {list(shape)}, found {list(ref.shape)}"
        )
    return ref


def _cfg_int(cfg: dict, key: str, where: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConvertError(f"config.json{where}: {key!r} is missing or not an integer")
    return value


def _block_indices(tensors: dict[str, TensorRef], prefix: str) -> int:
    """Number of blocks ``prefix{i}.`` (indices must run 0..n-1)."""
    found = set()
    for name in tensors:
        if name.startswith(prefix):
            head = name[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    if found != set(range(len(found))):
        missing = sorted(set(range(max(found) + 1)) - found)
        raise ConvertError(f"missing tensor(s) of block(s) {missing} under {prefix!r}")
    return len(found)


def _text_params(ckpt: Checkpoint) -> TextParams:
    cfg = ckpt.config
    where = ""
    if ckpt.layout == N.LAYOUT_HF and isinstance(cfg.get("text_config"), dict):
        cfg, where = cfg["text_config"], "[text_config]"
    lm = N.LM_PREFIX
    embed = ckpt.get(lm + "embed_tokens.weight")
    if len(embed.shape) != 2:
        raise ConvertError(f"shape mismatch for {ckpt.describe(lm + 'embed_tokens.weight')}: not 2-D")
    vocab, hidden = embed.shape
    if _cfg_int(cfg, "hidden_size", where) != hidden:
        raise ConvertError(f"shape mismatch: config.json{where} hidden_size {cfg['hidden_size']} but the "
                           f"embeddings are {list(embed.shape)}")
    if "vocab_size" in cfg and cfg["vocab_size"] != vocab:
        raise ConvertError(f"shape mismatch: config.json{where} vocab_size {cfg['vocab_size']} but the "
                           f"embeddings have {vocab} rows")
    n_layers = _cfg_int(cfg, "num_hidden_layers", where)
    found_layers = _block_indices(ckpt.tensors, lm + "layers.")
    if found_layers != n_layers:
        raise ConvertError(f"config.json{where} has num_hidden_layers {n_layers} but the checkpoint has "
                           f"{found_layers} language-model layers")
    heads = _cfg_int(cfg, "num_attention_heads", where)
    kv_heads = cfg.get("num_key_value_heads") or heads
    q_rows = ckpt.get(lm + "layers.0.self_attn.q_proj.weight").shape[0]
    head_dim = cfg.get("head_dim") or q_rows // heads
    if q_rows != heads * head_dim or heads % kv_heads:
        raise ConvertError(f"shape mismatch: q_proj has {q_rows} rows, not num_attention_heads {heads} × "
                           f"head_dim {head_dim} (num_key_value_heads {kv_heads})")
    ffn = _cfg_int(cfg, "intermediate_size", where)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise ConvertError(f"config.json{where}: rope type {rope_type!r} is not supported (only default RoPE)")
    rope_theta = float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0)
    if cfg.get("use_sliding_window"):
        raise ConvertError(f"config.json{where}: use_sliding_window is not supported")

    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    for i in range(n_layers):
        p = f"{lm}layers.{i}."
        for name, shape in (
            ("input_layernorm.weight", (hidden,)),
            ("self_attn.q_proj.weight", (q_dim, hidden)),
            ("self_attn.q_proj.bias", (q_dim,)),
            ("self_attn.k_proj.weight", (kv_dim, hidden)),
            ("self_attn.k_proj.bias", (kv_dim,)),
            ("self_attn.v_proj.weight", (kv_dim, hidden)),
            ("self_attn.v_proj.bias", (kv_dim,)),
            ("self_attn.o_proj.weight", (hidden, q_dim)),
            ("post_attention_layernorm.weight", (hidden,)),
            ("mlp.gate_proj.weight", (ffn, hidden)),
            ("mlp.up_proj.weight", (ffn, hidden)),
            ("mlp.down_proj.weight", (hidden, ffn)),
        ):
            _expect_shape(ckpt, p + name, shape)
    _expect_shape(ckpt, lm + "norm.weight", (hidden,))
    tied = True
    if N.LM_HEAD not in ckpt.tensors and cfg.get("tie_word_embeddings", ckpt.config.get("tie_word_embeddings")) is False:
        ckpt.get(N.LM_HEAD)  # untied by config but no head: missing tensor
    if N.LM_HEAD in ckpt.tensors:
        head = _expect_shape(ckpt, N.LM_HEAD, (vocab, hidden))
        tied = _same_data(head, embed)
    return TextParams(
        vocab_size=vocab, hidden_size=hidden, num_layers=n_layers, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, ffn_dim=ffn, rope_theta=rope_theta,
        rms_norm_eps=float(cfg.get("rms_norm_eps") or 1e-6),
        context_length=int(cfg.get("max_position_embeddings") or 32768), tied=tied,
    )


def _same_data(a: TensorRef, b: TensorRef, rows: int = 8192) -> bool:
    """Whether two same-shape tensors hold identical values (compared in row chunks)."""
    if a.file == b.file and a.name == b.name:
        return True
    x, y = a.load(), b.load()
    return all(np.array_equal(x[i:i + rows], y[i:i + rows]) for i in range(0, x.shape[0], rows))


def _vision_params(ckpt: Checkpoint) -> VisionParams:
    """The vision tower's sizes, read from the tensor shapes (and checked against the hf config
    where it states them), then every tensor's shape checked."""
    vt, mm = N.VISION_PREFIX, N.PROJECTOR_PREFIX
    vcfg = ckpt.config.get("vision_config") if ckpt.layout == N.LAYOUT_HF else None
    vcfg = vcfg if isinstance(vcfg, dict) else {}
    patch = ckpt.get(vt + "patch_embed.projection.weight")
    if len(patch.shape) != 4 or patch.shape[2] != patch.shape[3]:
        raise ConvertError(f"shape mismatch for {ckpt.describe(vt + 'patch_embed.projection.weight')}: "
                           f"expected [D, C, P, P], found {list(patch.shape)}")
    hidden, channels, psize, _ = patch.shape
    # The hf config says whether the tensors must exist; the original layout always has both.
    use_abs_pos = bool(vcfg.get("use_abs_pos", True)) if vcfg else vt + "pos_embed" in ckpt.tensors
    use_rel_pos = bool(vcfg.get("use_rel_pos", True)) if vcfg else vt + "layers.0.attn.rel_pos_h" in ckpt.tensors
    grid = _vision_grid(ckpt, vcfg, psize, use_abs_pos)
    n_layers = _block_indices(ckpt.tensors, vt + "layers.")
    if n_layers == 0:
        raise ConvertError(f"missing tensor {ckpt.describe(vt + 'layers.0.attn.qkv.weight')} in {ckpt.src}")
    if "num_hidden_layers" in vcfg and vcfg["num_hidden_layers"] != n_layers:
        raise ConvertError(f"vision_config num_hidden_layers {vcfg['num_hidden_layers']} but the checkpoint "
                           f"has {n_layers} vision blocks")
    heads = _vision_heads(ckpt, vcfg, hidden, use_rel_pos)
    window, global_layers = _attention_extents(ckpt, vcfg, grid, n_layers, use_rel_pos)
    mlp_dim = ckpt.get(vt + "layers.0.mlp.lin1.weight").shape[0]
    eps = float(vcfg.get("layer_norm_eps", VISION_LAYER_NORM_EPS))

    neck = ckpt.get(vt + "neck.conv1.weight").shape[0]
    proj_channels = ckpt.get(mm + "conv_upsampler1.weight").shape[0]
    out_len = ckpt.get(mm + "conv_upsampler2.weight").shape[0]
    if out_len != ckpt.text.hidden_size:
        raise ConvertError(f"shape mismatch: the projector outputs {out_len} channels but the language "
                           f"model's hidden size is {ckpt.text.hidden_size}")
    if "output_channels" in vcfg and vcfg["output_channels"] != neck:
        raise ConvertError(f"shape mismatch: vision_config output_channels {vcfg['output_channels']} but "
                           f"the neck has {neck} channels")

    params = VisionParams(
        image_size=grid * psize, patch_size=psize, num_channels=channels, hidden_size=hidden,
        num_layers=n_layers, num_heads=heads, mlp_dim=mlp_dim, layer_norm_eps=eps, window_size=window,
        global_layers=tuple(sorted(global_layers)), use_abs_pos=use_abs_pos, use_rel_pos=use_rel_pos,
        neck_channels=neck, neck_layer_norm_eps=NECK_LAYER_NORM_EPS, projector_channels=proj_channels,
        projection_dim=out_len, image_token_count=_tokens_after_projector(grid) ** 2,
    )
    for name, shape in _expected_vision_shapes(params, grid):
        _expect_shape(ckpt, name, shape)
    return params


def _vision_grid(ckpt: Checkpoint, vcfg: dict, psize: int, use_abs_pos: bool) -> int:
    """Patches per side: from the position embedding, else from the config's image size."""
    vt = N.VISION_PREFIX
    if use_abs_pos:
        grid = ckpt.get(vt + "pos_embed").shape[1]
    elif "image_size" in vcfg:
        grid = int(vcfg["image_size"]) // psize
    else:
        raise ConvertError(f"missing tensor {ckpt.describe(vt + 'pos_embed')}: the image size cannot be inferred")
    if "image_size" in vcfg and int(vcfg["image_size"]) != grid * psize:
        raise ConvertError(f"shape mismatch: vision_config image_size {vcfg['image_size']} but pos_embed gives "
                           f"{grid * psize}")
    if "patch_size" in vcfg and int(vcfg["patch_size"]) != psize:
        raise ConvertError(f"shape mismatch: vision_config patch_size {vcfg['patch_size']} but the patch "
                           f"embedding kernel is {psize}")
    return grid


def _vision_heads(ckpt: Checkpoint, vcfg: dict, hidden: int, use_rel_pos: bool) -> int:
    """Attention heads: the relative-position tables are one head wide; else the config says."""
    vt = N.VISION_PREFIX
    if use_rel_pos:
        head_dim = ckpt.get(vt + "layers.0.attn.rel_pos_h").shape[1]
        heads = hidden // head_dim
        if "num_attention_heads" in vcfg and vcfg["num_attention_heads"] != heads:
            raise ConvertError(f"shape mismatch: vision_config num_attention_heads {vcfg['num_attention_heads']}"
                               f" but rel_pos has head size {head_dim} of hidden {hidden}")
    elif "num_attention_heads" in vcfg:
        heads = int(vcfg["num_attention_heads"])
    else:
        raise ConvertError(f"missing tensor {ckpt.describe(vt + 'layers.0.attn.rel_pos_h')}: the vision "
                           f"head count cannot be inferred")
    if hidden % heads:
        raise ConvertError(f"vision hidden size {hidden} is not a multiple of {heads} heads")
    return heads


def _attention_extents(ckpt: Checkpoint, vcfg: dict, grid: int, n_layers: int,
                       use_rel_pos: bool) -> tuple[int, tuple[int, ...]]:
    """(window size, global blocks). Without a config they come from the relative-position
    tables: 2S - 1 rows, S = the grid (a global block) or the window."""
    vt = N.VISION_PREFIX
    if use_rel_pos and not vcfg:
        sides = [(ckpt.get(f"{vt}layers.{i}.attn.rel_pos_h").shape[0] + 1) // 2 for i in range(n_layers)]
        global_layers = tuple(i for i, s in enumerate(sides) if s == grid)
        windows = {s for s in sides if s != grid}
        if len(windows) > 1:
            raise ConvertError(f"shape mismatch: vision blocks use different window sizes {sorted(windows)}")
        return (windows.pop() if windows else 0), global_layers
    window = int(vcfg.get("window_size", 14))
    global_layers = tuple(int(i) for i in vcfg.get("global_attn_indexes", (2, 5, 8, 11)))
    if window == 0:
        global_layers = tuple(range(n_layers))
    if any(not 0 <= i < n_layers for i in global_layers):
        raise ConvertError(f"vision_config global_attn_indexes {list(global_layers)} outside 0..{n_layers - 1}")
    return window, global_layers


def _tokens_after_projector(grid: int) -> int:
    side = grid
    for _ in range(2):  # two conv k3 s2 p1: ceil(n / 2) each
        side = (side + 1) // 2
    return side


def _expected_vision_shapes(v: VisionParams, grid: int) -> list[tuple[str, tuple[int, ...]]]:
    """Every vision and projector tensor the sizes imply, with its shape."""
    vt, mm = N.VISION_PREFIX, N.PROJECTOR_PREFIX
    d, f, hd = v.hidden_size, v.mlp_dim, v.hidden_size // v.num_heads
    expected: list[tuple[str, tuple[int, ...]]] = [(vt + "patch_embed.projection.bias", (d,))]
    if v.use_abs_pos:
        expected.append((vt + "pos_embed", (1, grid, grid, d)))
    for i in range(v.num_layers):
        p = f"{vt}layers.{i}."
        side = grid if i in v.global_layers else v.window_size
        expected += [
            (p + "layer_norm1.weight", (d,)), (p + "layer_norm1.bias", (d,)),
            (p + "attn.qkv.weight", (3 * d, d)), (p + "attn.qkv.bias", (3 * d,)),
            (p + "attn.proj.weight", (d, d)), (p + "attn.proj.bias", (d,)),
            (p + "layer_norm2.weight", (d,)), (p + "layer_norm2.bias", (d,)),
            (p + "mlp.lin1.weight", (f, d)), (p + "mlp.lin1.bias", (f,)),
            (p + "mlp.lin2.weight", (d, f)), (p + "mlp.lin2.bias", (d,)),
        ]
        if v.use_rel_pos:
            expected += [(p + "attn.rel_pos_h", (2 * side - 1, hd)), (p + "attn.rel_pos_w", (2 * side - 1, hd))]
    neck, out = v.neck_channels, v.projection_dim
    expected += [
        (vt + "neck.conv1.weight", (neck, d, 1, 1)),
        (vt + "neck.layer_norm1.weight", (neck,)), (vt + "neck.layer_norm1.bias", (neck,)),
        (vt + "neck.conv2.weight", (neck, neck, 3, 3)),
        (vt + "neck.layer_norm2.weight", (neck,)), (vt + "neck.layer_norm2.bias", (neck,)),
        (mm + "conv_upsampler1.weight", (v.projector_channels, neck, 3, 3)),
        (mm + "conv_upsampler2.weight", (out, v.projector_channels, 3, 3)),
        (mm + "multimodal_projector.weight", (out, out)),
        (mm + "multimodal_projector.bias", (out,)),
    ]
    return expected


def _tokenizer(ckpt: Checkpoint) -> tuple[QwenBpe, dict[str, int]]:
    """The checkpoint's own tokenizer: tokenizer.json (hf) or qwen.tiktoken (original)."""
    src = ckpt.src
    tokenizer_json, tiktoken_file = src / "tokenizer.json", src / "qwen.tiktoken"
    if ckpt.layout == N.LAYOUT_HF and tokenizer_json.is_file():
        bpe = read_tokenizer_json(tokenizer_json)
        specials = dict(bpe.specials)
    elif tiktoken_file.is_file():
        bpe = load_qwen_bpe(tiktoken_file)
        specials = dict(tokens.SPECIAL_TOKENS)  # GOT's tokenization_qwen.py defines them in code
    elif tokenizer_json.is_file():
        bpe = read_tokenizer_json(tokenizer_json)
        specials = dict(bpe.specials)
    else:
        raise ConvertError(f"no tokenizer in {src}: expected tokenizer.json or qwen.tiktoken")
    where = tokenizer_json if ckpt.layout == N.LAYOUT_HF and tokenizer_json.is_file() else tiktoken_file
    if len(bpe.tokens) != tokens.BPE_RANK_COUNT:
        raise ConvertError(f"unreadable tokenizer {where}: {len(bpe.tokens)} BPE tokens, GOT's Qwen "
                           f"vocabulary has {tokens.BPE_RANK_COUNT}")
    for text, token_id in tokens.SPECIAL_TOKENS.items():
        if specials.get(text) != token_id:
            raise ConvertError(f"unreadable tokenizer {where}: special token {text!r} has id "
                               f"{specials.get(text)}, GOT uses {token_id}")
    top = max([len(bpe.tokens) - 1, *specials.values()])
    if top >= ckpt.text.vocab_size:
        raise ConvertError(f"tokenizer {where} has token id {top} but the embeddings have only "
                           f"{ckpt.text.vocab_size} rows")
    return bpe, specials


# ---------------------------------------------------------------------------------------------
# Conversion


def convert_checkpoint(src_dir: str | Path, out_dir: str | Path, outtype: str | None = None,
                       progress: bool = True) -> ModelFiles:
    """Convert a GOT checkpoint folder into ``out_dir``/got-{text,vision}-<outtype>.gguf
    (``outtype`` None: ``gguf_io.DEFAULT_OUTTYPE``).

    Output appears only when complete: both files are written under temporary names in
    ``out_dir`` and renamed at the end; on any failure (or Ctrl-C) the temporaries are removed
    and ``out_dir`` is removed again if this call created it.
    """
    from tqdm.auto import tqdm

    from .gguf_io import DEFAULT_OUTTYPE, check_outtype, vision_outtype
    from .text_gguf import plan_text, write_text_gguf
    from .vision_gguf import plan_vision, write_vision_gguf

    outtype = DEFAULT_OUTTYPE if outtype is None else outtype
    check_outtype(outtype)
    ckpt = open_checkpoint(src_dir)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConvertError(f"output {out} exists and is not a folder")
    created = not out.exists()
    vision_type = vision_outtype(outtype)
    final = ModelFiles(text=out / TEXT_FILENAME.format(outtype=outtype),
                       vision=out / VISION_FILENAME.format(outtype=vision_type))
    temps: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)

        def temp_for(target: Path) -> Path:
            # Hidden, unique, in the output folder (same file system: the final rename is atomic).
            temp = out / f".{target.name}.{uuid.uuid4().hex[:12]}.partial"
            temps.append(temp)
            return temp

        text_plan = plan_text(ckpt, outtype)
        vision_plan = plan_vision(ckpt, vision_type)
        total = sum(t.nbytes for t in text_plan) + sum(t.nbytes for t in vision_plan)
        with tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not progress) as bar:
            text_tmp = temp_for(final.text)
            write_text_gguf(ckpt, text_plan, text_tmp, outtype, bar.update, temp_for)
            vision_tmp = temp_for(final.vision)
            write_vision_gguf(ckpt, vision_plan, vision_tmp, vision_type, bar.update)
        os.replace(text_tmp, final.text)
        os.replace(vision_tmp, final.vision)
        temps.clear()
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if created:
            try:
                out.rmdir()
            except OSError:
                pass
        raise
    return final
