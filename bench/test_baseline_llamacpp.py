"""Baseline: stock llama.cpp via llama-cpp-python's ``Llama`` on our text GGUF (f16, q8_0).

Same GGUF, same llama.cpp build as our engine, none of our code in the loop: prefill of the
one-view GOT prompt (as token ids) and greedy decode per token.
"""

from __future__ import annotations

import pytest

from harness import SETTINGS, need, run_rounds, tag

DTYPES = ["f16", "q8_0"]


@pytest.fixture(scope="module", params=DTYPES)
def llm(request, model_files):
    need("llama_cpp", hint="pip install llama-cpp-python==0.3.36")
    from baselines import llamacpp_lm

    files = model_files(request.param)
    model = llamacpp_lm.open_model(files.text, SETTINGS.threads)
    yield request.param, model
    model.close()


def test_prefill(benchmark, llm, prompt_ids):
    from baselines import llamacpp_lm

    dtype, model = llm
    tag(benchmark, "prefill", "llama.cpp", dtype, units=1, unit="prompt", prompt_tokens=len(prompt_ids))
    run_rounds(benchmark, llamacpp_lm.prefill, rounds=5, setup=lambda: ((model, prompt_ids), {}))


def test_decode(benchmark, llm, prompt_ids):
    from baselines import llamacpp_lm

    dtype, model = llm
    n = SETTINGS.tokens

    def setup():
        token = llamacpp_lm.prefill(model, prompt_ids)
        return (model, token, n), {}

    tag(benchmark, "decode", "llama.cpp", dtype, units=n, unit="token", context_start=len(prompt_ids))
    run_rounds(benchmark, llamacpp_lm.decode, rounds=3, setup=setup)
