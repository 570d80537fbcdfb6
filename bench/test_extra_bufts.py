"""llama.cpp's extra buffer types (CPU weight repacking): prefill and decode with and without.

``gotocr_fast.llama_load`` turns them off where llama.cpp's CPU backend reports AMX int8 (its AMX
q8_0 matrix multiply crashes the process, llama.cpp PR #26954) and leaves them on elsewhere; there
it still routes q4_K layer weights to the safe ``CPU_REPACK`` type alone. This measures what each
choice costs on the machine it runs on, for both: both sides are our ``TextModel`` on the same GGUF,

- q8_0 loaded with ``GOTOCR_EXTRA_BUFTS=off`` / ``=on`` (the ``on`` side is not run where the
  backend has AMX int8: it would kill the benchmark process; that is the point of the default);
- q4_k_m loaded with ``off`` / ``auto`` (``auto``: llama.cpp's default without AMX int8, the q4_K
  routing with it).

Ratio in the same run: (time with ``off``) ÷ (time with the other), > 1 means repacking helps.
f16 weights take no extra buffer type, so only quantized models are measured.
"""

from __future__ import annotations

import pytest

from harness import SETTINGS, run_rounds, tag
from test_lm import _embeddings, _split, decode, open_text_model, prefill

CASES = [("q8_0", "off"), ("q8_0", "on"), ("q4_k_m", "off"), ("q4_k_m", "auto")]


def _backend_has_amx() -> bool:
    from gotocr_fast._preprocess import ggml_info

    return ggml_info()["cpu_features"].get("AMX_INT8") == "1"


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def quantized_model(request, model_files):
    dtype, mode = request.param
    if mode == "on" and _backend_has_amx():
        pytest.skip("llama.cpp's AMX int8 buffer type crashes q8_0 matmuls on this CPU backend")
    mp = pytest.MonkeyPatch()
    mp.setenv("GOTOCR_EXTRA_BUFTS", mode)
    try:
        tm = open_text_model(model_files(dtype).text)  # the choice is read at load time
    finally:
        mp.undo()
    yield dtype, mode, tm
    tm.close()


def test_extra_bufts_prefill(benchmark, quantized_model, prompt_ids, got_config):
    dtype, mode, tm = quantized_model
    prefix, n_img, suffix = _split(prompt_ids)
    embd = _embeddings(n_img, got_config.text.hidden_size)
    tag(benchmark, "extra_bufts_prefill", "ours", dtype, units=1, unit="prompt", extra_bufts=mode,
        prompt_tokens=len(prompt_ids))
    run_rounds(benchmark, prefill, rounds=5, setup=lambda: ((tm, prefix, embd, suffix), {}))


def test_extra_bufts_decode(benchmark, quantized_model, prompt_ids, got_config):
    dtype, mode, tm = quantized_model
    prefix, n_img, suffix = _split(prompt_ids)
    embd = _embeddings(n_img, got_config.text.hidden_size)
    n = SETTINGS.tokens

    def setup():
        token, n_past = prefill(tm, prefix, embd, suffix)
        return (tm, token, n_past, n), {}

    tag(benchmark, "extra_bufts_decode", "ours", dtype, units=n, unit="token", extra_bufts=mode,
        context_start=len(prompt_ids))
    run_rounds(benchmark, decode, rounds=3, setup=setup)
