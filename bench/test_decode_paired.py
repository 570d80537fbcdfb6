"""Decode, ours against stock llama.cpp and transformers in alternating rounds, so that drift cancels.

``test_lm.py::test_decode`` and ``test_baseline_llamacpp.py::test_decode`` time the same work
minutes apart; on a shared VM the speed of both moves by 10-30 % between such runs, which is as
large as the difference being measured. Here every timed round of ours (``TextModel``, one
``llama_decode`` per token through our binding) comes right after one round of
``llama_cpp.Llama`` on the same GGUF, both in this process with the same threads, and
``RESULTS.md`` takes the ratio of the two series. ``test_decode_paired_transformers`` does the
same against transformers f32 (``test_baseline_transformers.py::test_decode``'s loop), with our
f16 model, the slower of our two.
"""

from __future__ import annotations

import time

import pytest

from harness import BASELINE_HINT, SETTINGS, need, run_rounds, tag
from test_lm import _embeddings, _split, decode, open_text_model, prefill

DTYPES = ["f16", "q8_0"]
WARMUP_TOKENS = 8


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


@pytest.fixture(scope="module")
def ours_and_transformers(model_files, checkpoint_dir, prompt_ids, got_config):
    """Our f16 TextModel and transformers f32, each warmed up by a short decode."""
    need("torch", "transformers", hint=BASELINE_HINT)
    import torch
    from baselines import torch_got

    from gotocr_fast.tokens import IMG_PAD_ID

    ours = open_text_model(model_files("f16").text)
    model = torch_got.load_model(checkpoint_dir, "f32", SETTINGS.threads)
    prefix, n_img, suffix = _split(prompt_ids)
    embd = _embeddings(n_img, got_config.text.hidden_size)
    # transformers gets the same image rows at the <imgpad> positions as ours
    embeds = torch_got.prompt_embeds(model, prompt_ids, torch.from_numpy(embd[None]), IMG_PAD_ID)

    def ours_round(n: int):
        token, n_past = prefill(ours, prefix, embd, suffix)
        return (ours, token, n_past, n), {}

    def theirs_round(n: int) -> float:
        cache, token = torch_got.prefill(model, embeds)
        t0 = time.perf_counter()
        torch_got.decode(model, cache, token, n)
        return time.perf_counter() - t0

    decode(*ours_round(WARMUP_TOKENS)[0])
    theirs_round(WARMUP_TOKENS)
    yield ours_round, theirs_round
    del model
    ours.close()


def test_decode_paired_transformers(benchmark, ours_and_transformers):
    ours_round, theirs_round = ours_and_transformers
    n = SETTINGS.tokens
    theirs_s: list[float] = []

    def setup():  # untimed by pytest-benchmark: transformers' round, then our prefill
        theirs_s.append(theirs_round(n))
        return ours_round(n)

    tag(benchmark, "decode_paired", "ours", "f16", units=n, unit="token", baseline="transformers",
        baseline_dtype="f32")
    run_rounds(benchmark, decode, rounds=2, warmup=0, setup=setup)
    benchmark.extra_info["baseline_round_s"] = [round(t, 4) for t in theirs_s]
