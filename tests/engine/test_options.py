"""The engine's typed boundary: EngineConfig and OcrOptions own every default and rule (no model needed)."""

from __future__ import annotations

import pytest

import gotocr_fast
from gotocr_fast import EngineConfig, InvalidRequest, OcrOptions


def _code(fn) -> str:
    with pytest.raises(InvalidRequest) as info:
        fn()
    return info.value.code


def test_public_names():
    for name in ("EngineConfig", "OcrOptions", "OcrHandle", "OcrEngine", "OcrResult"):
        assert name in gotocr_fast.__all__ and getattr(gotocr_fast, name).__name__ == name


def test_defaults_are_gots():
    o = OcrOptions()
    assert (o.type, o.box, o.color, o.crop, o.temperature, o.top_p, o.top_k, o.repetition_penalty) == (
        "plain", (), None, False, 0.0, 1.0, 0, 1.0)
    assert (o.max_tokens, o.no_repeat_ngram_size, o.loop_guard, o.stop) == (None, None, None, ())
    assert o.loop_guard_span() == 256  # docs/DECODING.md: the guard's span
    c = EngineConfig(model="m")
    assert (c.n_ctx, c.max_slots, c.max_queue, c.max_pixels) == (8192, 4, 64, 64 * 1024 * 1024)


@pytest.mark.parametrize(("box", "want"), [
    ([1, 2, 3, 4], ((1, 2, 3, 4),)),
    ((1.5, 2, 3, 4), ((1.5, 2, 3, 4),)),
    ([[1, 2, 3, 4], [5, 6, 7, 8]], ((1, 2, 3, 4), (5, 6, 7, 8))),
    ([], ()),
    (None, ()),
])
def test_box_shapes(box, want):
    assert OcrOptions(box=box).box == want


@pytest.mark.parametrize(("fields", "code"), [
    ({"box": [1, 2, 3]}, "invalid_box"),
    ({"box": [[1, 2, 3, 4], [1, 2]]}, "invalid_box"),
    ({"box": "1,2,3,4"}, "invalid_box"),
    ({"box": [3, 2, 1, 4]}, "invalid_request"),  # x2 <= x1
    ({"box": [1, 2, 3, 4], "crop": True}, "invalid_request"),
    ({"type": "markdown"}, "invalid_request"),
    ({"color": "pink"}, "invalid_request"),
    ({"crop": "yes"}, "invalid_request"),
    ({"max_tokens": 0}, "invalid_request"),
    ({"max_tokens": True}, "invalid_request"),
    ({"temperature": 2.5}, "invalid_request"),
    ({"top_p": 0}, "invalid_request"),
    ({"top_k": -1}, "invalid_request"),
    ({"repetition_penalty": 0}, "invalid_request"),
    ({"seed": -1}, "invalid_request"),
    ({"no_repeat_ngram_size": -1}, "invalid_request"),
    ({"loop_guard": -1}, "invalid_request"),
    ({"stop": [""]}, "invalid_request"),
    ({"stop": [3]}, "invalid_request"),
])
def test_bad_values_are_invalid_requests_with_a_code(fields, code):
    assert _code(lambda: OcrOptions(**fields)) == code


def test_of_merges_keywords_and_refuses_unknown_names():
    base = OcrOptions(type="format", max_tokens=10)
    assert OcrOptions.of(base, color="red") == OcrOptions(type="format", max_tokens=10, color="red")
    assert OcrOptions.of(base, max_tokens=None) == base  # None keeps the value (the option's default)
    assert OcrOptions.of(stop="END").stop == ("END",)
    assert _code(lambda: OcrOptions.of(colour="red")) == "invalid_request"


def test_multi_page_rule_applies_when_the_pages_are_known():
    o = OcrOptions(box=[1, 2, 3, 4])
    assert o.mode(multi_page=False).boxes == ((1, 2, 3, 4),)
    assert _code(lambda: o.mode(multi_page=True)) == "invalid_request"


def test_config_resolves_its_request_defaults_and_limit():
    c = EngineConfig(model="m", max_tokens_limit=100, default_max_tokens=50, loop_guard=0)
    r = c.resolve(OcrOptions())
    assert (r.max_tokens, r.loop_guard) == (50, 0)
    assert c.resolve(r) == r  # idempotent
    assert c.resolve(OcrOptions(max_tokens=7, loop_guard=9)) == OcrOptions(max_tokens=7, loop_guard=9)
    assert _code(lambda: c.resolve(OcrOptions(max_tokens=101))) == "max_tokens_too_large"
    assert EngineConfig(model="m").resolve(OcrOptions()) == OcrOptions()


@pytest.mark.parametrize("fields", [{"n_ctx": 10}, {"max_slots": 0}, {"max_queue": -1}, {"n_threads": 0},
                                    {"max_pixels": 0}, {"max_slots": True}, {"vision_precision": "fp8"},
                                    {"kv_type": "q4_0"}, {"default_max_tokens": 9, "max_tokens_limit": 8}])
def test_bad_config_is_refused(fields):
    with pytest.raises(ValueError):
        EngineConfig(model="m", **fields)
