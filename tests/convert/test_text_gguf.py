"""The text GGUF loads in llama.cpp and reproduces the transformers oracle's logits.

Oracle: ``tests/fixtures/<config>_text.npz`` (transformers 5.x on the seed-0 synth checkpoint:
full-vocab logits at the last position, top-32 ids/values at every position).
"""

from __future__ import annotations

import shutil

import gguf
import numpy as np
import pytest

from gotocr_fast import synth, tokens

ORACLES = {"tiny": "tiny_text", "tiny-alt": "tiny_alt_text"}

# (max, mean) |logit - oracle| per outtype; logits have std ~3, so a wrong tensor shows as ~3.
# f32 is the parity bar. q8_0 is loose because llama.cpp also quantizes the activations to q8_0
# for its dot products, and the tiny model's rows are only two q8_0 blocks long (measured: max
# 0.64, mean 0.10; bf16 max 0.14, mean 0.025; f16 max 0.017, mean 0.003).
TOLERANCE = {"f32": (1e-3, 1e-3), "f16": (0.05, 0.01), "bf16": (0.3, 0.05), "q8_0": (1.0, 0.15)}


def _compare(logits: np.ndarray, oracle, outtype: str) -> None:
    tol, mean_tol = TOLERANCE[outtype]
    ids, values = oracle["topk_ids"], oracle["topk_values"]
    assert logits.shape == (len(oracle["input_ids"]), tokens.VOCAB_SIZE)
    np.testing.assert_allclose(logits[-1], oracle["last_logits"], atol=tol, rtol=0)
    assert np.abs(logits[-1] - oracle["last_logits"]).mean() <= mean_tol
    picked = np.take_along_axis(logits, ids, axis=1)
    np.testing.assert_allclose(picked, values, atol=tol, rtol=0)
    # The whole distribution, not just the top: log-sum-exp per position.
    m = logits.max(axis=1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))
    np.testing.assert_allclose(lse, oracle["logsumexp"], atol=tol, rtol=0)


@pytest.mark.parametrize("config", ["tiny", "tiny-alt"])
@pytest.mark.parametrize("layout", ["hf", "original"])
def test_f32_logits_match_transformers(converted_model, oracle, llama_logits, config, layout):
    ref = oracle(ORACLES[config])
    model = converted_model(config, layout, "f32") / "got-text-f32.gguf"
    _compare(llama_logits(model, ref["input_ids"]), ref, "f32")


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_reduced_precision_logits_close(converted_model, oracle, llama_logits, outtype):
    ref = oracle(ORACLES["tiny"])
    model = converted_model("tiny", "hf", outtype) / f"got-text-{outtype}.gguf"
    logits = llama_logits(model, ref["input_ids"])
    _compare(logits, ref, outtype)
    assert not np.allclose(logits[-1], ref["last_logits"], atol=1e-6, rtol=0)  # it really is reduced


@pytest.mark.parametrize("outtype,weight_type", [
    ("f32", gguf.GGMLQuantizationType.F32), ("f16", gguf.GGMLQuantizationType.F16),
    ("bf16", gguf.GGMLQuantizationType.BF16), ("q8_0", gguf.GGMLQuantizationType.Q8_0),
])
def test_tensor_types(converted_model, read_gguf, outtype, weight_type):
    gg = read_gguf(converted_model("tiny", "hf", outtype) / f"got-text-{outtype}.gguf")
    types = {name: t[0] for name, t in gg.tensors.items()}
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight", "token_embd.weight"):
        assert types[name] == weight_type, name
    for name in ("blk.0.attn_norm.weight", "blk.0.attn_q.bias", "output_norm.weight"):
        assert types[name] == gguf.GGMLQuantizationType.F32, name


@pytest.mark.parametrize("config", ["tiny", "tiny-alt"])
def test_metadata(converted_model, read_gguf, config):
    t = synth.CONFIGS[config].text
    gg = read_gguf(converted_model(config, "hf", "f32") / "got-text-f32.gguf")

    def value(key):
        return gg.kv[key]

    assert value("general.architecture") == "qwen2"
    assert value("qwen2.embedding_length") == t.hidden_size
    assert value("qwen2.block_count") == t.num_layers
    assert value("qwen2.feed_forward_length") == t.ffn_dim
    assert value("qwen2.attention.head_count") == t.num_heads
    assert value("qwen2.attention.head_count_kv") == t.num_kv_heads
    assert value("qwen2.attention.layer_norm_rms_epsilon") == pytest.approx(t.rms_norm_eps, rel=1e-6)
    assert value("qwen2.rope.freq_base") == pytest.approx(t.rope_theta)
    assert value("qwen2.context_length") == t.max_position_embeddings
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.pre") == "qwen2"
    token_list = value("tokenizer.ggml.tokens")
    types = value("tokenizer.ggml.token_type")
    assert len(token_list) == len(types) == tokens.VOCAB_SIZE
    for text, token_id in tokens.SPECIAL_TOKENS.items():
        assert token_list[token_id] == text
        assert types[token_id] == gguf.TokenType.CONTROL
    assert set(types[: tokens.BPE_RANK_COUNT]) == {gguf.TokenType.NORMAL}
    assert value("tokenizer.ggml.eos_token_id") == tokens.IM_END_ID
    assert value("tokenizer.ggml.eot_token_id") == tokens.IM_END_ID
    assert value("tokenizer.ggml.bos_token_id") == tokens.ENDOFTEXT_ID
    assert value("tokenizer.ggml.add_bos_token") is False
    assert len(value("tokenizer.ggml.merges")) > tokens.BPE_RANK_COUNT - 256
    assert gg.kv_types["tokenizer.ggml.tokens"] == (9, 8)  # array of strings
    assert gg.kv_types["tokenizer.ggml.token_type"] == (9, 5)  # array of int32
    names = set(gg.tensors)
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd
    assert len(names) == 2 + 12 * t.num_layers


def test_llama_sees_gguf_vocab(converted_model):
    import llama_cpp

    from gotocr_fast.llama_load import open_stock_llama

    path = converted_model("tiny", "hf", "f32") / "got-text-f32.gguf"
    llm = open_stock_llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        assert llm.n_vocab() == tokens.VOCAB_SIZE
        assert llm.token_eos() == tokens.IM_END_ID
        vocab = llm._model.vocab
        assert llama_cpp.llama_vocab_is_eog(vocab, tokens.IM_END_ID)
        assert llama_cpp.llama_vocab_get_add_bos(vocab) is False
    finally:
        llm.close()


def test_untied_lm_head_is_written(tmp_path, synth_checkpoint, oracle, llama_logits, read_gguf):
    """An lm_head that differs from the embeddings becomes output.weight, and llama.cpp uses it."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from gotocr_fast.convert import convert_checkpoint

    src = tmp_path / "ckpt"
    shutil.copytree(synth_checkpoint("tiny", "original"), src)
    weights = load_file(str(src / "model.safetensors"))
    weights["lm_head.weight"] = weights["lm_head.weight"] * np.float32(2.0)
    save_file(weights, str(src / "model.safetensors"))
    files = convert_checkpoint(src, tmp_path / "out", outtype="f32", progress=False)
    ttype, shape, raw = read_gguf(files.text).tensors["output.weight"]
    assert (ttype, shape) == (gguf.GGMLQuantizationType.F32, weights["lm_head.weight"].shape)
    np.testing.assert_array_equal(raw.view(np.float32).reshape(shape), weights["lm_head.weight"])
    ref = oracle("tiny_text")
    logits = llama_logits(files.text, ref["input_ids"])
    np.testing.assert_allclose(logits[-1], 2.0 * ref["last_logits"], atol=2e-3, rtol=0)


def test_q8_0_weights_are_llama_quantized_checkpoint(converted_model, synth_checkpoint, read_gguf):
    """llama.cpp's quantizer got the real f32 weights: each q8_0 row is within its rounding."""
    from safetensors.numpy import load_file

    weights = load_file(str(synth_checkpoint("tiny", "hf") / "model.safetensors"))
    gg = read_gguf(converted_model("tiny", "hf", "q8_0") / "got-text-q8_0.gguf")
    for name, src in (("blk.1.ffn_up.weight", "language_model.model.layers.1.mlp.up_proj.weight"),
                      ("token_embd.weight", "language_model.model.embed_tokens.weight")):
        ttype, shape, raw = gg.tensors[name]
        assert ttype == gguf.GGMLQuantizationType.Q8_0
        got = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0).reshape(shape)
        want = weights[src]
        blocks = np.abs(want).reshape(shape[0], -1, 32).max(axis=-1, keepdims=True)
        # half a step of d = amax / 127, plus d's own f16 rounding times up to 127 steps (~0.07 d)
        tol = np.broadcast_to(blocks / 127 * 0.6 + 1e-7, blocks.shape[:2] + (32,)).reshape(shape)
        assert np.all(np.abs(got - want) <= tol), name


# --- llama.cpp's k-quant mixes -------------------------------------------------------------------
# synth's "kquant" config has 256-wide rows (the demo model's width) and one layer, so the mixes
# really write k-quant blocks (the tiny configs' 64-wide rows fall back to q5_0/q8_0).

KQUANT_BASE = {"q6_k": gguf.GGMLQuantizationType.Q6_K, "q5_k_m": gguf.GGMLQuantizationType.Q5_K,
               "q4_k_m": gguf.GGMLQuantizationType.Q4_K}
KQUANT_FILE_TYPE = {"q6_k": 18, "q5_k_m": 17, "q4_k_m": 15}  # llama_ftype: MOSTLY_Q6_K, Q5_K_M, Q4_K_M


@pytest.fixture(scope="module")
def kquant_models(tmp_path_factory, llama_logits, oracle):
    """The three mixes of one 256-wide checkpoint, and the f32 conversion's logits on the oracle
    prompt. Everything is deleted at the end: the checkpoint and the f32 GGUF are 150 MB each."""
    from gotocr_fast.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("kquant")
    src = synth.write_checkpoint(root / "ckpt", config="kquant", layout="hf")
    f32 = convert_checkpoint(src, root / "f32", outtype="f32", progress=False)
    exact = llama_logits(f32.text, oracle(ORACLES["tiny"])["input_ids"])
    shutil.rmtree(root / "f32")
    files = {t: convert_checkpoint(src, root / t, outtype=t, progress=False) for t in KQUANT_BASE}
    shutil.rmtree(src)
    yield files, exact
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("outtype", list(KQUANT_BASE))
def test_k_quant_mix(kquant_models, read_gguf, llama_logits, oracle, outtype):
    models, exact = kquant_models
    files = models[outtype]
    assert files.text.name == f"got-text-{outtype}.gguf"
    assert files.vision.name == "got-vision-f16.gguf"  # the vision model has no k-quant kernels
    gg = read_gguf(files.text)
    assert gg.kv["general.file_type"] == KQUANT_FILE_TYPE[outtype]
    types = {name: t[0] for name, t in gg.tensors.items()}
    assert types["blk.0.attn_q.weight"] == KQUANT_BASE[outtype]
    assert types["blk.0.ffn_gate.weight"] == KQUANT_BASE[outtype]
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    vision = read_gguf(files.vision)
    assert {t[0] for t in vision.tensors.values()} <= {gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32}

    got = llama_logits(files.text, oracle(ORACLES["tiny"])["input_ids"])
    err = np.abs(got - exact).mean() / exact.std()
    # Fewer bits, larger error; all well below a wrong tensor (error ~ 1 std).
    # Measured (mean |error| / logit std): q6_k 0.056, q5_k_m 0.082, q4_k_m 0.146. llama.cpp also
    # quantizes the activations for k-quant dot products, so even q6_k is far from f32.
    assert 0 < err < {"q6_k": 0.1, "q5_k_m": 0.15, "q4_k_m": 0.25}[outtype], err
