"""The text GGUF: GOT's Qwen2 language model as llama.cpp architecture ``qwen2``.

Tensor names and keys are llama.cpp's ``qwen2`` ones; a stock llama.cpp / llama-cpp-python loads
the file. Types: ``f32`` everything f32; ``f16``/``bf16`` 2-D weights in that type and 1-D
tensors (norms, biases) f32; ``q8_0`` is written as f32 to a temporary file and quantized with
llama.cpp's own quantizer (``llama_model_quantize``, through llama-cpp-python), so the result is
exactly what llama.cpp's ``llama-quantize`` gives.

Tied embeddings: when the checkpoint has no ``lm_head`` or one equal to the embeddings, no
``output.weight`` is written and llama.cpp reuses ``token_embd.weight``.

Vocabulary: the embedding rows (151860 for GOT) are the token list: the 151643 byte-level BPE
tokens (NORMAL), then the special tokens (CONTROL); any id the tokenizer does not name becomes
``[PAD<id>]`` (UNUSED), as llama.cpp's own converter does. ``tokenizer.ggml.pre = "qwen2"``
splits digits one by one like Qwen's tiktoken pattern. Text must be NFC-normalised before
tokenizing (see :func:`gotocr_fast.convert.vocab.normalize_text`).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

import gguf

from gotocr_fast import tokens
from gotocr_fast.llama_log import llama_cpp_module

from . import names as N
from .checkpoint import Checkpoint
from .errors import ConvertError
from .gguf_io import FILE_TYPES, LLAMA_QUANTIZED, OUTTYPES, PlannedTensor, QType, write_gguf

ARCH = "qwen2"

CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou should follow the instructions carefully and explain your answers "
    "in detail.<|im_end|>' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""ChatML as GOT writes it: default system prompt, no newline after ``<|im_end|>``."""

_LAYER_TENSORS: tuple[tuple[str, str], ...] = (
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
)


def tensor_names(ckpt: Checkpoint) -> list[tuple[str, str]]:
    """(canonical checkpoint name, llama.cpp name) for every text tensor, in file order."""
    lm = N.LM_PREFIX
    pairs = [(lm + "embed_tokens.weight", "token_embd.weight")]
    for i in range(ckpt.text.num_layers):
        pairs += [(f"{lm}layers.{i}.{src}", f"blk.{i}.{dst}") for src, dst in _LAYER_TENSORS]
    pairs.append((lm + "norm.weight", "output_norm.weight"))
    if not ckpt.text.tied:
        pairs.append((N.LM_HEAD, "output.weight"))
    return pairs


def plan_text(ckpt: Checkpoint, outtype: str) -> list[PlannedTensor]:
    """The text tensors and their types (llama.cpp's quantized types plan f32: it quantizes afterwards)."""
    weight_type = QType.F32 if outtype == "f32" or outtype in LLAMA_QUANTIZED else OUTTYPES[outtype]
    plan = []
    for canonical, name in tensor_names(ckpt):
        ref = ckpt.get(canonical)
        qtype = weight_type if len(ref.shape) >= 2 else QType.F32
        plan.append(PlannedTensor(name, tuple(ref.shape), qtype, ref.load))
    return plan


def _token_list(ckpt: Checkpoint) -> tuple[list[str], list[int]]:
    size = ckpt.text.vocab_size
    texts: list[str | None] = [None] * size
    types = [int(gguf.TokenType.UNUSED)] * size
    for i, token in enumerate(ckpt.bpe.tokens):
        texts[i] = token
        types[i] = int(gguf.TokenType.NORMAL)
    for text, token_id in ckpt.specials.items():
        texts[token_id] = text
        types[token_id] = int(gguf.TokenType.CONTROL)
    return [t if t is not None else f"[PAD{i}]" for i, t in enumerate(texts)], types


def _metadata(ckpt: Checkpoint, file_type: gguf.LlamaFileType) -> Callable[[gguf.GGUFWriter], None]:
    p = ckpt.text

    def add(w: gguf.GGUFWriter) -> None:
        w.add_name("GOT-OCR2 language model")
        w.add_file_type(int(file_type))
        w.add_context_length(p.context_length)
        w.add_embedding_length(p.hidden_size)
        w.add_block_count(p.num_layers)
        w.add_feed_forward_length(p.ffn_dim)
        w.add_head_count(p.num_heads)
        w.add_head_count_kv(p.num_kv_heads)
        if p.head_dim * p.num_heads != p.hidden_size:
            w.add_key_length(p.head_dim)
            w.add_value_length(p.head_dim)
        w.add_layer_norm_rms_eps(p.rms_norm_eps)
        w.add_rope_freq_base(p.rope_theta)
        w.add_vocab_size(p.vocab_size)

        texts, types = _token_list(ckpt)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(texts)
        w.add_token_types(types)
        w.add_token_merges([f"{a} {b}" for a, b in ckpt.bpe.merges])
        w.add_bos_token_id(tokens.ENDOFTEXT_ID)
        w.add_eos_token_id(tokens.IM_END_ID)
        w.add_eot_token_id(tokens.IM_END_ID)
        w.add_pad_token_id(tokens.ENDOFTEXT_ID)
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
        w.add_chat_template(CHAT_TEMPLATE)

    return add


def _quantize(src: Path, dst: Path, outtype: str) -> None:
    """Quantize a GGUF with llama.cpp's own quantizer (through llama-cpp-python)."""
    try:
        # llama.cpp's log through ours: only errors unless a caller asked for more
        llama_cpp = llama_cpp_module()
    except ImportError:
        raise ConvertError(f"--outtype {outtype} needs llama-cpp-python (llama.cpp's quantizer)") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_QUANTIZED[outtype])
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        raise ConvertError(f"llama.cpp failed to quantize the text model to {outtype} (status {rc})")


def write_text_gguf(ckpt: Checkpoint, plan: list[PlannedTensor], path: Path, outtype: str,
                    on_progress: Callable[[int], None], temp_for: Callable[[Path], Path]) -> None:
    """Write the text GGUF to ``path`` (``temp_for`` gives extra temporary files in the output dir)."""
    if outtype not in LLAMA_QUANTIZED:
        write_gguf(path, ARCH, _metadata(ckpt, FILE_TYPES[outtype]), plan, on_progress)
        return
    staging = temp_for(path.with_name(path.name + ".f32"))
    try:
        write_gguf(staging, ARCH, _metadata(ckpt, FILE_TYPES["f32"]), plan, on_progress)
        _quantize(staging, path, outtype)
    finally:
        staging.unlink(missing_ok=True)
