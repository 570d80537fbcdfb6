"""Decode, ours against stock llama.cpp in alternating rounds, so that machine drift cancels.

``test_lm.py::test_decode`` and ``test_baseline_llamacpp.py::test_decode`` time the same work
minutes apart; on a shared VM the speed of both moves by 10-30 % between such runs, which is as
large as the difference being measured. Here every timed round of ours (``TextModel``, one
``llama_decode`` per token through our binding) comes right after one round of
``llama_cpp.Llama`` on the same GGUF, both in this process with the same threads, and
``RESULTS.md`` takes the ratio of the two series.
"""

from __future__ import annotations

import time

import pytest

from harness import SETTINGS, run_rounds, tag
from test_lm import _embeddings, _split, decode, open_text_model, prefill

DTYPES = ["f16", "q8_0"]


@pytest.fixture(scope="module", params=DTYPES)
def both(request, model_files):
    files = model_files(request.param)
    ours = open_text_model(files.text)  # skips without llama_cpp / our native part
    from baselines import llamacpp_lm

    theirs = llamacpp_lm.open_model(files.text, SETTINGS.threads)
    yield request.param, ours, theirs
    theirs.close()
    ours.close()


def test_decode_paired(benchmark, both, prompt_ids, got_config):
    from baselines import llamacpp_lm

    dtype, ours, theirs = both
    prefix, n_img, suffix = _split(prompt_ids)
    embd = _embeddings(n_img, got_config.text.hidden_size)
    n = SETTINGS.tokens
    theirs_s: list[float] = []

    def setup():  # untimed by pytest-benchmark: llama.cpp's round, then our prefill
        token = llamacpp_lm.prefill(theirs, prompt_ids)
        t0 = time.perf_counter()
        llamacpp_lm.decode(theirs, token, n)
        theirs_s.append(time.perf_counter() - t0)
        token, n_past = prefill(ours, prefix, embd, suffix)
        return (ours, token, n_past, n), {}

    tag(benchmark, "decode_paired", "ours", dtype, units=n, unit="token", baseline="llama.cpp")
    run_rounds(benchmark, decode, rounds=3, setup=setup)
    # one entry per round of ours, warm-up included (setup runs before it too)
    benchmark.extra_info["baseline_round_s"] = [round(t, 4) for t in theirs_s]
