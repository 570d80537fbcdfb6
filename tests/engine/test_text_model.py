"""TextModel's choice of llama.cpp context options."""

from __future__ import annotations

import platform
from types import SimpleNamespace

import numpy as np
import pytest

from gotocr_fast.engine.model import _default_flash_attn
from gotocr_fast.engine.resident import resident_bytes


def _llama(gpu: bool):
    return SimpleNamespace(llama_supports_gpu_offload=lambda: gpu)


@pytest.mark.parametrize("gpu", [False, True])
def test_f32_cache_never_uses_flash_attention(gpu):
    # CPU flash attention rounds through f16: f32-cache parity needs it off everywhere
    assert _default_flash_attn(_llama(gpu), "f32") is False


def test_cpu_only_build_runs_without_flash_attention():
    assert _default_flash_attn(_llama(False), "f16") is False


def test_gpu_build_leaves_flash_attention_to_llama_cpp():
    assert _default_flash_attn(_llama(True), "f16") is None


# --- the shared KV pool (a converted tiny model) -------------------------------------------------
def _tiny_text_gguf(converted_model, outtype="f32"):
    return next(converted_model("tiny", "hf", outtype).glob("got-text-*.gguf"))


def _kv_row_bytes(config: str, kv_type_bytes: int) -> int:
    """One token's K and V rows in every layer, from the synth config the model was made from."""
    from gotocr_fast import synth

    t = synth.CONFIGS[config].text
    return t.num_layers * 2 * (t.hidden_size // t.num_heads * t.num_kv_heads) * kv_type_bytes


def test_default_pool_is_one_requests_context_shared_by_the_slots(converted_model):
    from gotocr_fast.engine.model import TextModel

    # the defaults: 4 slots, 8192 tokens each, the cache type the weights call for (f16 here)
    m = TextModel(_tiny_text_gguf(converted_model, "f16"), n_threads=1)
    try:
        assert m.n_slots == 4 and m.n_ctx_slot == 8192
        n_ctx = int(m._ll.llama_n_ctx(m._ctx))
        assert n_ctx == m.kv_tokens == 8192  # one pool of one request's context, not 4 × 8192
        assert int(m._ll.llama_n_ctx_seq(m._ctx)) == 8192  # and one sequence may fill it
        assert m.kv_type == "f16" and m.kv_bytes == 8192 * _kv_row_bytes("tiny", 2)
    finally:
        m.close()


@pytest.mark.parametrize("outtype, expected", [("f32", "f32"), ("f16", "f16"), ("q8_0", "f16"), ("q4_k_m", "f16")])
def test_the_cache_type_follows_the_text_weights(converted_model, outtype, expected):
    # f32 weights are read with the reference's arithmetic all through (an f16 cache flipped
    # near-tie tokens of the demo model); every other type keeps the half-size cache
    from gotocr_fast.engine.model import TextModel, default_kv_type

    path = _tiny_text_gguf(converted_model, outtype)
    assert default_kv_type(path) == expected
    m = TextModel(path, n_threads=1, n_ctx_slot=64)
    try:
        assert m.kv_type == expected
        assert m.kv_bytes == m.kv_tokens * _kv_row_bytes("tiny", {"f32": 4, "f16": 2}[expected])
    finally:
        m.close()
    asked = TextModel(path, n_threads=1, n_ctx_slot=64, kv_type="f16")  # an explicit type wins
    try:
        assert asked.kv_type == "f16"
    finally:
        asked.close()


def test_q8_0_k_cache_refuses_heads_narrower_than_a_block(converted_model):
    # the tiny model's heads are 16 wide, half a q8_0 block: its K rows would mix two heads
    from gotocr_fast.engine.model import ModelError, TextModel

    with pytest.raises(ModelError, match="head dimension that is a multiple of 32; this model's is 16"):
        TextModel(_tiny_text_gguf(converted_model, "f16"), n_threads=1, n_ctx_slot=64, kv_type="q8_0")


def test_unknown_kv_type_is_refused(converted_model):
    from gotocr_fast.engine.model import TextModel

    with pytest.raises(ValueError, match="kv_type must be one of f32, f16, q8_0; got 'q4_0'"):
        TextModel(_tiny_text_gguf(converted_model, "f16"), n_threads=1, n_ctx_slot=64, kv_type="q4_0")


def test_an_unreadable_file_gets_the_f16_cache_and_llama_cpps_error(tmp_path):
    from gotocr_fast.engine.errors import ModelError
    from gotocr_fast.engine.model import TextModel, default_kv_type

    bad = tmp_path / "got-text-f32.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 12)
    assert default_kv_type(bad) == "f16"
    with pytest.raises(ModelError, match="could not load"):
        TextModel(bad, n_threads=1, n_ctx_slot=64)


def test_default_pool_keeps_a_typical_page_per_slot(converted_model):
    from gotocr_fast.engine.model import TextModel

    # 8 slots of a 512-token context: 8 × 2048 cells (a one-view page and ~1,750 new tokens each)
    m = TextModel(_tiny_text_gguf(converted_model), n_threads=1, n_slots=8, n_ctx_slot=512)
    try:
        assert m.n_ctx_slot == 512 and m.kv_tokens == int(m._ll.llama_n_ctx(m._ctx)) == 16384
    finally:
        m.close()


def test_full_size_default_pool_fits_its_memory_budget():
    # the full-size GOT LM at the defaults (f16 cache, 8192 shared cells): 24 layers × K and V ×
    # 1024 values × 2 bytes = 96 KiB a token, 0.75 GiB in all (4 slots × 8192 each were 3 GiB)
    assert _kv_row_bytes("full", 2) == 96 * 1024
    assert 8192 * _kv_row_bytes("full", 2) == 0.75 * 2**30


def test_the_pool_is_allocated_once_and_resident(converted_model):
    from gotocr_fast.engine.model import TextModel

    path = _tiny_text_gguf(converted_model)
    TextModel(path, n_threads=1, n_ctx_slot=64).close()  # libraries and page cache warm
    before = resident_bytes()
    m = TextModel(path, n_threads=1, n_ctx_slot=64, kv_tokens=1 << 17, kv_type="f32")
    try:
        grown = resident_bytes() - before
        assert m.kv_bytes == (1 << 17) * _kv_row_bytes("tiny", 4) == 128 * 2**20
        # llama.cpp zeroes the cache when it creates it, which makes all of it resident; where the
        # pool is identified it is given back at once (the rest is the tiny model's weights,
        # ~40 MB, and the compute buffers)
        if m.releases_idle_pool:
            assert grown <= 96 * 2**20
        else:
            assert m.kv_bytes * 0.95 <= grown <= m.kv_bytes + 96 * 2**20
        m.clear()  # llama.cpp zeroes the whole pool again: every page resident
        assert resident_bytes() - before >= m.kv_bytes * 0.95
    finally:
        m.close()


def test_a_pool_smaller_than_one_requests_context_is_refused(converted_model):
    from gotocr_fast.engine.model import TextModel

    with pytest.raises(ValueError, match="kv_tokens"):
        TextModel(_tiny_text_gguf(converted_model), n_threads=1, n_ctx_slot=512, kv_tokens=256)


def test_stop_ids_are_the_vocabularys_end_of_generation_tokens(converted_model):
    # the scheduler's stop ids (tokens.STOP_IDS) against llama.cpp's reading of the converted GGUF
    from gotocr_fast.engine.model import TextModel
    from gotocr_fast.tokens import ENDOFTEXT_ID, IM_END_ID, SPECIAL_TOKENS, STOP_IDS

    m = TextModel(_tiny_text_gguf(converted_model), n_threads=1, n_ctx_slot=64)
    try:
        eog = {t for t in SPECIAL_TOKENS.values() if m._ll.llama_vocab_is_eog(m.vocab, t)}
    finally:
        m.close()
    assert eog == {IM_END_ID, ENDOFTEXT_ID} == STOP_IDS


# --- the idle pool goes back to the OS -------------------------------------------------------------
def _prefill_logits(m, seq: int, n: int = 24) -> np.ndarray:
    toks = np.array([(7 * i + 3) % 1000 for i in range(n)], dtype=np.int32)
    pos = np.arange(n, dtype=np.int32)
    seqs = np.full(n, seq, dtype=np.int32)
    outs = np.zeros(n, dtype=np.int8)
    outs[-1] = 1
    m.decode_tokens(toks, pos, seqs, outs)
    return m.logits(np.array([n - 1], dtype=np.int32)).copy()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the pool is identified through glibc's block header")
def test_an_idle_pool_goes_back_to_the_os_and_reads_as_before(converted_model):
    from gotocr_fast.engine.model import TextModel

    path = _tiny_text_gguf(converted_model)
    m = TextModel(path, n_threads=1, n_ctx_slot=64, kv_tokens=1 << 17, kv_type="f32")
    try:
        assert m.releases_idle_pool
        first = _prefill_logits(m, 0)
        # a sequence holds cells: the pool is left alone
        assert not m.release_idle_memory()
        m.free_sequence(0)
        m.clear()  # llama.cpp zeroes the whole pool: every page of it resident
        full = resident_bytes()
        assert m.release_idle_memory()
        assert full - resident_bytes() >= 0.9 * m.kv_bytes
        # the released pages read back as the zeros they were: same logits, in another slot too
        assert np.array_equal(_prefill_logits(m, 0), first)
        m.free_sequence(0)
        assert np.array_equal(_prefill_logits(m, 3), first)
    finally:
        m.close()


def test_an_unidentified_pool_stays_resident():
    from gotocr_fast.engine import resident

    # nothing new was mapped: no block to release, and nothing else is touched
    assert resident.find_pool(resident.anonymous_mappings(), 1 << 27) is None
