"""``OcrEngine``: the public Python API (sync, streaming, handles, asyncio).

Request lifecycle (vLLM's shape):

* ``submit`` (caller's thread): validate options → decode images → views → prompt token ids →
  context check → queue-capacity check. Every error here is raised before any model work.
  Embeddings come from the cache when the same pixels were seen with the same settings;
  otherwise the views' pixel tensors are built here too.
* encoder thread: ``VisionEncoder.encode`` for cache misses, then the sequences go to the
  scheduler queue.
* scheduler thread: continuous batching in llama.cpp (see ``scheduler.py``); deltas stream
  back through the handle; finished/cancelled sequences free their slot at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence as Seq
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..prompt import InvalidPrompt, OcrMode, build_prompt, build_queries, image_token_span
from ..tokens import IMG_PAD_ID
from ..cpus import available_cpus
from ..inputs import load_pages
from .cache import EmbeddingCache, image_key
from .cpu_turns import CpuTurns, NoTurns
from .errors import Cancelled, ContextOverflow, EngineClosed, InvalidRequest, ModelError, OcrError, Overloaded
from .defaults import LOOP_GUARD, REFERENCE_MAX_NEW_TOKENS, default_max_tokens, default_no_repeat_ngram_size
from .model import TextModel, resolve_model_paths
from .repetition import LoopGuard
from .request import OcrRequest, OcrResult, Sequence, Timings
from .sampling import Sampler, SamplingParams
from .scheduler import Scheduler

__all__ = ["OcrEngine", "OcrStream", "DEFAULT_MAX_TOKENS"]

DEFAULT_MAX_TOKENS = REFERENCE_MAX_NEW_TOKENS
"""``max_tokens`` when a request gives none, as far as the context allows (``defaults.py``)."""
_OPTION_NAMES = frozenset(
    {"type", "box", "color", "crop", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed",
     "no_repeat_ngram_size", "loop_guard"}
)
_ids = itertools.count(1)


def _parse_boxes(box: Any) -> tuple:
    if box is None:
        return ()
    if isinstance(box, (str, bytes)) or not isinstance(box, Seq):
        raise InvalidRequest(f"box must be [x1, y1, x2, y2] or a list of them; got {box!r}")
    if len(box) == 0:
        return ()
    if all(isinstance(v, Seq) and not isinstance(v, (str, bytes)) for v in box):
        return tuple(tuple(b) for b in box)
    return (tuple(box),)


class _Prepared:
    """Everything ``submit`` computed for one request, handed to the encoder thread."""

    __slots__ = ("request", "seqs", "pixels", "key", "embeddings")

    def __init__(self, request, seqs, pixels, key, embeddings):
        self.request = request
        self.seqs = seqs
        self.pixels = pixels  # float32 [N,3,S,S] or None on a cache hit
        self.key = key
        self.embeddings = embeddings  # float32 [N*T, E] on a cache hit


def _call_soon(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """``loop.call_soon_threadsafe`` from an engine thread; a closed loop (its caller is gone) is ignored."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


class _Handoff:
    """Carries a request handle out of the worker thread that runs ``submit``.

    The asyncio caller may be cancelled while ``submit`` is still running in its thread; it then
    calls ``cancel()``, and whichever of ``bind`` (thread) and ``cancel`` (caller) comes second
    cancels the request, so the cancellation always reaches the handle.
    """

    __slots__ = ("_lock", "_request", "cancelled")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._request: OcrRequest | None = None
        self.cancelled = False

    def bind(self, request: OcrRequest) -> None:
        with self._lock:
            self._request = request
            cancel = self.cancelled
        if cancel:
            request.cancel()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            request = self._request
        if request is not None:
            request.cancel()


class OcrStream:
    """Iterator over text deltas; ``.result`` (OcrResult) once exhausted. Closing it early cancels."""

    def __init__(self, request: OcrRequest):
        self.request = request
        self.result: OcrResult | None = None
        self._it = iter(request)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._it)
        except StopIteration:
            self.result = self.request.result()
            raise

    def close(self) -> None:
        if not self.request.done():
            self.request.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OcrEngine:
    """GOT-OCR2 on llama.cpp + the ggml vision encoder, with continuous batching.

    ``n_ctx`` is the context of ONE request (prompt + generated tokens); ``kv_tokens`` the KV
    pool the ``max_slots`` running requests share (default: ``n_ctx``, see docs/MEMORY.md).
    ``max_queue`` bounds the requests waiting for a slot (beyond it
    ``submit`` raises :class:`Overloaded`).

    ``share_cpu``: the vision encoder and the LM decode loop run in turns instead of at the same
    time (see ``cpu_turns.py``); by default whenever their threads together exceed the CPUs.

    ``flash_attn``: llama.cpp's flash attention; by default off on a CPU-only build (slower
    decode there) and with an f32 KV cache, llama.cpp's "auto" with a GPU build.
    """

    def __init__(
        self,
        model_dir_or_text_gguf: str | os.PathLike,
        vision_gguf: str | os.PathLike | None = None,
        *,
        n_threads: int | None = None,
        n_ctx: int = 8192,
        kv_tokens: int | None = None,
        max_slots: int = 4,
        max_queue: int = 64,
        embed_cache_bytes: int = 256 * 1024 * 1024,
        max_tiles: int = 6,
        max_pixels: int | None = None,
        n_batch: int = 2048,
        kv_type: str = "f16",
        flash_attn: bool | None = None,
        share_cpu: bool | None = None,
        verbose: bool = False,
    ):
        for name, v, lo in (("n_ctx", n_ctx, 64), ("max_slots", max_slots, 1), ("max_queue", max_queue, 1),
                            ("max_tiles", max_tiles, 1), ("n_batch", n_batch, 32)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}; got {v!r}")
        from .. import preprocess
        from ..vision import VisionEncoder

        self._preprocess = preprocess
        self.paths = resolve_model_paths(model_dir_or_text_gguf, vision_gguf)
        self.model_name = self.paths.text.parent.name if Path(model_dir_or_text_gguf).is_dir() else self.paths.text.stem
        self.max_tiles = max_tiles
        self.max_pixels = preprocess.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        self.vision = VisionEncoder(str(self.paths.vision), n_threads=n_threads)
        self.text: TextModel | None = None
        try:
            self.text = TextModel(
                self.paths.text, n_slots=max_slots, n_ctx_slot=n_ctx, kv_tokens=kv_tokens, n_batch=n_batch,
                n_threads=n_threads, kv_type=kv_type, flash_attn=flash_attn, verbose=verbose,
            )
            if self.text.n_embd != self.vision.embedding_length:
                raise ModelError(
                    f"vision embeddings ({self.vision.embedding_length}) do not match the LM hidden size ({self.text.n_embd})"
                )
        except BaseException:
            self._close_models()
            raise
        self.n_ctx = self.text.n_ctx_slot
        self.max_slots = self.text.n_slots
        self.max_queue = max_queue
        self.cache = EmbeddingCache(embed_cache_bytes)
        self._closed = False
        self._submit_lock = threading.Lock()
        self._encode_q: queue.Queue[_Prepared | None] = queue.Queue()
        self._in_encode = 0
        # encoder and decode loop take turns on the CPU when their threads would oversubscribe it
        if share_cpu is None:
            share_cpu = self.vision.n_threads + self.text.n_threads > available_cpus()
        self.cpu_turns = CpuTurns() if share_cpu else NoTurns()
        self.scheduler = Scheduler(self.text, max_queue=max_queue, cpu_turns=self.cpu_turns)
        self._encoder = threading.Thread(target=self._encode_loop, name="gotocr-encoder", daemon=True)
        self._encoder.start()
        self._prompt_ids = lru_cache(maxsize=256)(self._tokenize_prompt)

    # --- public API --------------------------------------------------------------------------
    def ocr(self, image_or_pages, **options) -> OcrResult:
        """OCR one image (or one multi-page group: a list of images) and wait for the result."""
        return self.submit(image_or_pages, _stream=False, **options).result()

    def ocr_stream(self, image_or_pages, **options) -> OcrStream:
        """Text deltas as they are generated; ``.result`` holds the OcrResult at the end."""
        return OcrStream(self.submit(image_or_pages, **options))

    def submit(self, image_or_pages, *, _stream: bool = True, _logits_hook=None, **options) -> OcrRequest:
        """Queue a request; returns its handle at once (``result(timeout)``, ``cancel()``, deltas).

        ``_logits_hook(part, row)`` (for parity tests) sees every raw logits row before sampling.
        """
        return self._submit(image_or_pages, options, stream=_stream, logits_hook=_logits_hook)

    def _submit(self, image_or_pages, options: dict, *, stream: bool, logits_hook=None,
                listener=None, handoff: "_Handoff | None" = None) -> OcrRequest:
        """``submit`` with two hooks for callers on other threads (the asyncio API).

        ``listener`` is attached to the handle before the request can produce anything, so it
        sees every delta. ``handoff`` receives the handle as soon as it exists, before the request
        is scheduled: a caller that gave up meanwhile (``handoff.cancel()``) cancels it there.
        """
        if handoff is not None and handoff.cancelled:
            raise Cancelled("the request was cancelled before it was submitted")
        if self._closed:
            raise EngineClosed("the engine is closed")
        if self._in_encode + self.scheduler.n_waiting >= self.max_queue:  # cheap early refusal
            raise Overloaded(f"queue full ({self.max_queue} waiting); retry later")
        prepared = self._prepare(image_or_pages, options, stream=stream)
        req = prepared.request
        if logits_hook is not None:
            for part, s in enumerate(prepared.seqs):
                s.logits_hook = lambda row, part=part: logits_hook(part, row)
        with self._submit_lock:
            # bounded queue: requests being encoded + sequences waiting for a slot
            if self._in_encode + self.scheduler.n_waiting + len(prepared.seqs) > self.max_queue:
                raise Overloaded(f"queue full ({self.max_queue} waiting); retry later")
            self._in_encode += len(prepared.seqs)
        for s in prepared.seqs:
            req._on_cancel(lambda s=s: self.scheduler.cancel(s))
        if listener is not None:
            req.add_listener(listener)
        if handoff is not None:
            handoff.bind(req)  # cancels req at once if the caller already gave up
        if req.cancelled:
            with self._submit_lock:
                self._in_encode -= len(prepared.seqs)
            return req
        self._encode_q.put(prepared)
        return req

    async def aocr(self, image_or_pages, **options) -> OcrResult:
        """``ocr`` for asyncio: image decoding runs in a worker thread, the loop never blocks.

        Cancelling the caller cancels the request, also while ``submit`` is still running in its
        worker thread (the request is then cancelled the moment it is created).
        """
        loop = asyncio.get_running_loop()
        finished: asyncio.Future = loop.create_future()

        def on_item(item) -> None:
            if item is None:
                _call_soon(loop, lambda: finished.done() or finished.set_result(None))

        handoff = _Handoff()
        try:
            req = await asyncio.to_thread(
                self._submit, image_or_pages, options, stream=False, listener=on_item, handoff=handoff
            )
            await finished
        except BaseException:
            handoff.cancel()
            raise
        return req.result(0)

    async def aocr_stream(self, image_or_pages, **options) -> AsyncIterator[str]:
        """Text deltas for asyncio; cancelling/closing the iterator cancels the request.

        The listener is attached before the request is scheduled: no delta is lost however long
        the caller takes to resume after ``submit``.
        """
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        handoff = _Handoff()
        try:
            req = await asyncio.to_thread(
                self._submit, image_or_pages, options, stream=False,
                listener=lambda item: _call_soon(loop, q.put_nowait, item), handoff=handoff,
            )
            while True:
                item = await q.get()
                if item is None:
                    break
                yield item
            req.result(0)  # raise the request's error, if any
        finally:
            handoff.cancel()  # no-op once the request has finished

    def stats(self) -> dict:
        return {
            "slots": self.max_slots,
            "running": self.scheduler.n_running,
            "waiting": self.scheduler.n_waiting + self._in_encode,
            "cache_entries": len(self.cache),
            "cache_bytes": self.cache.bytes,
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._encode_q.put(None)
        self._encoder.join(30)
        self.scheduler.close()
        self._close_models()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _close_models(self) -> None:
        if getattr(self, "text", None) is not None:
            self.text.close()
            self.text = None
        if getattr(self, "vision", None) is not None:
            self.vision.close()
            self.vision = None

    # --- submit-side work -------------------------------------------------------------------
    def _options(self, options: dict) -> tuple[tuple, SamplingParams, int | None, int | None, int]:
        """(mode fields, sampling, max_tokens or None, no_repeat_ngram_size or None, loop guard span)."""
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            raise InvalidRequest(f"unknown option(s): {', '.join(sorted(unknown))}")
        max_tokens = options.get("max_tokens")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
            raise InvalidRequest(f"max_tokens must be an integer >= 1; got {max_tokens!r}")
        ngram = options.get("no_repeat_ngram_size")
        if ngram is not None and (isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 0):
            raise InvalidRequest(f"no_repeat_ngram_size must be an integer >= 0 (0 = off); got {ngram!r}")
        loop_span = options.get("loop_guard")
        if loop_span is None:
            loop_span = LOOP_GUARD.min_span
        if isinstance(loop_span, bool) or not isinstance(loop_span, int) or loop_span < 0:
            raise InvalidRequest(f"loop_guard must be an integer >= 0 (tokens; 0 = off); got {loop_span!r}")
        crop = options.get("crop", False)
        if not isinstance(crop, bool):
            raise InvalidRequest(f"crop must be true or false; got {crop!r}")
        try:
            params = SamplingParams(
                temperature=options.get("temperature", 0.0) if options.get("temperature") is not None else 0.0,
                top_p=options.get("top_p", 1.0) if options.get("top_p") is not None else 1.0,
                top_k=options.get("top_k", 0) if options.get("top_k") is not None else 0,
                repetition_penalty=options.get("repetition_penalty", 1.0)
                if options.get("repetition_penalty") is not None else 1.0,
                seed=options.get("seed"),
            )
        except ValueError as e:
            raise InvalidRequest(str(e)) from e
        mode = (options.get("type") or "plain", _parse_boxes(options.get("box")), options.get("color"), crop)
        return mode, params, max_tokens, ngram, loop_span

    def _tokenize_prompt(self, query: str, n_image_tokens: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        ids = self.text.tokenize(build_prompt(query, n_image_tokens))
        try:
            a, b = image_token_span(ids, IMG_PAD_ID)
        except InvalidPrompt as e:
            raise ModelError(f"the text model's vocabulary does not map <imgpad> to {IMG_PAD_ID}: {e}") from e
        if b - a != n_image_tokens:
            raise ModelError(f"<imgpad> tokenized to {b - a} ids, expected {n_image_tokens}")
        return tuple(ids[:a]), tuple(ids[b:])

    def prompt_token_ids(self, query: str, n_views: int = 1) -> list[int]:
        """The full prompt's token ids (``<imgpad>`` in place of image rows), as the model sees them."""
        n = n_views * self.vision.tokens_per_view
        pre, suf = self._prompt_ids(query, n)
        return [*pre, *([IMG_PAD_ID] * n), *suf]

    def _prepare(self, image_or_pages, options: dict, *, stream: bool) -> _Prepared:
        t0 = time.perf_counter()
        (type_, boxes, color, crop), params, max_tokens, ngram, loop_span = self._options(options)
        pages = list(image_or_pages) if isinstance(image_or_pages, (list, tuple)) else [image_or_pages]
        if not pages:
            raise InvalidRequest("no image given")
        pp = self._preprocess
        images = []
        for src in pages:
            try:  # an image is one page; a PDF (bytes or path) gives all of its pages
                images.extend(load_pages(src, max_pixels=self.max_pixels))
            except pp.ImageError as e:
                raise InvalidRequest(str(e)) from e
        if len(images) > 1 and len(pages) == 1 and not isinstance(image_or_pages, (list, tuple)):
            raise InvalidRequest(
                f"the PDF has {len(images)} pages: OCR them one by one (gotocr_fast.inputs.render_pdf_pages) "
                "or pass [pdf] to read them as one multi-page prompt"
            )
        multi_page = len(images) > 1
        try:
            mode = OcrMode(type=type_, boxes=boxes, color=color, crop=crop, multi_page=multi_page)
        except InvalidPrompt as e:
            raise InvalidRequest(str(e)) from e
        params = replace(params, no_repeat_ngram_size=default_no_repeat_ngram_size(mode) if ngram is None else ngram)
        guard = None if loop_span == 0 else replace(LOOP_GUARD, min_span=loop_span)
        try:
            queries = build_queries(mode, images[0].size)
        except InvalidPrompt as e:
            raise InvalidRequest(str(e)) from e
        S = self.vision.image_size
        keys = [image_key(im, image_size=S, crop=crop, max_tiles=self.max_tiles) for im in images]
        cached = [self.cache.get(k) for k in keys]
        views_per_page: list[int] = []
        page_views: list[list | None] = []
        for im, emb in zip(images, cached):
            if emb is not None:
                views_per_page.append(emb.shape[0] // self.vision.tokens_per_view)
                page_views.append(None)
            else:
                views = pp.views_for(im, S, crop=crop, max_tiles=self.max_tiles)
                views_per_page.append(len(views))
                page_views.append(views)
        n_image_tokens = sum(views_per_page) * self.vision.tokens_per_view
        rid = f"ocr-{next(_ids)}"
        req = OcrRequest(rid, len(queries), stream=stream)
        seqs = []
        for part, q in enumerate(queries):
            prefix, suffix = self._prompt_ids(q, n_image_tokens)
            n_prompt = len(prefix) + n_image_tokens + len(suffix)
            budget = max(1, default_max_tokens(self.n_ctx, n_prompt) if max_tokens is None else max_tokens)
            if n_prompt + budget > self.n_ctx:
                raise ContextOverflow(
                    f"prompt ({n_prompt} tokens: {sum(views_per_page)} image view(s)) + max_tokens ({budget}) "
                    f"exceeds the context of {self.n_ctx} tokens per request",
                    prompt_tokens=n_prompt, max_tokens=budget, n_ctx=self.n_ctx,
                )
            sampler = Sampler(params, itertools.chain(prefix, [IMG_PAD_ID] * n_image_tokens, suffix), self.text.n_vocab)
            seq = Sequence(
                prefix=list(prefix), n_image_tokens=n_image_tokens, suffix=list(suffix), sampler=sampler,
                max_tokens=budget, piece=self.text.piece,
                on_delta=lambda text, part=part: req._part_delta(part, text),
                on_done=lambda s, part=part: self._seq_done(req, part, s),
                loop_guard=None if guard is None else LoopGuard(guard, capacity=min(budget, 4096)),
            )
            # the KV up to the end of the images depends on nothing else: the scheduler computes
            # it once for every sequence with this key (boxes of this request, other requests)
            seq.share_key = hashlib.blake2b(
                len(prefix).to_bytes(4, "little") + np.asarray(prefix, dtype=np.int32).tobytes() + b"".join(keys),
                digest_size=16,
            ).digest()
            seqs.append(seq)
        # only now (the request is valid and fits) the pixel tensors: the costly part of preprocessing
        pixel_parts = [None if v is None else pp.pixel_values(v, S, self.vision.image_mean, self.vision.image_std)
                       for v in page_views]
        req.sequences = seqs
        req.cache_hit = all(c is not None for c in cached)
        req.preprocess_ms = (time.perf_counter() - t0) * 1000.0
        return _Prepared(req, seqs, pixel_parts, keys, cached)

    # --- encoder thread ----------------------------------------------------------------------
    def _encode_loop(self) -> None:
        while True:
            job = self._encode_q.get()
            if job is None:
                break
            req = job.request
            try:
                if req.cancelled:
                    continue
                t0 = time.perf_counter()
                parts = []
                encoded = 0
                for key, pix, emb in zip(job.key, job.pixels, job.embeddings):
                    if emb is None:
                        # an identical image queued just before this one may have been encoded since
                        emb = self.cache.get(key)
                    if emb is None:
                        with self.cpu_turns.turn("encode"):
                            out = self.vision.encode(pix)
                        encoded += 1
                        emb = np.ascontiguousarray(out.reshape(-1, out.shape[-1]), dtype=np.float32)
                        self.cache.put(key, emb)
                    parts.append(emb)
                emb_all = parts[0] if len(parts) == 1 else np.concatenate(parts)
                req.encode_ms = (time.perf_counter() - t0) * 1000.0
                req.cache_hit = encoded == 0
                for s in job.seqs:
                    s.embeddings = emb_all
                if not req.cancelled:
                    self.scheduler.submit(job.seqs, force=True)
            except BaseException as e:  # encoder failure fails this request only
                err = e if isinstance(e, OcrError) else ModelError(f"vision encoder failed: {e}")
                req._fail(err)
            finally:
                with self._submit_lock:
                    self._in_encode -= len(job.seqs)
        # closing: fail what is still queued
        while True:
            try:
                job = self._encode_q.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.request._fail(EngineClosed("the engine was closed"))

    # --- completion ------------------------------------------------------------------------------
    def _seq_done(self, req: OcrRequest, part: int, seq: Sequence) -> None:
        if seq.error is not None:
            req._fail(seq.error)
            for s in req.sequences:  # the other boxes of a failed request are pointless
                if s is not seq:
                    self.scheduler.cancel(s)
            return
        req._part_finished(part)
        if not all(s.finish_reason is not None for s in req.sequences):
            return
        seqs = req.sequences
        text = "\n".join(s.text for s in seqs)
        # one reason per request: a stopped loop first (its text is cut), then the budget
        reasons = {s.finish_reason for s in seqs}
        finish = "repetition" if "repetition" in reasons else "length" if "length" in reasons else "stop"
        timings = Timings(
            preprocess_ms=req.preprocess_ms,
            encode_ms=req.encode_ms,
            prefill_ms=sum((s.t_first_token - s.t_prefill_start) * 1000.0 for s in seqs),
            decode_ms=sum((s.t_done - s.t_first_token) * 1000.0 for s in seqs),
        )
        req._finish(
            OcrResult(
                text=text,
                finish_reason=finish,
                prompt_tokens=sum(s.prompt_tokens for s in seqs),
                completion_tokens=sum(len(s.generated) for s in seqs),
                timings=timings,
                cache_hit=req.cache_hit,
            )
        )
