"""The converted GGUF's tokenizer, run by llama.cpp, gives GOT's token ids on a multilingual corpus.

Reference ids: tiktoken with Qwen's ranks and split pattern plus GOT's specials, applied to the
NFC-normalised text (GOT's tokenizer normalises to NFC before BPE). llama.cpp does not
normalise, so the engine must NFC its prompts first (``gotocr_fast.convert.vocab.normalize_text``);
these tests tokenize NFC text through llama.cpp, with special-token parsing on (the prompt's
``<|im_start|>``/``<imgpad>``... are written as text).
"""

from __future__ import annotations

import unicodedata

import pytest

from gotocr_fast import tokens
from gotocr_fast.convert.vocab import normalize_text


@pytest.fixture(scope="module")
def gguf_vocab(converted_model, llama_vocab):
    return llama_vocab(converted_model("tiny", "hf", "f32") / "got-text-f32.gguf")


def _llama_ids(llm, text: str) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def _corpus_cases(corpus_text: str) -> list[str]:
    return [line for line in corpus_text.split("\n") if line]


def test_corpus_covers_what_it_claims(corpus_text):
    assert all(s in corpus_text for s in tokens.SPECIAL_TOKENS)
    assert unicodedata.normalize("NFC", corpus_text) != corpus_text  # has non-NFC text
    for needle in ("中文", "日本語", "한국어", "\\frac", "０１２", "\t\t", "\r\n", "  ", "\u200d", "e\u0301", "def "):
        assert needle in corpus_text, needle


def test_whole_corpus_ids_match_tiktoken(gguf_vocab, got_encode, corpus_text):
    nfc = normalize_text(corpus_text)
    assert _llama_ids(gguf_vocab, nfc) == got_encode(corpus_text)


def test_each_line_ids_match_tiktoken(gguf_vocab, got_encode, corpus_text):
    mismatches = [line for line in _corpus_cases(corpus_text)
                  if _llama_ids(gguf_vocab, normalize_text(line)) != got_encode(line)]
    assert mismatches == []


@pytest.mark.parametrize("text", [
    "１２３４５", "12３4５6", "2024年１１月", "x = 12345678901234567890", " \t \n\n \r\n  a",
    "👨‍👩‍👧‍👦🏳️‍🌈", "<|im_start|>user\n<img><imgpad><imgpad></img>", "<|extra_0|><|extra_204|></quad>",
])
def test_tricky_snippets(gguf_vocab, got_encode, text):
    assert _llama_ids(gguf_vocab, normalize_text(text)) == got_encode(text)


def test_detokenize_round_trip(gguf_vocab, got_encode, corpus_text):
    ids = got_encode(corpus_text)
    assert gguf_vocab.detokenize(ids, special=True).decode("utf-8") == normalize_text(corpus_text)
    for line in _corpus_cases(corpus_text):
        assert gguf_vocab.detokenize(got_encode(line), special=True).decode("utf-8") == normalize_text(line)


def test_special_ids(gguf_vocab):
    for text, token_id in tokens.SPECIAL_TOKENS.items():
        assert _llama_ids(gguf_vocab, text) == [token_id], text


def test_without_nfc_llama_differs(gguf_vocab, got_encode):
    """Why the engine must normalise: llama.cpp tokenizes the decomposed form as-is."""
    decomposed = "Cafe\u0301"
    assert _llama_ids(gguf_vocab, decomposed) != got_encode(decomposed)
    assert _llama_ids(gguf_vocab, normalize_text(decomposed)) == got_encode(decomposed)
