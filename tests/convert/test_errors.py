"""User-facing failures: a ConvertError with a clear message, nothing left in the output folder,
and from the CLI ``error: ...`` on stderr, exit status 2, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from safetensors.numpy import load_file, save_file

from gotocr_fast.convert import ConvertError, convert_checkpoint
from gotocr_fast.convert.cli import main


def _variant(tmp_path, src, edit_weights=None, edit_config=None):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    if edit_weights is not None:
        weights = load_file(str(dst / "model.safetensors"))
        edit_weights(weights)
        save_file(weights, str(dst / "model.safetensors"))
    if edit_config is not None:
        config = json.loads((dst / "config.json").read_text())
        edit_config(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def _assert_fails_clean(src, out, match):
    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("user file")
    with pytest.raises(ConvertError, match=match):
        convert_checkpoint(src, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # nothing added, nothing removed


def test_not_a_folder(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    _assert_fails_clean(file, tmp_path / "out", "is not a folder")
    _assert_fails_clean(tmp_path / "does-not-exist", tmp_path / "out", "is not a folder")


def test_folder_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    _assert_fails_clean(tmp_path / "empty", tmp_path / "out", "no weights")


def test_missing_tensor(tmp_path, synth_checkpoint):
    src = _variant(tmp_path, synth_checkpoint("tiny", "hf"),
                   edit_weights=lambda w: w.pop("vision_tower.layers.2.mlp.lin2.weight"))
    _assert_fails_clean(src, tmp_path / "out", r"missing tensor 'vision_tower\.layers\.2\.mlp\.lin2\.weight'")


def test_missing_tensor_original_layout_names_its_spelling(tmp_path, synth_checkpoint):
    src = _variant(tmp_path, synth_checkpoint("tiny", "original"),
                   edit_weights=lambda w: w.pop("model.mm_projector_vary.bias"))
    _assert_fails_clean(src, tmp_path / "out", r"model\.mm_projector_vary\.bias")


def test_missing_lm_layer_tensor(tmp_path, synth_checkpoint):
    src = _variant(tmp_path, synth_checkpoint("tiny", "original"),
                   edit_weights=lambda w: w.pop("model.layers.1.self_attn.k_proj.bias"))
    _assert_fails_clean(src, tmp_path / "out", r"missing tensor .*layers\.1\.self_attn\.k_proj\.bias")


def test_unknown_architecture(tmp_path, synth_checkpoint):
    src = _variant(tmp_path, synth_checkpoint("tiny", "hf"),
                   edit_config=lambda c: c.update(architectures=["LlavaForConditionalGeneration"], model_type="llava"))
    _assert_fails_clean(src, tmp_path / "out", "unknown architecture .*LlavaForConditionalGeneration")


def test_shape_mismatch(tmp_path, synth_checkpoint):
    def shrink(w):
        name = "language_model.model.layers.0.mlp.up_proj.weight"
        w[name] = w[name][:-1].copy()

    src = _variant(tmp_path, synth_checkpoint("tiny", "hf"), edit_weights=shrink)
    _assert_fails_clean(src, tmp_path / "out", r"shape mismatch for 'language_model\.model\.layers\.0\.mlp\.up_proj")


def test_config_disagrees_with_tensors(tmp_path, synth_checkpoint):
    src = _variant(tmp_path, synth_checkpoint("tiny", "original"), edit_config=lambda c: c.update(hidden_size=128))
    _assert_fails_clean(src, tmp_path / "out", "shape mismatch")


def test_unreadable_tokenizer(tmp_path, synth_checkpoint):
    src = _variant(tmp_path, synth_checkpoint("tiny", "hf"))
    (src / "tokenizer.json").write_text("{ not json")
    _assert_fails_clean(src, tmp_path / "out", "unreadable tokenizer")


def test_failure_mid_write_removes_partial_files_and_created_folder(tmp_path, synth_checkpoint, monkeypatch):
    """A failure (here Ctrl-C) while tensors are written leaves neither temporaries nor the folder."""
    from gotocr_fast.convert import gguf_io

    real = gguf_io.encode
    calls = {"n": 0}

    def interrupt_late(array, qtype):
        calls["n"] += 1
        if calls["n"] == 20:  # inside the text GGUF, after the header and some tensors
            raise KeyboardInterrupt
        return real(array, qtype)

    monkeypatch.setattr(gguf_io, "encode", interrupt_late)
    out = tmp_path / "new" / "model"
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(synth_checkpoint("tiny", "hf"), out, progress=False)
    assert calls["n"] == 20
    assert not out.exists()


def test_existing_output_is_replaced_only_when_complete(tmp_path, synth_checkpoint):
    out = tmp_path / "out"
    files = convert_checkpoint(synth_checkpoint("tiny", "hf"), out, progress=False)
    before = files.text.read_bytes()
    src = _variant(tmp_path, synth_checkpoint("tiny", "hf"),
                   edit_weights=lambda w: w.pop("multi_modal_projector.multimodal_projector.bias"))
    with pytest.raises(ConvertError):
        convert_checkpoint(src, out, progress=False)
    assert files.text.read_bytes() == before
    # no outtype given: f16, the measured default (convert.gguf_io.DEFAULT_OUTTYPE)
    assert sorted(p.name for p in out.iterdir()) == ["got-text-f16.gguf", "got-vision-f16.gguf"]


def test_cli_error_exit_2(tmp_path, synth_checkpoint, capsys):
    src = _variant(tmp_path, synth_checkpoint("tiny", "hf"),
                   edit_weights=lambda w: w.pop("vision_tower.pos_embed"))
    assert main([str(src), str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "Traceback" not in err


def test_cli_subprocess_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gotocr_fast.convert.cli", str(tmp_path / "nope"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "is not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_converts(tmp_path, synth_checkpoint, capsys):
    out = tmp_path / "out"
    assert main([str(synth_checkpoint("tiny", "hf")), str(out), "--outtype", "f16", "--no-progress"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "got-text-f16.gguf"), str(out / "got-vision-f16.gguf")]
    assert sorted(p.name for p in out.iterdir()) == ["got-text-f16.gguf", "got-vision-f16.gguf"]


def test_untied_config_without_lm_head(tmp_path, synth_checkpoint):
    def untie(c):
        c["tie_word_embeddings"] = False
        c["text_config"]["tie_word_embeddings"] = False

    src = _variant(tmp_path, synth_checkpoint("tiny", "hf"), edit_config=untie)
    _assert_fails_clean(src, tmp_path / "out", "missing tensor 'lm_head.weight'")
