"""Ours: the language model through the engine's compiled batch path (``engine.model.TextModel``).

The calls are the ones the engine's scheduler makes for one request — prefix tokens, then the
256 image embedding rows (``decode_embeddings``), then the suffix with its last logits — and
then one greedy token per ``decode_tokens`` call. No scheduling / sampling / detokenising
overhead here: that is in the page and throughput benchmarks (``test_engine.py``). The
baselines are stock llama.cpp (``llama_cpp.Llama`` on the same GGUF, token ids for the image
rows) and transformers.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness import SETTINGS, construct, need, need_attr, run_rounds, tag

DTYPES = ["f16", "q8_0"]


def open_text_model(text_gguf):
    """Our ``TextModel`` as the benchmarks use it: one slot of 4096 tokens (or skip)."""
    need("llama_cpp", hint="pip install llama-cpp-python==0.3.36")
    TextModel = need_attr("gotocr_fast.engine.model", "TextModel")
    return construct(TextModel, text_gguf, n_slots=1, n_ctx_slot=4096, n_batch=2048, n_threads=SETTINGS.threads)


@pytest.fixture(scope="module", params=DTYPES)
def text_model(request, model_files):
    tm = open_text_model(model_files(request.param).text)
    yield request.param, tm
    tm.close()


def _split(prompt_ids):
    from gotocr_fast.prompt import image_token_span
    from gotocr_fast.tokens import IMG_PAD_ID

    a, b = image_token_span(prompt_ids, IMG_PAD_ID)
    return np.array(prompt_ids[:a], np.int32), b - a, np.array(prompt_ids[b:], np.int32)


def _embeddings(n: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.5, (n, width)).astype(np.float32)


def prefill(tm, prefix, embd, suffix) -> tuple[int, int]:
    """Clear the KV cache and feed the prompt as the scheduler does; (greedy token, n_past)."""
    tm.clear()
    n = 0
    for rows, emb in ((prefix, None), (None, embd), (suffix, None)):
        k = len(rows) if rows is not None else emb.shape[0]
        for a in range(0, k, tm.n_batch):
            b = min(k, a + tm.n_batch)
            pos = np.arange(n + a, n + b, dtype=np.int32)
            seq = np.zeros(b - a, np.int32)
            out = np.zeros(b - a, np.int8)
            if rows is suffix and b == k:
                out[-1] = 1
            if rows is not None:
                tm.decode_tokens(rows[a:b], pos, seq, out)
            else:
                tm.decode_embeddings(emb[a:b], pos, seq, out)
        n += k
    last_row = (len(suffix) - 1) % tm.n_batch  # the last token's row in the last decode call
    logits = tm.logits(np.array([last_row], np.int32))
    return int(logits[0].argmax()), n


def decode(tm, token: int, n_past: int, n: int) -> list[int]:
    """``n`` greedy steps, one token per ``llama_decode`` through our binding."""
    seq = np.zeros(1, np.int32)
    out = np.ones(1, np.int8)
    row = np.zeros(1, np.int32)
    tokens = []
    for i in range(n):
        tm.decode_tokens(np.array([token], np.int32), np.array([n_past + i], np.int32), seq, out)
        token = int(tm.logits(row)[0].argmax())
        tokens.append(token)
    return tokens


def test_prefill(benchmark, text_model, prompt_ids, got_config):
    dtype, tm = text_model
    prefix, n_img, suffix = _split(prompt_ids)
    embd = _embeddings(n_img, got_config.text.hidden_size)
    tag(benchmark, "prefill", "ours", dtype, units=1, unit="prompt", prompt_tokens=len(prompt_ids))
    run_rounds(benchmark, prefill, rounds=5, setup=lambda: ((tm, prefix, embd, suffix), {}))


def test_decode(benchmark, text_model, prompt_ids, got_config):
    dtype, tm = text_model
    prefix, n_img, suffix = _split(prompt_ids)
    embd = _embeddings(n_img, got_config.text.hidden_size)
    n = SETTINGS.tokens

    def setup():
        token, n_past = prefill(tm, prefix, embd, suffix)
        return (tm, token, n_past, n), {}

    tag(benchmark, "decode", "ours", dtype, units=n, unit="token", context_start=len(prompt_ids))
    run_rounds(benchmark, decode, rounds=3, setup=setup)
