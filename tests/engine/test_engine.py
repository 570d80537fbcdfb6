"""The engine on the converted tiny model: llama.cpp parity with transformers, batching, lifecycle.

Expected values come from the committed transformers oracles (tests/fixtures) and from tiktoken;
behavioural checks (concurrency, cancel, cache) compare the engine with itself under different
load, which the oracle cannot express.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

import llama_cpp  # noqa: E402,F401 - required: a broken build fails, never skips
import gotocr_fast._llama  # noqa: E402,F401 - required: a broken build fails, never skips
import gotocr_fast._vision  # noqa: E402,F401 - required: a broken build fails, never skips

from gotocr_fast.engine import ContextOverflow, InvalidRequest, OcrEngine, Overloaded  # noqa: E402
from gotocr_fast.engine.errors import Cancelled  # noqa: E402
from gotocr_fast.engine.model import TextModel  # noqa: E402
from gotocr_fast.prompt import build_prompt  # noqa: E402
from gotocr_fast.prompt import OcrMode, build_queries  # noqa: E402
from gotocr_fast.tokens import ENDOFTEXT_ID, IM_END, IM_END_ID, IMG_PAD_ID  # noqa: E402

from .test_prompt import got_original_prompt  # noqa: E402


def _image(seed: int, size=(320, 240)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def text_model(tiny_model_dir):
    gguf = next(tiny_model_dir.glob("got-text-*.gguf"))
    m = TextModel(gguf, n_slots=2, n_ctx_slot=512, n_batch=512, n_threads=2, kv_type="f32")
    yield m
    m.close()


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    e = OcrEngine(tiny_model_dir, n_ctx=1024, max_slots=8, max_queue=16, n_threads=2, kv_type="f32")
    yield e
    e.close()


# --- text side: llama.cpp vs transformers ----------------------------------------------------------
def test_tokenizer_matches_tiktoken_on_prompts(text_model, qwen_tiktoken):
    for qs in ("OCR: ", "OCR with format: ", "[red] OCR: ", "[100, 100, 500, 997] OCR with format: ",
               "OCR with format across multi pages: ", "OCR with format upon the patch reference: "):
        for views in (1, 3):
            prompt = got_original_prompt(qs, views)
            assert text_model.tokenize(prompt) == qwen_tiktoken.encode(prompt, allowed_special="all")


def test_tokenizer_nfc_and_digits(text_model, qwen_tiktoken):
    import unicodedata

    raw = "Cafe\u0301 ２０２４ 12345 数字٣٤ ﬁ"
    assert text_model.tokenize(raw) == qwen_tiktoken.encode(unicodedata.normalize("NFC", raw))


def test_text_logits_match_transformers(text_model, oracle):
    fx = oracle("tiny_text")
    ids = fx["input_ids"].astype(np.int32)
    n = len(ids)
    assert text_model.tokenize("<|im_start|>" + fx.meta["raw_text"] + "<|im_end|>") == ids.tolist()
    text_model.free_sequence(0)
    text_model.decode_tokens(ids, np.arange(n, dtype=np.int32), np.zeros(n, np.int32), np.ones(n, np.int8))
    logits = text_model.logits(np.arange(n, dtype=np.int32))
    text_model.free_sequence(0)
    np.testing.assert_allclose(logits[-1], fx["last_logits"], atol=1e-3, rtol=0)
    top_ids, top_vals = fx["topk_ids"], fx["topk_values"]
    for p in range(n):
        np.testing.assert_allclose(logits[p, top_ids[p]], top_vals[p], atol=1e-3, rtol=0)
        if top_vals[p, 0] - top_vals[p, 1] > 1e-2:
            assert int(np.argmax(logits[p])) == int(top_ids[p, 0])


# --- the engine ---------------------------------------------------------------------------------
def test_prompt_ids_match_original_got(engine, qwen_tiktoken):
    t = engine.vision.tokens_per_view
    for qs in ("OCR: ", "[green] OCR with format: "):
        for views in (1, 2):
            expected = qwen_tiktoken.encode(
                got_original_prompt(qs, 1).replace("<imgpad>" * 256, "<imgpad>" * (t * views)), allowed_special="all"
            )
            assert engine.prompt_token_ids(qs, views) == expected


def test_greedy_and_result_shape(engine):
    r = engine.ocr(_image(1), max_tokens=24)
    assert r.finish_reason in ("stop", "length")
    assert 1 <= r.completion_tokens <= 24
    if r.finish_reason == "length":
        assert r.completion_tokens == 24
    n_prompt = len(engine.prompt_token_ids("OCR: ", 1))
    assert r.prompt_tokens == n_prompt
    assert r.timings.encode_ms >= 0 and r.timings.decode_ms >= 0 and r.timings.prefill_ms > 0
    assert engine.ocr(_image(1), max_tokens=24).text == r.text  # greedy = deterministic


def test_same_greedy_alone_and_among_8_concurrent(engine):
    imgs = [_image(100 + i) for i in range(8)]
    alone = [engine.ocr(im, max_tokens=32) for im in imgs]
    reqs = [engine.submit(im, max_tokens=32) for im in imgs]
    together = [r.result(120) for r in reqs]
    for a, b in zip(alone, together):
        assert a.text == b.text and a.completion_tokens == b.completion_tokens and a.finish_reason == b.finish_reason
    assert len({a.text for a in alone}) > 1  # different images → different outputs (the image matters)


def test_finishing_at_different_steps_keeps_every_output(engine):
    # sequences leave the shared KV pool at different steps while others keep decoding beside
    # their freed cells and reused seq ids; that must not change what any of them generates
    imgs = [_image(200 + i) for i in range(6)]
    limits = [40, 3, 40, 5, 40, 2]
    alone = [engine.ocr(im, max_tokens=m) for im, m in zip(imgs, limits)]
    reqs = [engine.submit(im, max_tokens=m) for im, m in zip(imgs, limits)]
    together = [r.result(120) for r in reqs]
    for a, b in zip(alone, together):
        assert (a.text, a.completion_tokens, a.finish_reason) == (b.text, b.completion_tokens, b.finish_reason)


def test_streaming_deltas_concatenate_to_text(engine):
    stream = engine.ocr_stream(_image(7), max_tokens=40)
    deltas = list(stream)
    assert "".join(deltas) == stream.result.text
    for d in deltas:
        d.encode("utf-8")
    handle = engine.submit(_image(7), max_tokens=40)
    assert "".join(handle) == handle.result(0).text == stream.result.text


def test_multi_box_and_multi_page_and_crop(engine):
    img = _image(3, (400, 300))
    one = engine.ocr(img, box=[0, 0, 200, 150], max_tokens=8)
    two = engine.ocr(img, box=[[0, 0, 200, 150], [200, 150, 400, 300]], max_tokens=8)
    assert two.text.startswith(one.text + "\n")
    qs = build_queries(OcrMode(boxes=[(0, 0, 200, 150), (200, 150, 400, 300)]), img.size)
    assert two.prompt_tokens == sum(len(engine.prompt_token_ids(q, 1)) for q in qs)
    assert one.prompt_tokens == len(engine.prompt_token_ids(qs[0], 1))
    pages = engine.ocr([_image(4), _image(5)], type="format", max_tokens=8)
    assert pages.prompt_tokens == len(engine.prompt_token_ids("OCR with format across multi pages: ", 2))
    wide = _image(6, (1000, 240))
    crop = engine.ocr(wide, type="format", crop=True, max_tokens=8)
    assert crop.prompt_tokens > engine.ocr(wide, type="format", max_tokens=8).prompt_tokens


def test_sampling_seeded_reproducible(engine):
    a = engine.ocr(_image(9), temperature=1.0, top_p=0.9, seed=42, max_tokens=16)
    b = engine.ocr(_image(9), temperature=1.0, top_p=0.9, seed=42, max_tokens=16)
    assert a.text == b.text


def test_cancel_frees_slot(tiny_model_dir):
    with OcrEngine(tiny_model_dir, n_ctx=1024, max_slots=1, max_queue=4, n_threads=2) as e:
        e.ocr(_image(1), max_tokens=1)  # warm
        long = e.submit(_image(1), max_tokens=900)
        deadline = time.time() + 30
        while e.scheduler.n_running == 0 and not long.done() and time.time() < deadline:
            time.sleep(0.005)
        long.cancel()
        with pytest.raises(Cancelled):
            long.result(5)
        t0 = time.perf_counter()
        r = e.ocr(_image(2), max_tokens=4)  # gets the only slot
        assert r.completion_tokens >= 1
        assert time.perf_counter() - t0 < 20
        deadline = time.time() + 5
        while e.scheduler.n_free_slots != 1 and time.time() < deadline:
            time.sleep(0.01)
        assert e.scheduler.n_free_slots == 1 and e.scheduler.n_running == 0


def test_overflow_and_bad_arguments_raise_before_work(engine):
    before = engine.cache.misses
    with pytest.raises(ContextOverflow):
        engine.submit(_image(11), max_tokens=1024)
    for bad in ({"type": "latex"}, {"color": "pink"}, {"max_tokens": 0}, {"temperature": -1},
                {"top_p": 0}, {"repetition_penalty": 0}, {"box": [5, 5, 1, 1]}, {"box": [0, 0, 9999, 10]},
                {"unknown": 1}, {"crop": "yes"}):
        with pytest.raises(InvalidRequest):
            engine.submit(_image(11), **bad)
    with pytest.raises(InvalidRequest):
        engine.submit(b"not an image")
    assert engine.cache.misses - before <= 1  # only the overflow case looked the image up


def test_overloaded_when_queue_full(tiny_model_dir):
    with OcrEngine(tiny_model_dir, n_ctx=1024, max_slots=1, max_queue=2, n_threads=2) as e:
        reqs = []
        with pytest.raises(Overloaded):
            for i in range(20):
                reqs.append(e.submit(_image(i), max_tokens=200))
        for r in reqs:
            r.cancel()


def test_cache_hit_skips_encode(engine, monkeypatch):
    calls = []
    real = engine.vision.encode
    monkeypatch.setattr(engine.vision, "encode", lambda px: calls.append(px.shape) or real(px))
    img = _image(21)
    a = engine.ocr(img, max_tokens=8)
    b = engine.ocr(img.copy(), max_tokens=8)
    assert len(calls) == 1 and not a.cache_hit and b.cache_hit
    assert a.text == b.text
    engine.ocr(img, crop=True, max_tokens=8)  # other preprocessing → other key
    assert len(calls) == 2


def test_identical_images_queued_together_encode_once(engine, monkeypatch):
    calls = []
    real = engine.vision.encode
    monkeypatch.setattr(engine.vision, "encode", lambda px: calls.append(px.shape) or real(px))
    img = _image(23)
    reqs = [engine.submit(img.copy(), box=(10, 10, 60 + 10 * i, 80), max_tokens=8) for i in range(4)]
    results = [r.result(120) for r in reqs]
    assert len(calls) == 1  # all four missed the cache at submit; the encoder looked again
    assert sum(r.cache_hit for r in results) == 3
    alone = engine.ocr(img, box=(10, 10, 90, 80), max_tokens=8)
    assert alone.text == results[3].text


def test_boxes_of_one_page_share_the_prompt_kv(engine):
    img = _image(31, (400, 300))
    boxes = [[5, 5, 160, 120], [200, 10, 390, 140], [0, 150, 400, 300]]
    alone = [engine.ocr(img, box=b, max_tokens=16).text for b in boxes]  # one sequence: nothing to share
    before = engine.scheduler.kv_copies
    reqs = [engine.submit(img, box=b, max_tokens=16) for b in boxes]
    assert [r.result(120).text for r in reqs] == alone
    assert engine.scheduler.kv_copies - before == 2  # computed once, copied twice
    before = engine.scheduler.kv_copies
    multi = engine.ocr(img, box=boxes, max_tokens=16)  # one request, three boxes
    assert multi.text == "\n".join(alone)
    assert engine.scheduler.kv_copies - before == 2


def test_asyncio_wrappers(engine):
    async def main():
        r = await engine.aocr(_image(31), max_tokens=12)
        deltas = [d async for d in engine.aocr_stream(_image(31), max_tokens=12)]
        return r, deltas

    r, deltas = asyncio.run(main())
    assert "".join(deltas) == r.text


def test_result_names_what_stopped_it(engine):
    free = engine.ocr(_image(41), max_tokens=24)
    if free.finish_reason == "stop":
        assert free.stop_reason in (IM_END_ID, ENDOFTEXT_ID, IM_END)
    else:
        assert free.stop_reason is None
    assert len(free.text) >= 6, free.text  # greedy on a random-weight model: a fixed, arbitrary text
    stop = free.text[3:6]
    cut = engine.ocr(_image(41), max_tokens=24, stop=[stop])
    assert (cut.text, cut.finish_reason, cut.stop_reason) == (free.text[: free.text.index(stop)], "stop", stop)


def test_imgpad_is_one_token_per_image_row(engine):
    assert engine.text.tokenize(build_prompt("OCR: ", 2)).count(IMG_PAD_ID) == 2


def test_vision_precision_reaches_the_encoder(tiny_model_dir):
    from gotocr_fast.vision import VisionEncoder

    with VisionEncoder(next(tiny_model_dir.glob("got-vision-*.gguf")), n_threads=1, precision="bf16") as probe:
        here = probe.precision  # "bf16" where this CPU multiplies bf16 natively, else "f32"
    with OcrEngine(tiny_model_dir, n_ctx=1024, max_slots=1, n_threads=2, vision_precision="bf16") as e:
        assert e.vision.precision == here
        assert e.ocr(_image(3), max_tokens=4).completion_tokens >= 1
    with OcrEngine(tiny_model_dir, n_ctx=1024, max_slots=1, n_threads=2) as e:
        assert e.vision.precision == "f32"  # the default is the reference's arithmetic


def test_vision_and_text_of_different_widths_are_refused(tmp_path, tiny_model_dir):
    import dataclasses

    from gotocr_fast import ModelError, synth
    from gotocr_fast.convert import convert_checkpoint

    tiny = synth.CONFIGS["tiny"]
    narrow = dataclasses.replace(tiny, name="tiny-narrow-lm", text=dataclasses.replace(tiny.text, hidden_size=32))
    src = synth.write_checkpoint(tmp_path / "ckpt", narrow)
    convert_checkpoint(src, tmp_path / "narrow", outtype="f32", progress=False)
    text = next((tmp_path / "narrow").glob("got-text-*.gguf"))
    vision = next(tiny_model_dir.glob("got-vision-*.gguf"))  # its tokens are 64 wide, the LM 32
    with pytest.raises(ModelError, match="do not match the LM hidden size"):
        OcrEngine(str(text), vision=str(vision), n_ctx=512, max_slots=1, n_threads=1)
