"""gotocr_fast.convert.vocab: tiktoken → byte-level BPE, tokenizer.json, NFC helper.

Reference: tiktoken itself (ranks loaded by tiktoken, Qwen pattern written in conftest).
"""

from __future__ import annotations

import base64
import json
import unicodedata
from pathlib import Path

import pytest

from gotocr_fast import tokens
from gotocr_fast.convert import ConvertError
from gotocr_fast.convert import vocab


@pytest.fixture(scope="module")
def bpe():
    return vocab.load_qwen_bpe(vocab.find_qwen_tiktoken())


def test_find_qwen_tiktoken_is_the_bundled_copy_of_dashscopes_file(qwen_tiktoken_file):
    import hashlib
    import importlib.util

    found = vocab.find_qwen_tiktoken()
    package_dir = Path(importlib.util.find_spec("gotocr_fast").origin).parent
    assert found.resolve() == (package_dir / "data" / "qwen.tiktoken").resolve()
    # the copy is dashscope 2.0.2's file, byte for byte (its hash is also written in the NOTICE)
    digest = hashlib.sha256(found.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(qwen_tiktoken_file.read_bytes()).hexdigest()
    notice = (package_dir / "data" / "NOTICE.qwen-tiktoken").read_text()
    assert digest in notice and "Apache License 2.0" in notice
    assert "Apache License" in (package_dir / "data" / "LICENSE.qwen-tiktoken").read_text()


def test_find_qwen_tiktoken_needs_no_dashscope():
    """What a base install (no test extra) sees: dashscope cannot even be found."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'dashscope': raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from gotocr_fast.convert.vocab import find_qwen_tiktoken, load_qwen_bpe\n"
        "assert len(load_qwen_bpe(find_qwen_tiktoken())) == 151643\n"
        "assert 'dashscope' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_find_qwen_tiktoken_falls_back_to_dashscope(monkeypatch, tmp_path, qwen_tiktoken_file):
    monkeypatch.setattr(vocab, "bundled_qwen_tiktoken", lambda: tmp_path / "qwen.tiktoken")
    assert vocab.find_qwen_tiktoken().resolve() == qwen_tiktoken_file.resolve()


def test_find_qwen_tiktoken_does_not_import_dashscope(tmp_path):
    import subprocess
    import sys

    # the fallback path: the bundled copy hidden, dashscope only looked up
    code = (
        "import sys, pathlib; from gotocr_fast.convert import vocab; "
        f"vocab.bundled_qwen_tiktoken = lambda: pathlib.Path({str(tmp_path / 'none')!r}); "
        "p = vocab.find_qwen_tiktoken(); assert 'dashscope' in str(p), p; "
        "assert p.is_file(); assert 'dashscope' not in sys.modules, 'dashscope was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_find_qwen_tiktoken_missing_everywhere(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setattr(vocab, "bundled_qwen_tiktoken", lambda: tmp_path / "qwen.tiktoken")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConvertError, match="reinstall gotocr-fast or install dashscope==2.0.2"):
        vocab.find_qwen_tiktoken()


def _gpt2_byte_table() -> dict[int, str]:
    # GPT-2's published byte → unicode table: printable Latin-1 maps to itself, the other 68
    # bytes to U+0100.. in byte order.
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(0x100 + i) for i, b in enumerate(others)}}


def test_tokens_are_byte_level_rank_order(bpe, qwen_tiktoken_file):
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(qwen_tiktoken_file))
    assert len(bpe) == tokens.BPE_RANK_COUNT == len(ranks)
    table = _gpt2_byte_table()
    assert (table[0x20], table[0x0A], table[0x00]) == ("\u0120", "\u010a", "\u0100")  # Ġ Ċ Ā
    for data, rank in ranks.items():
        assert bpe.tokens[rank] == "".join(table[b] for b in data)
        assert vocab.token_string_to_bytes(bpe.tokens[rank]) == data


def test_merges_rebuild_every_token(bpe):
    # Every multi-byte token is the concatenation of some merge, merges only produce tokens, and
    # a merge never comes before the merges that build its pieces (priority = merged rank).
    token_id = {t: i for i, t in enumerate(bpe.tokens)}
    produced = {a + b for a, b in bpe.merges}
    multi = {t for t in bpe.tokens if len(vocab.token_string_to_bytes(t)) > 1}
    assert multi <= produced
    assert produced <= set(token_id)
    merged_ranks = [token_id[a + b] for a, b in bpe.merges]
    assert merged_ranks == sorted(merged_ranks)


def test_tokenizer_json_roundtrip(tmp_path, bpe):
    path = vocab.write_tokenizer_json(tmp_path / "tokenizer.json", bpe, tokens.SPECIAL_TOKENS)
    back = vocab.read_tokenizer_json(path)
    assert back.tokens == bpe.tokens
    assert back.merges == bpe.merges
    assert back.specials == tokens.SPECIAL_TOKENS


def test_tokenizer_json_old_merge_format(tmp_path, bpe):
    path = vocab.write_tokenizer_json(tmp_path / "tokenizer.json", bpe, tokens.SPECIAL_TOKENS)
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["model"]["merges"] = [f"{a} {b}" for a, b in doc["model"]["merges"]]
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    assert vocab.read_tokenizer_json(path).merges == bpe.merges


def test_hf_tokenizers_matches_tiktoken(tmp_path, bpe, got_encode, corpus_text):
    """tokenizer.json through HF tokenizers gives GOT's ids (its NFC normaliser included)."""
    from tokenizers import Tokenizer

    path = vocab.write_tokenizer_json(tmp_path / "tokenizer.json", bpe, tokens.SPECIAL_TOKENS)
    tok = Tokenizer.from_file(str(path))
    cases = [corpus_text, *corpus_text.split("\n")]
    for text in cases:
        assert tok.encode(text, add_special_tokens=False).ids == got_encode(text), text
    assert tok.decode(got_encode(corpus_text), skip_special_tokens=False) == unicodedata.normalize("NFC", corpus_text)


def test_normalize_text_is_nfc():
    assert vocab.normalize_text("Cafe\u0301") == "Caf\u00e9"
    assert vocab.normalize_text("\u1100\u1161\u11a8") == "\uac01"
    assert vocab.normalize_text("ﬁ ①") == "ﬁ ①"  # NFC, not NFKC


def test_unreadable_tiktoken(tmp_path):
    bad = tmp_path / "qwen.tiktoken"
    bad.write_text("not base64 at all!\n", encoding="ascii")
    with pytest.raises(ConvertError, match="unreadable tokenizer"):
        vocab.load_qwen_bpe(bad)
    gap = tmp_path / "gap.tiktoken"
    gap.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b * 2}\n" for b in range(256)), encoding="ascii")
    with pytest.raises(ConvertError, match="without gaps"):
        vocab.load_qwen_bpe(gap)


def test_unreadable_tokenizer_json(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{\"model\": {\"type\": \"BPE\"", encoding="utf-8")
    with pytest.raises(ConvertError, match="unreadable tokenizer"):
        vocab.read_tokenizer_json(bad)
