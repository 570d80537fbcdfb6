"""llama.cpp's extra buffer types (CPU weight repacking): prefill and decode with and without, paired.

``gotocr_fast.llama_load`` turns them off where llama.cpp's CPU backend reports AMX int8 (its AMX
q8_0 matrix multiply crashes the process, llama.cpp PR #26954) and leaves them on elsewhere; there
it still routes q4_K layer weights to the safe ``CPU_REPACK`` type alone. This measures what each
choice gains on the machine it runs on. Both sides are our ``TextModel`` on the same GGUF, both
loaded in this process and timed in alternating rounds (a round with ``GOTOCR_EXTRA_BUFTS=off``,
then one with the other choice), so that the machine's drift cancels: on a shared VM it moved
decode by 30 % within minutes, as much as the difference measured.

- q8_0: ``off`` against ``on`` (not run where the backend has AMX int8: it would kill the
  benchmark process; that is the point of the default);
- q4_k_m: ``off`` against ``auto`` (llama.cpp's default without AMX int8, the q4_K routing with it).

The timed series is the other choice; ``extra_info["baseline_round_s"]`` holds the ``off`` rounds.
Ratio: (time with ``off``) ÷ (time with the other), > 1 means repacking helps. f16 weights take no
extra buffer type, so only quantized models are measured.
"""

from __future__ import annotations

import time

import pytest

from harness import SETTINGS, run_rounds, tag
from test_lm import _embeddings, _split, decode, open_text_model, prefill

PAIRS = [("q8_0", "on"), ("q4_k_m", "auto")]
"""(weight type, the choice compared with ``off``)."""


def _backend_has_amx() -> bool:
    from gotocr_fast._preprocess import ggml_info

    return ggml_info()["cpu_features"].get("AMX_INT8") == "1"


def _open(path, mode: str):
    mp = pytest.MonkeyPatch()
    mp.setenv("GOTOCR_EXTRA_BUFTS", mode)
    try:
        return open_text_model(path)  # the choice is read at load time
    finally:
        mp.undo()


@pytest.fixture(scope="module", params=PAIRS, ids=["-".join(p) for p in PAIRS])
def pair(request, model_files):
    dtype, mode = request.param
    if mode == "on" and _backend_has_amx():
        pytest.skip("llama.cpp's AMX int8 buffer type crashes q8_0 matmuls on this CPU backend")
    path = model_files(dtype).text
    off = _open(path, "off")
    other = _open(path, mode)
    yield dtype, mode, off, other
    other.close()
    off.close()


def test_extra_bufts_prefill(benchmark, pair, prompt_ids, got_config):
    dtype, mode, off, other = pair
    prefix, n_img, suffix = _split(prompt_ids)
    embd = _embeddings(n_img, got_config.text.hidden_size)
    off_s: list[float] = []

    def setup():  # untimed by pytest-benchmark: the off round
        t0 = time.perf_counter()
        prefill(off, prefix, embd, suffix)
        off_s.append(time.perf_counter() - t0)
        return (other, prefix, embd, suffix), {}

    tag(benchmark, "extra_bufts_prefill", "ours", dtype, units=1, unit="prompt", extra_bufts=mode,
        baseline="extra_bufts=off", prompt_tokens=len(prompt_ids))
    run_rounds(benchmark, prefill, rounds=5, setup=setup)
    benchmark.extra_info["baseline_round_s"] = [round(t, 4) for t in off_s]


def test_extra_bufts_decode(benchmark, pair, prompt_ids, got_config):
    dtype, mode, off, other = pair
    prefix, n_img, suffix = _split(prompt_ids)
    embd = _embeddings(n_img, got_config.text.hidden_size)
    n = SETTINGS.tokens
    off_s: list[float] = []

    def setup():  # untimed by pytest-benchmark: the off round, then the other side's prefill
        token, n_past = prefill(off, prefix, embd, suffix)
        t0 = time.perf_counter()
        decode(off, token, n_past, n)
        off_s.append(time.perf_counter() - t0)
        token, n_past = prefill(other, prefix, embd, suffix)
        return (other, token, n_past, n), {}

    tag(benchmark, "extra_bufts_decode", "ours", dtype, units=n, unit="token", extra_bufts=mode,
        baseline="extra_bufts=off", context_start=len(prompt_ids))
    run_rounds(benchmark, decode, rounds=3, setup=setup)
    benchmark.extra_info["baseline_round_s"] = [round(t, 4) for t in off_s]
