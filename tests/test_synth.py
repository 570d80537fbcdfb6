"""gotocr_fast.synth: seeded checkpoints in both layouts.

Files are read back with the ``safetensors`` library (not our writer), expected names come from
the real GOT-OCR2.0 release's tensor listing and from what transformers 5.x ``save_pretrained``
writes, and the hf checkpoint is loaded by transformers itself where torch is installed.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file

from gotocr_fast import synth, tokens

TINY_CONFIGS = ("tiny", "tiny-alt")


def _load(ckpt):
    return load_file(str(ckpt / "model.safetensors"))


# --------------------------------------------------------------------------------------------
# determinism


def test_same_seed_same_bytes(tmp_path, tiny_hf_dir, tiny_original_dir):
    for layout, first in (("hf", tiny_hf_dir), ("original", tiny_original_dir)):
        again = synth.write_checkpoint(tmp_path / layout, "tiny", layout, seed=0)
        names = sorted(p.name for p in first.iterdir())
        assert names == sorted(p.name for p in again.iterdir())
        for name in names:
            assert (first / name).read_bytes() == (again / name).read_bytes(), (layout, name)


def test_other_seed_other_weights(tmp_path, tiny_hf_dir):
    other = _load(synth.write_checkpoint(tmp_path / "s1", "tiny", "hf", seed=1))
    base = _load(tiny_hf_dir)
    assert other.keys() == base.keys()
    for name in base:
        assert not np.array_equal(base[name], other[name]), name


def test_tensor_does_not_depend_on_config_neighbours():
    # each tensor has its own stream: a model with fewer LM layers shares every common tensor
    tiny = synth.CONFIGS["tiny"]
    smaller = dataclasses.replace(tiny, text=dataclasses.replace(tiny.text, num_layers=1))
    full = dict(synth.tensors(tiny, seed=3))
    part = dict(synth.tensors(smaller, seed=3))
    assert set(part) < set(full)
    for name in part:
        np.testing.assert_array_equal(part[name], full[name], err_msg=name)


# --------------------------------------------------------------------------------------------
# names


def _expected_original_names(cfg: synth.GotConfig) -> set[str]:
    """Names in the GOT-OCR2.0 release (``GOTQwenForCausalLM`` state dict), written out by hand."""
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(cfg.text.num_layers):
        p = f"model.layers.{i}."
        names |= {p + s for s in (
            "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
            "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
            "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
            "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight")}
    v = "model.vision_tower_high."
    names |= {v + "pos_embed", v + "patch_embed.proj.weight", v + "patch_embed.proj.bias"}
    for i in range(cfg.vision.num_layers):
        p = f"{v}blocks.{i}."
        names |= {p + s for s in (
            "norm1.weight", "norm1.bias", "attn.rel_pos_h", "attn.rel_pos_w", "attn.qkv.weight",
            "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
            "mlp.lin1.weight", "mlp.lin1.bias", "mlp.lin2.weight", "mlp.lin2.bias")}
    names |= {v + s for s in ("neck.0.weight", "neck.1.weight", "neck.1.bias", "neck.2.weight",
                              "neck.3.weight", "neck.3.bias", "net_2.weight", "net_3.weight")}
    names |= {"model.mm_projector_vary.weight", "model.mm_projector_vary.bias"}
    return names


def _expected_hf_names(cfg: synth.GotConfig) -> set[str]:
    """Names transformers 5.x ``GotOcr2ForConditionalGeneration.save_pretrained`` writes."""
    names = {"language_model.model.embed_tokens.weight", "language_model.model.norm.weight"}
    for i in range(cfg.text.num_layers):
        p = f"language_model.model.layers.{i}."
        names |= {p + s for s in (
            "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
            "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
            "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
            "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight")}
    v = "vision_tower."
    names |= {v + "pos_embed", v + "patch_embed.projection.weight", v + "patch_embed.projection.bias"}
    for i in range(cfg.vision.num_layers):
        p = f"{v}layers.{i}."
        names |= {p + s for s in (
            "layer_norm1.weight", "layer_norm1.bias", "attn.rel_pos_h", "attn.rel_pos_w",
            "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
            "layer_norm2.weight", "layer_norm2.bias", "mlp.lin1.weight", "mlp.lin1.bias",
            "mlp.lin2.weight", "mlp.lin2.bias")}
    names |= {v + s for s in ("neck.conv1.weight", "neck.layer_norm1.weight", "neck.layer_norm1.bias",
                              "neck.conv2.weight", "neck.layer_norm2.weight", "neck.layer_norm2.bias")}
    m = "multi_modal_projector."
    names |= {m + "conv_upsampler1.weight", m + "conv_upsampler2.weight",
              m + "multimodal_projector.weight", m + "multimodal_projector.bias"}
    return names


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_layout_names(config, synth_checkpoint):
    cfg = synth.CONFIGS[config]
    assert set(_load(synth_checkpoint(config, "hf"))) == _expected_hf_names(cfg)
    assert set(_load(synth_checkpoint(config, "original"))) == _expected_original_names(cfg)


def test_full_config_has_the_release_tensor_count():
    # the GOT-OCR2.0 release's state dict has 472 tensors (471 + lm_head)
    assert len(_expected_original_names(synth.CONFIGS["full"])) == 472
    assert {synth.original_name(n) for n in synth.canonical_names("full")} | {"lm_head.weight"} == (
        _expected_original_names(synth.CONFIGS["full"]))


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_both_layouts_hold_the_same_tensors(config, synth_checkpoint):
    hf = _load(synth_checkpoint(config, "hf"))
    orig = _load(synth_checkpoint(config, "original"))
    mapping = synth.layout_names(config, "original")
    assert len(mapping) == len(hf)
    assert len(set(mapping.values())) == len(mapping)
    for hf_name, arr in hf.items():
        assert arr.dtype == np.float32
        np.testing.assert_array_equal(orig[mapping[hf_name]], arr, err_msg=hf_name)
    np.testing.assert_array_equal(orig["lm_head.weight"], hf["language_model.model.embed_tokens.weight"])
    # spot-check the mapping by hand
    np.testing.assert_array_equal(orig["model.vision_tower_high.net_2.weight"],
                                  hf["multi_modal_projector.conv_upsampler1.weight"])
    np.testing.assert_array_equal(orig["model.vision_tower_high.neck.3.bias"],
                                  hf["vision_tower.neck.layer_norm2.bias"])
    np.testing.assert_array_equal(orig["model.vision_tower_high.blocks.0.norm2.weight"],
                                  hf["vision_tower.layers.0.layer_norm2.weight"])


def test_tensors_iterator_matches_file(tiny_hf_dir):
    stored = _load(tiny_hf_dir)
    drawn = dict(synth.tensors("tiny", seed=0))
    assert drawn.keys() == stored.keys()
    for name in stored:
        np.testing.assert_array_equal(drawn[name], stored[name], err_msg=name)


# --------------------------------------------------------------------------------------------
# shapes and configs


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_shapes_follow_config(config, synth_checkpoint):
    cfg = synth.CONFIGS[config]
    v, t = cfg.vision, cfg.text
    w = _load(synth_checkpoint(config, "hf"))
    d, g, e = v.hidden_size, v.image_size // v.patch_size, t.hidden_size
    hd = d // v.num_heads
    assert w["vision_tower.patch_embed.projection.weight"].shape == (d, 3, v.patch_size, v.patch_size)
    assert w["vision_tower.pos_embed"].shape == (1, g, g, d)
    for i in range(v.num_layers):
        s = g if i in v.global_layers else v.window_size
        assert w[f"vision_tower.layers.{i}.attn.rel_pos_h"].shape == (2 * s - 1, hd)
        assert w[f"vision_tower.layers.{i}.attn.rel_pos_w"].shape == (2 * s - 1, hd)
        assert w[f"vision_tower.layers.{i}.attn.qkv.weight"].shape == (3 * d, d)
        assert w[f"vision_tower.layers.{i}.mlp.lin1.weight"].shape == (v.mlp_dim, d)
    n = v.neck_channels
    assert w["vision_tower.neck.conv1.weight"].shape == (n, d, 1, 1)
    assert w["vision_tower.neck.conv2.weight"].shape == (n, n, 3, 3)
    assert w["multi_modal_projector.conv_upsampler1.weight"].shape == (2 * n, n, 3, 3)
    assert w["multi_modal_projector.conv_upsampler2.weight"].shape == (e, 2 * n, 3, 3)
    assert w["multi_modal_projector.multimodal_projector.weight"].shape == (e, e)
    hd_t = e // t.num_heads
    assert w["language_model.model.embed_tokens.weight"].shape == (151860, e)
    for i in range(t.num_layers):
        p = f"language_model.model.layers.{i}.self_attn."
        assert w[p + "q_proj.weight"].shape == (t.num_heads * hd_t, e)
        assert w[p + "k_proj.weight"].shape == (t.num_kv_heads * hd_t, e)
        assert w[p + "v_proj.bias"].shape == (t.num_kv_heads * hd_t,)
        assert w[f"language_model.model.layers.{i}.mlp.down_proj.weight"].shape == (e, t.ffn_dim)
    assert cfg.tokens_per_view == (v.image_size // v.patch_size // 4) ** 2


def test_config_sizes():
    full = synth.CONFIGS["full"]
    assert (full.vision.image_size, full.vision.patch_size, full.vision.hidden_size) == (1024, 16, 768)
    assert (full.vision.num_layers, full.vision.num_heads, full.vision.mlp_dim) == (12, 12, 3072)
    assert (full.vision.window_size, full.vision.global_layers, full.vision.neck_channels) == (14, (2, 5, 8, 11), 256)
    assert full.tokens_per_view == 256
    t = full.text
    assert (t.vocab_size, t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads, t.ffn_dim) == (
        151860, 1024, 24, 16, 16, 2816)
    assert (t.rope_theta, t.rms_norm_eps, t.max_position_embeddings) == (1e6, 1e-6, 32768)
    tiny, alt = synth.CONFIGS["tiny"], synth.CONFIGS["tiny-alt"]
    assert tiny.tokens_per_view == 16 and alt.tokens_per_view == 9
    # tiny-alt differs where it matters: window padding, globals, GQA
    assert alt.vision.window_size != tiny.vision.window_size
    assert alt.vision.grid % alt.vision.window_size != 0
    assert alt.vision.global_layers != tiny.vision.global_layers
    assert alt.text.num_kv_heads < alt.text.num_heads
    for cfg in synth.CONFIGS.values():
        assert cfg.text.vocab_size == tokens.VOCAB_SIZE


def test_full_specs_shapes_match_design():
    shapes = {s.name: s.shape for s in synth._tensor_specs(synth.CONFIGS["full"])}
    assert shapes["vision_tower.layers.0.attn.rel_pos_h"] == (27, 64)
    assert shapes["vision_tower.layers.2.attn.rel_pos_h"] == (127, 64)
    assert shapes["vision_tower.pos_embed"] == (1, 64, 64, 768)
    assert shapes["multi_modal_projector.conv_upsampler2.weight"] == (1024, 512, 3, 3)
    assert shapes["language_model.model.embed_tokens.weight"] == (151860, 1024)
    total = sum(math.prod(s) for s in shapes.values())
    assert 0.5e9 < total < 0.6e9  # GOT is ~560M parameters


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_hf_config_json(config, synth_checkpoint):
    cfg = synth.CONFIGS[config]
    c = json.loads((synth_checkpoint(config, "hf") / "config.json").read_text())
    assert c["model_type"] == "got_ocr2"
    assert c["architectures"] == ["GotOcr2ForConditionalGeneration"]
    assert c["image_token_index"] == 151859
    v, t = c["vision_config"], c["text_config"]
    assert (v["image_size"], v["patch_size"], v["hidden_size"], v["num_hidden_layers"]) == (
        cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.hidden_size, cfg.vision.num_layers)
    assert (v["window_size"], v["global_attn_indexes"], v["output_channels"], v["mlp_dim"]) == (
        cfg.vision.window_size, list(cfg.vision.global_layers), cfg.vision.neck_channels, cfg.vision.mlp_dim)
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"], t["num_key_value_heads"]) == (
        cfg.text.hidden_size, cfg.text.num_layers, cfg.text.num_heads, cfg.text.num_kv_heads)
    assert t["rope_parameters"]["rope_theta"] == cfg.text.rope_theta
    assert t["rms_norm_eps"] == cfg.text.rms_norm_eps
    assert t["vocab_size"] == 151860 and c["tie_word_embeddings"] is True
    pre = json.loads((synth_checkpoint(config, "hf") / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": cfg.vision.image_size, "width": cfg.vision.image_size}


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_original_config_json(config, synth_checkpoint):
    cfg = synth.CONFIGS[config]
    ckpt = synth_checkpoint(config, "original")
    c = json.loads((ckpt / "config.json").read_text())
    assert c["architectures"] == ["GOTQwenForCausalLM"]
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]) == (
        cfg.text.hidden_size, cfg.text.num_layers, cfg.text.num_heads, cfg.text.num_kv_heads)
    assert (c["intermediate_size"], c["rope_theta"], c["rms_norm_eps"], c["vocab_size"]) == (
        cfg.text.ffn_dim, cfg.text.rope_theta, cfg.text.rms_norm_eps, 151860)
    assert (c["im_start_token"], c["im_end_token"], c["im_patch_token"]) == (151857, 151858, 151859)
    assert c["image_token_len"] == cfg.tokens_per_view
    assert not any("vision" in k and k != "freeze_vision_tower" for k in c)  # vision sizes: from shapes only
    assert "vision_config" not in c and "text_config" not in c
    assert not (ckpt / "tokenizer.json").exists()


def test_original_ships_qwen_tiktoken(tiny_original_dir):
    from gotocr_fast.convert.vocab import find_qwen_tiktoken

    data = (tiny_original_dir / "qwen.tiktoken").read_bytes()
    assert data == find_qwen_tiktoken().read_bytes()
    assert len(data.splitlines()) == tokens.BPE_RANK_COUNT


def test_weight_statistics(tiny_hf_dir):
    w = _load(tiny_hf_dir)
    emb = w["language_model.model.embed_tokens.weight"]
    assert abs(float(emb.std()) - 0.05) < 0.002
    ln = w["vision_tower.layers.0.layer_norm1.weight"]
    assert abs(float(ln.mean()) - 1.0) < 0.05 and 0.03 < float(ln.std()) < 0.3
    # final norm scaled so logits std ~3: |w| ~ 3 / (0.05 sqrt(64)) = 7.5
    assert 6.0 < float(np.abs(w["language_model.model.norm.weight"]).mean()) < 9.0
    # q/k carry a gain over v
    qkv = w["vision_tower.layers.0.attn.qkv.weight"]
    d = qkv.shape[1]
    assert qkv[:d].std() > 1.15 * qkv[2 * d:].std()
    assert float(np.abs(w["vision_tower.pos_embed"]).mean()) > 0.1
    assert float(np.abs(w["vision_tower.layers.0.attn.rel_pos_h"]).mean()) > 0.05


# --------------------------------------------------------------------------------------------
# inputs


def test_synth_image_is_splitmix64():
    # splitmix64's first output for state 0 is 0xE220A8397B1DCDAF (the reference C code)
    assert synth.synth_image_u8(1, 1, seed=0)[0, 0, 0] == 0xE2
    a = synth.synth_image_u8(8, 5, seed=1)
    assert a.shape == (8, 5, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, synth.synth_image_u8(8, 5, seed=1))
    assert not np.array_equal(a, synth.synth_image_u8(8, 5, seed=2))
    assert 100 < a.mean() < 155


def test_synth_pixels_recipe():
    px = synth.synth_pixels(32, n_views=2, seed=5)
    assert px.shape == (2, 3, 32, 32) and px.dtype == np.float32 and px.flags.c_contiguous
    u8 = synth.synth_image_u8(32, 32, seed=6)  # view 1 = seed + 1
    expect = (u8[..., 1].astype(np.float64) / 255 - 0.4578275) / 0.26130258
    np.testing.assert_allclose(px[1, 1], expect, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# tokenizer and CLI


def test_hf_tokenizer_matches_tiktoken(tiny_hf_dir):
    tokenizers = pytest.importorskip("tokenizers")
    tiktoken = pytest.importorskip("tiktoken")
    from gotocr_fast.convert.vocab import QWEN_PATTERN, find_qwen_tiktoken, read_tiktoken_ranks

    enc = tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=read_tiktoken_ranks(find_qwen_tiktoken()),
                            special_tokens=dict(tokens.SPECIAL_TOKENS))
    tok = tokenizers.Tokenizer.from_file(str(tiny_hf_dir / "tokenizer.json"))
    text = "<|im_start|>user\n<img><imgpad></img>\nOCR with format: 第1章 Hello, 世界 ４２ 2024!<|im_end|>"
    assert tok.encode(text, add_special_tokens=False).ids == enc.encode(text, allowed_special="all")
    assert tok.get_vocab_size(with_added_tokens=True) == tokens.VOCAB_SIZE
    cfg = json.loads((tiny_hf_dir / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == "<|endoftext|>"


def test_cli_main(tmp_path, capsys):
    assert synth.main(["--config", "tiny-alt", "--layout", "original", "--seed", "2", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert str(tmp_path / "m") in capsys.readouterr().out
    w = _load(tmp_path / "m")
    ref = dict(synth.tensors("tiny-alt", seed=2))
    np.testing.assert_array_equal(w["model.mm_projector_vary.bias"], ref["multi_modal_projector.multimodal_projector.bias"])
    with pytest.raises(SystemExit):
        synth.main(["--config", "nope", str(tmp_path / "x")])


def test_unknown_layout_and_config(tmp_path):
    with pytest.raises(ValueError):
        synth.write_checkpoint(tmp_path, "tiny", layout="gguf")
    with pytest.raises(ValueError):
        synth.write_checkpoint(tmp_path, "huge")


# --------------------------------------------------------------------------------------------
# transformers loads it


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_transformers_loads_hf_checkpoint(config, synth_checkpoint):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ckpt = synth_checkpoint(config, "hf")
    model, info = transformers.GotOcr2ForConditionalGeneration.from_pretrained(
        ckpt, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    model.eval()
    stored = _load(ckpt)
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    np.testing.assert_array_equal(model.model.language_model.embed_tokens.weight.detach().numpy(),
                                  stored["language_model.model.embed_tokens.weight"])
    np.testing.assert_array_equal(model.model.vision_tower.layers[0].attn.rel_pos_h.detach().numpy(),
                                  stored["vision_tower.layers.0.attn.rel_pos_h"])
    cfg = synth.CONFIGS[config]
    assert model.config.text_config.rope_parameters["rope_theta"] == cfg.text.rope_theta
    with torch.no_grad():
        px = torch.from_numpy(synth.synth_pixels(cfg.vision.image_size, 2, seed=0))
        feats = model.model.get_image_features(px).pooler_output
        assert feats.shape == (2, cfg.tokens_per_view, cfg.text.hidden_size)
        assert 0.3 < float(feats.std()) < 3  # the parity recipe: not vanishing, not exploding
        assert float((feats[0] - feats[1]).std()) > 0.3  # different views → different features
        logits = model(input_ids=torch.tensor([[151644, 872, 198, 9707, 11, 1879, 0]])).logits
        assert 2.0 < float(logits.std(-1).mean()) < 4.0


# --------------------------------------------------------------------------------------------
# the committed oracles were made from exactly these checkpoints


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_oracles_match_current_synth(config, synth_checkpoint, oracle):
    import hashlib

    digest = hashlib.sha256((synth_checkpoint(config, "hf") / "model.safetensors").read_bytes()).hexdigest()
    for kind in ("vision", "text", "mm"):
        meta = oracle(f"{config.replace('-', '_')}_{kind}").meta
        assert meta["checkpoint_sha256"] == digest, (
            f"{config}_{kind} oracle is stale: synth changed; rerun tests/make_fixtures.py")


def test_full_vision_oracle_matches_current_synth(oracle):
    import hashlib

    meta = oracle("full_vision").meta
    h = hashlib.sha256()
    for name, arr in synth.tensors("full", seed=0, include=lambda n: not n.startswith("language_model.")):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arr, "<f4").tobytes())
    assert h.hexdigest() == meta["vision_weights_sha256"], "full_vision oracle is stale: rerun make_fixtures"


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_mm_oracle_prompts_are_got_prompts(config, oracle):
    """The committed prompt ids decode to GOT's literal prompt (checked with tiktoken, not our code)."""
    tiktoken = pytest.importorskip("tiktoken")
    from gotocr_fast.convert.vocab import QWEN_PATTERN, find_qwen_tiktoken, read_tiktoken_ranks

    enc = tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=read_tiktoken_ranks(find_qwen_tiktoken()),
                            special_tokens=dict(tokens.SPECIAL_TOKENS))
    mm = oracle(f"{config.replace('-', '_')}_mm")
    t = synth.CONFIGS[config].tokens_per_view
    assert mm.meta["tokens_per_view"] == t
    grids = {"images/wide.png": [3, 1], "images/tall.png": [1, 2]}  # GOT's rule, max 6 tiles
    for name, case in mm.meta["cases"].items():
        prompt = ("<|im_start|>system\nYou should follow the instructions carefully and explain your answers in "
                  "detail.<|im_end|><|im_start|>user\n<img>" + "<imgpad>" * t * case["n_views"] + "</img>\n"
                  + case["query"] + "<|im_end|><|im_start|>assistant\n")
        assert enc.decode(mm[f"{name}/prompt_ids"].tolist()) == prompt, name
        assert enc.encode(prompt, allowed_special="all") == mm[f"{name}/prompt_ids"].tolist(), name
        if case["crop"]:
            (image,) = case["images"]
            assert case["tile_grids_cols_rows"] == [grids[image]]
            assert case["n_views"] == grids[image][0] * grids[image][1] + 1
        else:
            assert case["n_views"] == len(case["images"])
        margins = mm[f"{name}/gen_margins"]
        assert len(margins) == len(mm[f"{name}/gen_ids"]) >= 40 and (margins >= 0).all()


def test_zeros_are_holes_that_read_back_as_zeros(tmp_path):
    full = load_file(str(synth.write_checkpoint(tmp_path / "full", "tiny") / "model.safetensors"))
    path = synth.write_checkpoint(tmp_path / "holes", "tiny", zeros=[synth.EMBED_NAME]) / "model.safetensors"
    holes = load_file(str(path))
    assert holes.keys() == full.keys()
    assert not holes[synth.EMBED_NAME].any() and full[synth.EMBED_NAME].any()
    for name in full:
        if name != synth.EMBED_NAME:
            np.testing.assert_array_equal(holes[name], full[name])
    with pytest.raises(ValueError, match="no such tensors"):
        synth.write_checkpoint(tmp_path / "bad", "tiny", zeros=["not.a.tensor"])
