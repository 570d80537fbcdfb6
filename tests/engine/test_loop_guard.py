"""The loop guard on the tiny model: a logits hook forces the model into a loop (some reading, then
one phrase again and again); the guard stops it with finish_reason "repetition" where its rule
first holds, frees the slot, and keeps the text before the loop plus one cycle. Expected texts
come from tiktoken (the reference tokenizer), expected stopping points from the rule counted here.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import llama_cpp  # noqa: F401 - required: a broken build fails, never skips
import gotocr_fast._llama  # noqa: F401 - required: a broken build fails, never skips

from gotocr_fast.engine import InvalidRequest, OcrEngine
from gotocr_fast.engine.defaults import LOOP_GUARD

INTRO = "Invoice 2024-117, Acme Ltd. Total due: 1,250.00 EUR.\n"
CYCLE = "Thank you for your order!\n"


def _image(seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(200, 260, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    e = OcrEngine(tiny_model_dir, n_ctx=1024, max_slots=4, max_queue=16, n_threads=2, kv_type="f32")
    yield e
    e.close()


@pytest.fixture(scope="module")
def script(qwen_tiktoken):
    intro = qwen_tiktoken.encode(INTRO)
    cycle = qwen_tiktoken.encode(CYCLE)
    return intro, cycle


def _forcing(tokens_at):
    """A logits hook that makes the model's choice at step i be ``tokens_at(i)``."""
    steps: dict[int, int] = {}
    lock = threading.Lock()

    def hook(part: int, row: np.ndarray) -> None:
        with lock:
            i = steps.get(part, 0)
            steps[part] = i + 1
        row[tokens_at(i)] = row.max() + 100.0

    return hook


def _loop(intro, cycle):
    return lambda i: intro[i] if i < len(intro) else cycle[(i - len(intro)) % len(cycle)]


def _expected_stop(n_intro: int, period: int, min_span: int) -> int:
    """Tokens generated when the rule first holds: the periodic tail spans max(W, k·p) tokens.
    The intro does not end the way the cycle does, so the tail starts with the cycle."""
    return n_intro + max(min_span, LOOP_GUARD.min_repeats * period)


def test_forced_loop_stops_within_the_window(engine, script, qwen_tiktoken):
    intro, cycle = script
    assert intro[-1] != cycle[-1]  # the periodic tail starts exactly at the cycle
    req = engine.submit(_image(1), stream=False, _logits_hook=_forcing(_loop(intro, cycle)),
                        max_tokens=900, no_repeat_ngram_size=0)
    r = req.result(120)
    assert r.finish_reason == "repetition"
    assert r.completion_tokens == _expected_stop(len(intro), len(cycle), LOOP_GUARD.min_span)
    assert r.completion_tokens < 900
    assert r.text == qwen_tiktoken.decode(intro + cycle) == INTRO + CYCLE  # one cycle kept
    assert engine.scheduler.n_running == 0 and engine.scheduler.n_free_slots == engine.max_slots


def test_guard_span_is_an_option_and_zero_turns_it_off(engine, script, qwen_tiktoken):
    intro, cycle = script
    hook = _forcing(_loop(intro, cycle))
    short = engine.submit(_image(2), stream=False, _logits_hook=hook, max_tokens=900, no_repeat_ngram_size=0,
                          loop_guard=64)
    r = short.result(120)
    assert r.finish_reason == "repetition"
    assert r.completion_tokens == _expected_stop(len(intro), len(cycle), 64)
    assert r.text == INTRO + CYCLE

    off = engine.submit(_image(2), stream=False, _logits_hook=_forcing(_loop(intro, cycle)), max_tokens=600,
                        no_repeat_ngram_size=0, loop_guard=0)
    r = off.result(120)
    assert r.finish_reason == "length" and r.completion_tokens == 600
    n_cycles, rest = divmod(600 - len(intro), len(cycle))
    assert r.text == qwen_tiktoken.decode(intro + cycle * n_cycles + cycle[:rest])

    for bad in (-1, 2.5, True, "64"):
        with pytest.raises(InvalidRequest):
            engine.submit(_image(2), loop_guard=bad)


def test_stream_never_shows_the_repeats(engine, script):
    """Deltas are held back while a repetition may be a loop: the stream ends as the result."""
    intro, cycle = script
    req = engine.submit(_image(3), _logits_hook=_forcing(_loop(intro, cycle)), max_tokens=900,
                        no_repeat_ngram_size=0)
    deltas = list(req)
    r = req.result(0)
    assert r.finish_reason == "repetition"
    assert "".join(deltas) == r.text == INTRO + CYCLE


def test_repeats_that_stop_are_text(engine, script, qwen_tiktoken):
    """A phrase repeated fewer times than the guard needs, then the end of the answer: all of it
    is text, streamed in full (the held tokens are released), finish_reason stop."""
    intro, cycle = script
    from gotocr_fast.tokens import IM_END_ID

    tokens = intro + cycle * 6 + [IM_END_ID]
    req = engine.submit(_image(4), _logits_hook=_forcing(lambda i: tokens[min(i, len(tokens) - 1)]),
                        max_tokens=900, no_repeat_ngram_size=0)
    deltas = list(req)
    r = req.result(0)
    assert r.finish_reason == "stop" and r.completion_tokens == len(tokens)
    assert "".join(deltas) == r.text == qwen_tiktoken.decode(tokens[:-1])


def test_the_ngram_rule_breaks_a_short_loop(engine, script):
    """With GOT's rule on (the plain default), the forced cycle cannot repeat a 20-gram: the model's
    next choice replaces the banned token, so the loop never forms."""
    intro, cycle = script
    req = engine.submit(_image(5), stream=False, _logits_hook=_forcing(_loop(intro, cycle)), max_tokens=200)
    req.result(120)
    gen = req.sequences[0].generated
    assert req.sequences[0].sampler.params.no_repeat_ngram_size == 20
    grams = [tuple(gen[i : i + 20]) for i in range(len(gen) - 19)]
    assert len(grams) == len(set(grams))  # no 20-gram twice
    assert gen[: len(intro) + len(cycle)] == intro + cycle  # until the first repeat, the forced tokens


def test_default_budget_is_the_reference_within_the_context(engine):
    """No max_tokens: GOT's 4096, cut to what this engine's 1024-token context leaves."""
    req = engine.submit(_image(6), stream=False)
    try:
        seq = req.sequences[0]
        assert seq.max_tokens == min(4096, engine.n_ctx - seq.prompt_tokens) == engine.n_ctx - seq.prompt_tokens
        assert seq.sampler.params.no_repeat_ngram_size == 20 and seq.loop_guard is not None
    finally:
        req.cancel()
    crop = engine.submit(_image(6), stream=False, crop=True, max_tokens=4)
    crop.result(120)
    assert crop.sequences[0].sampler.params.no_repeat_ngram_size == 0
