"""Every checkpoint spelling of one model converts to the same GGUF tensors.

Layouts: the original GOT-OCR2.0 release and transformers' (hub names as synth writes them, and
the other spellings transformers loads: ``model.language_model.*``, ``model.vision_tower.*``,
``model.multi_modal_projector.*``, ``language_model.lm_head``), single or sharded safetensors,
bf16 storage, and torch ``.bin`` (a committed torch-written file read without torch; a whole
checkpoint saved by torch is opt-in: GOTOCR_TORCH_TESTS=1).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gotocr_fast.convert import ConvertError, convert_checkpoint


@pytest.fixture(scope="module")
def assert_same_gguf(read_gguf):
    def check(dir_a, dir_b, outtype="f32") -> None:
        for kind in ("text", "vision"):
            a = read_gguf(dir_a / f"got-{kind}-{outtype}.gguf").tensors
            b = read_gguf(dir_b / f"got-{kind}-{outtype}.gguf").tensors
            assert list(a) == list(b), kind
            for name, (ttype, shape, raw) in a.items():
                assert (ttype, shape) == b[name][:2], f"{kind}: {name}"
                assert np.array_equal(raw, b[name][2]), f"{kind}: {name} differs"

    return check


@pytest.mark.parametrize("config", ["tiny", "tiny-alt"])
def test_original_and_hf_layouts_give_identical_tensors(converted_model, config, assert_same_gguf):
    assert_same_gguf(converted_model(config, "hf"), converted_model(config, "original"))


def _copy_without_weights(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    return dst


def _model_prefixed(name: str) -> str:
    """transformers 5.x in-memory names: model.language_model.*, model.vision_tower.*, ..."""
    for old, new in (("language_model.model.", "model.language_model."), ("vision_tower.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector.")):
        if name.startswith(old):
            return new + name[len(old):]
    return name


def test_transformers_model_prefixed_names_with_lm_head(tmp_path, synth_checkpoint, converted_model, assert_same_gguf):
    src = synth_checkpoint("tiny", "hf")
    weights = load_file(str(src / "model.safetensors"))
    renamed = {_model_prefixed(k): v for k, v in weights.items()}
    renamed["lm_head.weight"] = weights["language_model.model.embed_tokens.weight"].copy()  # tied, stored
    variant = _copy_without_weights(src, tmp_path / "ckpt")
    save_file(renamed, str(variant / "model.safetensors"))
    out = tmp_path / "out"
    convert_checkpoint(variant, out, outtype="f32", progress=False)
    assert_same_gguf(out, converted_model("tiny", "hf"))


def test_language_model_lm_head_spelling(tmp_path, synth_checkpoint, converted_model, assert_same_gguf):
    src = synth_checkpoint("tiny", "hf")
    weights = load_file(str(src / "model.safetensors"))
    weights["language_model.lm_head.weight"] = weights["language_model.model.embed_tokens.weight"].copy()
    variant = _copy_without_weights(src, tmp_path / "ckpt")
    save_file(weights, str(variant / "model.safetensors"))
    out = tmp_path / "out"
    convert_checkpoint(variant, out, outtype="f32", progress=False)
    assert_same_gguf(out, converted_model("tiny", "hf"))


def test_sharded_safetensors_with_index(tmp_path, synth_checkpoint, converted_model, assert_same_gguf):
    src = synth_checkpoint("tiny", "original")
    weights = load_file(str(src / "model.safetensors"))
    variant = _copy_without_weights(src, tmp_path / "ckpt")
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, part in shards.items():
        save_file({k: weights[k] for k in part}, str(variant / file))
        weight_map.update({k: file for k in part})
    (variant / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = tmp_path / "out"
    convert_checkpoint(variant, out, outtype="f32", progress=False)
    assert_same_gguf(out, converted_model("tiny", "original"))


def test_bf16_checkpoint_reads_exact_values(tmp_path, synth_checkpoint):
    """bf16 storage (the real release's dtype) is widened exactly, without torch."""
    def to_bf16_bits(x: np.ndarray) -> np.ndarray:  # round to nearest even (finite inputs)
        u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)

    src = synth_checkpoint("tiny", "hf")
    weights = load_file(str(src / "model.safetensors"))
    variant = _copy_without_weights(src, tmp_path / "ckpt")
    # safetensors.numpy cannot write bf16; write the file by hand (header + raw little-endian).
    blobs, header, offset = [], {}, 0
    for name in sorted(weights):
        raw = to_bf16_bits(weights[name]).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(weights[name].shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(variant / "model.safetensors", "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))
    files = convert_checkpoint(variant, tmp_path / "out", outtype="f32", progress=False)
    qkv = next(t for t in gguf.GGUFReader(files.vision).tensors if t.name == "v.blk.0.attn_qkv.weight")
    bits = to_bf16_bits(weights["vision_tower.layers.0.attn.qkv.weight"])
    want = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(np.asarray(qkv.data).reshape(want.shape), want)


def test_torch_zip_bin_read_without_torch(monkeypatch):
    """data/torch_state.bin was written by ``torch.save`` (torch 2.13) with views sharing a storage
    (transposed, offset + strides), f16, bf16, a Parameter, int64 and a 0-d tensor;
    data/torch_state_expected.npz holds torch's own ``.float().numpy()`` of each."""
    from pathlib import Path

    from gotocr_fast.convert.tensors import TorchBinFile

    monkeypatch.setitem(sys.modules, "torch", None)  # prove torch is not needed
    data = Path(__file__).parent / "data"
    store = TorchBinFile(data / "torch_state.bin")
    expected = np.load(data / "torch_state_expected.npz")
    refs = {r.name: r for r in store.refs()}
    assert sorted(refs) == sorted(expected.files)
    for name in expected.files:
        assert refs[name].shape == expected[name].shape, name
        got = refs[name].load()
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected[name], err_msg=name)


def test_torch_zip_refuses_code(tmp_path):
    """A pickle that names any other global (here os.system) is refused, not executed."""
    import pickle
    import zipfile

    from gotocr_fast.convert.tensors import TorchBinFile

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(ConvertError, match="refusing to load"):
        TorchBinFile(path)
    assert not (tmp_path / "pwned").exists()


def test_legacy_bin_without_torch_is_a_clear_error(tmp_path, synth_checkpoint, monkeypatch):
    src = synth_checkpoint("tiny", "hf")
    variant = _copy_without_weights(src, tmp_path / "ckpt")
    (variant / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch → ImportError
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match="needs torch"):
        convert_checkpoint(variant, out, outtype="f32", progress=False)
    assert not out.exists()


@pytest.mark.skipif(os.environ.get("GOTOCR_TORCH_TESTS") != "1", reason="set GOTOCR_TORCH_TESTS=1 (imports torch)")
def test_pytorch_bin_checkpoint(tmp_path, synth_checkpoint, converted_model, assert_same_gguf):
    torch = pytest.importorskip("torch")
    src = synth_checkpoint("tiny", "original")
    weights = load_file(str(src / "model.safetensors"))
    variant = _copy_without_weights(src, tmp_path / "ckpt")
    torch.save({k: torch.from_numpy(v.copy()) for k, v in weights.items()}, variant / "pytorch_model.bin")
    out = tmp_path / "out"
    convert_checkpoint(variant, out, outtype="f32", progress=False)
    assert_same_gguf(out, converted_model("tiny", "original"))
