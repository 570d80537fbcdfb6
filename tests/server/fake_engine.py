"""A scripted stand-in for ``OcrEngine`` (no model): tests of the HTTP layer's own behaviour.

It shares the real engine's calling conventions (``EngineBase``: ``aocr``, ``aopen_stream``, the
options and their defaults) and returns the real handle type (``gotocr_fast.OcrHandle``), driven
from a thread the way the engine drives it (deltas, finish, cancel), so the server code under test
is exactly what runs with the real engine. Its answer describes the pages it was given, so a test
can tell which image reached which choice::

    "<type>|<color or ->|<box or ->|crop=<0/1>|<w>x<h>#<r>,<g>,<b>;..."   (one w x h # colour per page)

plus ``|ngram=<n>`` / ``|guard=<n>`` when ``no_repeat_ngram_size`` / ``loop_guard`` are given.

Each character is one "token"; ``max_tokens`` cuts the text (finish_reason "length"); a
``loop_guard`` shorter than the text cuts it there as if a loop had been stopped (finish_reason
"repetition").
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from PIL import Image

from gotocr_fast import EngineConfig, InvalidRequest, OcrHandle, OcrOptions, OcrResult, Overloaded, Timings
from gotocr_fast.engine.api import EngineBase
from gotocr_fast.tokens import IM_END_ID

PROMPT_TOKENS_PER_PAGE = 256
PROMPT_TOKENS_FIXED = 30


def describe(pages: list[Image.Image], options: dict[str, Any]) -> str:
    boxes = options.get("box") or ()
    box = None if not boxes else list(boxes[0]) if len(boxes) == 1 else [list(b) for b in boxes]
    head = "|".join([
        options.get("type", "plain"),
        options.get("color") or "-",
        "-" if box is None else str(box).replace(" ", ""),
        f"crop={int(bool(options.get('crop')))}",
    ])
    text = head + "|" + ";".join(
        f"{p.width}x{p.height}#" + ",".join(str(v) for v in p.getpixel((0, 0))) for p in pages
    )
    for name, label in (("no_repeat_ngram_size", "ngram"), ("loop_guard", "guard")):
        if options.get(name) is not None:
            text += f"|{label}={options[name]}"
    return text


class FakeEngine(EngineBase):
    def __init__(self, token_delay: float = 0.002, load_delay: float = 0.0,
                 config: EngineConfig | None = None) -> None:
        if load_delay:
            time.sleep(load_delay)
        self.config = config or EngineConfig(model="fake-model")
        self.token_delay = token_delay
        self._lock = threading.Lock()
        # the engine's bound: max_slots decode at once, max_queue more wait, the next is refused
        self._slots = threading.Semaphore(self.config.max_slots)
        self.held = 0
        self.running = 0
        self.max_running = 0
        self.submitted: list[dict[str, Any]] = []
        self.cancelled = 0
        self.closed = False
        self._ids = itertools.count(1)

    def _submit(self, image_or_pages: Any, opts: OcrOptions, *, stream: bool, logits_hook: Any = None,
                listener: Any = None, handoff: Any = None) -> OcrHandle:
        with self._lock:
            if self.held >= self.config.max_slots + self.config.max_queue:
                raise Overloaded(f"queue full ({self.config.max_queue} waiting); retry later")
            self.held += 1
        try:
            return self._accept(image_or_pages, opts, stream=stream, listener=listener, handoff=handoff)
        except BaseException:
            with self._lock:
                self.held -= 1
            raise

    def _accept(self, image_or_pages: Any, opts: OcrOptions, *, stream: bool, listener: Any,
                handoff: Any) -> OcrHandle:
        pages = list(image_or_pages) if isinstance(image_or_pages, list) else [image_or_pages]
        if not all(isinstance(p, Image.Image) and p.mode == "RGB" for p in pages):
            raise InvalidRequest("the server must hand decoded RGB images to the engine")
        opts.mode(multi_page=len(pages) > 1)  # the engine's rule: no box with several pages
        # the fields the request set (what the real engine would fill in itself stays out)
        options = {k: v for k, v in vars(opts).items() if v is not None}
        text = describe(pages, options)
        max_tokens = options.get("max_tokens", OcrOptions.REFERENCE_MAX_TOKENS)
        finish = "stop"
        guard = options.get("loop_guard") or 0
        if 0 < guard < len(text) and guard <= max_tokens:
            text, finish = text[:guard], "repetition"
        elif len(text) > max_tokens:
            text, finish = text[:max_tokens], "length"
        request = OcrHandle(f"fake-{next(self._ids)}", 1, stream=stream)
        if listener is not None:
            request.add_listener(listener)
        if handoff is not None:
            handoff.bind(request)
        with self._lock:
            self.submitted.append({"pages": len(pages), **options})
        prompt_tokens = PROMPT_TOKENS_FIXED + PROMPT_TOKENS_PER_PAGE * len(pages)
        threading.Thread(target=self._decode, args=(request, text, finish, prompt_tokens), daemon=True).start()
        return request

    def _decode(self, request: OcrHandle, text: str, finish: str, prompt_tokens: int) -> None:
        try:
            while not self._slots.acquire(timeout=0.05):  # waits for a slot; a cancel leaves the queue
                if request.cancelled:
                    return
            self._run(request, text, finish, prompt_tokens)
        finally:
            with self._lock:
                self.held -= 1

    def _run(self, request: OcrHandle, text: str, finish: str, prompt_tokens: int) -> None:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        t0 = time.perf_counter()
        try:
            for ch in text:
                if request.cancelled:
                    with self._lock:
                        self.cancelled += 1
                    return
                request._part_delta(0, ch)
                time.sleep(self.token_delay)
            request._part_finished(0)
            decode_ms = (time.perf_counter() - t0) * 1000
            completion = len(text) + (1 if finish == "stop" else 0)  # + <|im_end|>
            request._finish(OcrResult(text, finish, prompt_tokens, completion,
                                      Timings(preprocess_ms=1.0, encode_ms=2.0, prefill_ms=3.0, decode_ms=decode_ms),
                                      stop_reason=IM_END_ID if finish == "stop" else None))
        finally:
            with self._lock:
                self.running -= 1
            self._slots.release()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"slots": self.config.max_slots, "running": self.running, "waiting": self.held - self.running}

    def close(self) -> None:
        self.closed = True
