"""The asyncio API's races, made deterministic by holding the engine between its steps.

* ``aocr_stream`` must see every delta even when the request produces its whole text before the
  caller resumes after ``submit`` (the listener is attached before the request is scheduled).
* ``aocr`` / ``aocr_stream`` cancelled while ``submit`` still runs in its worker thread must
  cancel the request, not leave it to run to the end with its handle lost.
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

from gotocr_fast.engine import OcrEngine  # noqa: E402
from gotocr_fast.engine.errors import Cancelled  # noqa: E402


def _image(seed: int, size=(160, 120)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    e = OcrEngine(tiny_model_dir, n_ctx=1024, max_slots=2, max_queue=8, n_threads=2, kv_type="f32")
    yield e
    e.close()


class _HookedQueue:
    """Stands in for the engine's encoder queue: ``after_put(job)`` runs in ``submit``'s thread
    right after the request was queued, i.e. between "submitted" and "submit returned"."""

    def __init__(self, real, after_put):
        self._real = real
        self._after_put = after_put

    def put(self, item):
        self._real.put(item)
        if item is not None:
            self._after_put(item)

    def get(self, *args, **kwargs):
        return self._real.get(*args, **kwargs)

    def get_nowait(self):
        return self._real.get_nowait()


def _wait_idle(engine, timeout=30.0):
    deadline = time.monotonic() + timeout
    while engine.stats()["waiting"] or engine.stats()["running"]:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.01)


def test_stream_sees_text_produced_before_submit_returns(engine, monkeypatch):
    img = _image(1)
    expected = engine.ocr(img, max_tokens=16).text
    assert expected  # the tiny model produces something to lose

    def finish_before_returning(job):
        job.request.result(timeout=30)  # the whole text is produced before submit returns

    monkeypatch.setattr(engine, "_encode_q", _HookedQueue(engine._encode_q, finish_before_returning))

    async def main():
        return [d async for d in engine.aocr_stream(img, max_tokens=16)]

    deltas = asyncio.run(main())
    assert "".join(deltas) == expected


def _consume_stream(engine, img):
    async def consume():
        return [d async for d in engine.aocr_stream(img, max_tokens=64)]

    return consume()


@pytest.mark.parametrize("api", ["aocr", "aocr_stream"])
def test_cancel_while_submit_runs_after_request_created(engine, monkeypatch, api):
    """Cancelled after the request was queued but before ``submit`` returned to the caller."""
    img = _image(2)
    queued: list = []
    entered, release = threading.Event(), threading.Event()

    def hold(job):
        queued.append(job.request)
        entered.set()
        release.wait(30)

    monkeypatch.setattr(engine, "_encode_q", _HookedQueue(engine._encode_q, hold))

    async def main():
        coro = engine.aocr(img, max_tokens=64) if api == "aocr" else _consume_stream(engine, img)
        task = asyncio.ensure_future(coro)
        try:
            assert await asyncio.to_thread(entered.wait, 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            release.set()

    asyncio.run(main())
    assert len(queued) == 1
    with pytest.raises(Cancelled):
        queued[0].result(timeout=30)
    assert all(s.cancelled for s in queued[0].sequences)
    _wait_idle(engine)


@pytest.mark.parametrize("api", ["aocr", "aocr_stream"])
def test_cancel_while_submit_runs_before_request_created(engine, monkeypatch, api):
    """Cancelled while ``submit`` is still decoding the image: the request is cancelled when it
    comes into existence and never reaches the model."""
    img = _image(10 + len(api))  # one not encoded before (per parameter)
    created: list = []
    entered, release = threading.Event(), threading.Event()
    real_prepare = engine._prepare

    def slow_prepare(*args, **kwargs):
        entered.set()
        release.wait(30)
        prepared = real_prepare(*args, **kwargs)
        created.append(prepared.request)
        return prepared

    monkeypatch.setattr(engine, "_prepare", slow_prepare)
    encoded = []
    real_encode = engine.vision.encode
    monkeypatch.setattr(engine.vision, "encode", lambda pix: encoded.append(1) or real_encode(pix), raising=False)

    async def main():
        coro = engine.aocr(img, max_tokens=64) if api == "aocr" else _consume_stream(engine, img)
        task = asyncio.ensure_future(coro)
        try:
            assert await asyncio.to_thread(entered.wait, 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            release.set()

    asyncio.run(main())  # waits for the worker thread (the default executor is shut down)
    assert len(created) == 1
    with pytest.raises(Cancelled):
        created[0].result(timeout=30)
    _wait_idle(engine)
    assert not encoded  # never encoded, never scheduled
    engine.ocr(_image(5 + len(api)), max_tokens=2)  # an image not seen before (no cache hit)
    assert encoded  # (the spy does see encoder calls)


def test_async_results_unchanged(engine):
    img = _image(4)
    expected = engine.ocr(img, max_tokens=12)

    async def main():
        r = await engine.aocr(img, max_tokens=12)
        deltas = [d async for d in engine.aocr_stream(img, max_tokens=12)]
        return r, deltas

    r, deltas = asyncio.run(main())
    assert r.text == expected.text == "".join(deltas)
