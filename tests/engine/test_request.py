"""Streaming text assembly (UTF-8 safety, stop text), request handles and the embedding cache."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gotocr_fast.engine.cache import EmbeddingCache
from gotocr_fast.engine.errors import Cancelled
from gotocr_fast.engine.request import Detokenizer, OcrHandle, OcrResult


def _split_bytes(data: bytes, sizes):
    out, i = [], 0
    for n in sizes:
        out.append(data[i : i + n])
        i += n
    out.append(data[i:])
    return [b for b in out if b]


@pytest.mark.parametrize("sizes", [[1] * 40, [2, 3, 1, 5, 2, 2, 1, 4], [7, 1, 1, 1]])
def test_detokenizer_never_splits_utf8(sizes):
    text = "héllo 世界 — 🙂 ok ∑"
    pieces = _split_bytes(text.encode("utf-8"), sizes)
    d = Detokenizer()
    deltas = [d.feed(p) for p in pieces] + [d.flush()]
    assert "".join(deltas) == text
    for delta in deltas:
        delta.encode("utf-8")  # a lone surrogate / broken char would fail here
        assert "\ufffd" not in delta


def test_detokenizer_stop_text_cut_and_held_back():
    d = Detokenizer()
    out = [d.feed(b) for b in [b"abc", b"<|", b"im", b"_end", b"|>", b"zzz"]]
    assert "".join(out) == "abc"
    assert out[1] == "" and out[2] == ""  # held back: could be the stop text
    assert d.stopped and d.text == "abc"


def test_detokenizer_false_stop_prefix_released():
    d = Detokenizer()
    out = [d.feed(b) for b in [b"a<|", b"im", b"x"]] + [d.flush()]
    assert "".join(out) == "a<|imx"
    assert out[0] == "a"


def test_detokenizer_incomplete_tail_at_end_is_replacement():
    d = Detokenizer()
    assert d.feed("é".encode()[:1]) == ""
    assert d.flush() == "\ufffd"


def test_request_joins_parts_in_order_while_streaming():
    req = OcrHandle("r", 2)
    got = []
    t = threading.Thread(target=lambda: got.extend(req))
    t.start()
    req._part_delta(1, "second")  # part 1 runs ahead: buffered
    req._part_delta(0, "fir")
    req._part_delta(0, "st")
    req._part_finished(0)
    req._part_delta(1, "!")
    req._part_finished(1)
    req._finish(OcrResult("first\nsecond!", "stop", 10, 3))
    t.join(5)
    assert "".join(got) == "first\nsecond!"
    assert req.result(0).text == "first\nsecond!"


def test_cancel_fails_result_and_runs_hooks():
    req = OcrHandle("r", 1)
    hit = []
    req._on_cancel(lambda: hit.append(1))
    req.cancel()
    assert hit == [1]
    with pytest.raises(Cancelled):
        req.result(0)
    with pytest.raises(Cancelled):
        list(req)


def test_result_timeout():
    with pytest.raises(TimeoutError):
        OcrHandle("r", 1).result(0.01)


def test_embedding_cache_lru_bounded_in_bytes():
    c = EmbeddingCache(max_bytes=3 * 400)
    arrs = {k: np.full((10, 10), i, dtype=np.float32) for i, k in enumerate([b"a", b"b", b"c", b"d"])}
    for k in (b"a", b"b", b"c"):
        c.put(k, arrs[k])
    assert c.bytes == 1200 and len(c) == 3
    assert c.get(b"a") is not None  # a is now most recent
    c.put(b"d", arrs[b"d"])  # evicts b (least recent)
    assert c.get(b"b") is None and c.get(b"a") is not None and c.get(b"d") is not None
    assert c.bytes <= 1200
    c.put(b"huge", np.zeros(1000, dtype=np.float32))  # larger than the bound: not stored
    assert c.get(b"huge") is None
    with pytest.raises(ValueError):
        c.get(b"a")[0, 0] = 1  # shared entries are read-only
