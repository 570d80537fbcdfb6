"""gotocr_fast.gguf_tensors: the tensor table read without decoding metadata equals gguf-py's.

gguf-py's ``GGUFReader`` (the reference) decodes every metadata value; ours skips them. Both read
a converted text and vision GGUF (vocabulary and merges as string arrays, scalars of several
types); damaged files are refused with ``ValueError``.
"""

from __future__ import annotations

import gguf
import pytest

from gotocr_fast.gguf_tensors import read_tensor_table


@pytest.fixture(scope="module")
def files(converted_model):
    out = converted_model("tiny", "hf", "q8_0")
    return sorted(out.glob("*.gguf"))


def test_table_matches_gguf_py(files):
    assert len(files) == 2
    for path in files:
        ours = read_tensor_table(path)
        ref = gguf.GGUFReader(str(path)).tensors
        assert [t.name for t in ours] == [t.name for t in ref]
        assert [t.ggml_type for t in ours] == [int(t.tensor_type) for t in ref]
        assert [t.ne for t in ours] == [tuple(int(n) for n in t.shape) for t in ref]


@pytest.mark.parametrize("damage", ["magic", "truncated", "empty"])
def test_damaged_files_are_refused(files, tmp_path, damage):
    data = files[0].read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes({"magic": b"GGUX" + data[4:], "truncated": data[:4096], "empty": b""}[damage])
    with pytest.raises(ValueError):
        read_tensor_table(bad)
