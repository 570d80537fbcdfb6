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
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..prompt import InvalidPrompt, build_prompt, build_queries, image_token_span
from ..tokens import IMG_PAD_ID
from ..cpus import available_cpus
from ..inputs import load_pages
from .cache import EmbeddingCache, image_key
from .cpu_turns import CpuTurns, NoTurns
from .errors import Cancelled, ContextOverflow, EngineClosed, InvalidRequest, ModelError, OcrError, Overloaded
from .defaults import LOOP_GUARD, default_max_tokens, default_no_repeat_ngram_size
from .model import TextModel, resolve_model_paths
from .options import EngineConfig, OcrOptions
from .repetition import LoopGuard
from .request import DecodeSequence, OcrHandle, OcrResult, Timings
from .sampling import Sampler
from .scheduler import Scheduler

__all__ = ["AsyncOcrStream", "EngineBase", "OcrEngine", "OcrStream"]

_ids = itertools.count(1)


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
        self._request: OcrHandle | None = None
        self.cancelled = False

    def bind(self, request: OcrHandle) -> None:
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

    def __init__(self, request: OcrHandle):
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


class EngineBase:
    """The ways to call an engine (blocking, streaming, handles, asyncio), all over ``_submit``.

    Options are an :class:`OcrOptions`, keyword arguments (``engine.ocr(image, type="format")``) or
    both (the keywords change the given options); ``config.resolve`` fills in the deployment's
    defaults. A subclass implements ``_submit``.
    """

    config: EngineConfig

    def request_options(self, options: OcrOptions | None = None, /, **fields: Any) -> OcrOptions:
        """The options a request runs with: ``options`` changed by ``fields``, with this engine's defaults."""
        return self.config.resolve(OcrOptions.of(options, **fields))

    def ocr(self, image_or_pages, options: OcrOptions | None = None, /, **fields: Any) -> OcrResult:
        """OCR one image (or one multi-page group: a list of images) and wait for the result."""
        return self.submit(image_or_pages, options, stream=False, **fields).result()

    def ocr_stream(self, image_or_pages, options: OcrOptions | None = None, /, **fields: Any) -> OcrStream:
        """Text deltas as they are generated; ``.result`` holds the OcrResult at the end."""
        return OcrStream(self.submit(image_or_pages, options, **fields))

    def submit(self, image_or_pages, options: OcrOptions | None = None, /, *, stream: bool = True,
               _logits_hook=None, **fields: Any) -> OcrHandle:
        """Queue a request; returns its handle at once (``result(timeout)``, ``cancel()``, and with
        ``stream`` iteration over its text deltas).

        ``_logits_hook(part, row)`` (for parity tests) sees every raw logits row before sampling.
        """
        return self._submit(image_or_pages, self.request_options(options, **fields), stream=stream,
                            logits_hook=_logits_hook)

    def _submit(self, image_or_pages, options: OcrOptions, *, stream: bool, logits_hook=None,
                listener=None, handoff: "_Handoff | None" = None) -> OcrHandle:
        raise NotImplementedError

    async def aocr(self, image_or_pages, options: OcrOptions | None = None, /, **fields: Any) -> OcrResult:
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
                self._submit, image_or_pages, self.request_options(options, **fields), stream=False, listener=on_item, handoff=handoff
            )
            await finished
        except BaseException:
            handoff.cancel()
            raise
        return req.result(0)

    async def aocr_stream(self, image_or_pages, options: OcrOptions | None = None, /,
                          **fields: Any) -> AsyncIterator[str]:
        """Text deltas for asyncio; cancelling/closing the iterator cancels the request."""
        stream = await self.aopen_stream(image_or_pages, options, **fields)
        try:
            async for delta in stream:
                yield delta
        finally:
            stream.close()  # no-op once the request has finished

    async def aopen_stream(self, image_or_pages, options: OcrOptions | None = None, /,
                           **fields: Any) -> "AsyncOcrStream":
        """Submit a request and return its deltas as an async iterator (``.result`` at the end).

        Every error of ``submit`` (options, image, context, a full queue) is raised here, before
        the first delta, so a server can still answer it with a status code. The caller must
        ``close()`` the stream: that cancels the request unless it has finished. The listener is
        attached before the request is scheduled: no delta is lost however long the caller takes
        to start iterating.
        """
        resolved = self.request_options(options, **fields)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        handoff = _Handoff()
        try:
            req = await asyncio.to_thread(
                self._submit, image_or_pages, resolved, stream=False,
                listener=lambda item: _call_soon(loop, q.put_nowait, item), handoff=handoff,
            )
        except BaseException:
            handoff.cancel()
            raise
        return AsyncOcrStream(req, q, handoff)


class AsyncOcrStream:
    """Async iterator over one request's text deltas; ``result`` (OcrResult) once exhausted.

    The request's error (``Cancelled``, ``ModelError``, ...) is raised at the end of the
    iteration. ``close()`` (synchronous, idempotent) cancels the request unless it finished.
    """

    def __init__(self, request: OcrHandle, deltas: asyncio.Queue, handoff: _Handoff) -> None:
        self.request = request
        self.result: OcrResult | None = None
        self._deltas = deltas
        self._handoff = handoff

    def __aiter__(self) -> "AsyncOcrStream":
        return self

    async def __anext__(self) -> str:
        item = await self._deltas.get()
        if item is None:
            self.result = self.request.result(0)
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        self._handoff.cancel()


class OcrEngine(EngineBase):
    """GOT-OCR2 on llama.cpp + the ggml vision encoder, with continuous batching.

    ``OcrEngine(config)`` with an :class:`EngineConfig`, or ``OcrEngine(model, vision=None,
    **fields)`` with the config's fields as keywords (``n_ctx``, ``max_slots``, ...; their meaning
    and defaults are documented there). The engine holds at most ``max_slots + max_queue``
    sequences (encoding, waiting, decoding); past that ``submit`` raises :class:`Overloaded`.
    """

    def __init__(self, model_dir_or_text_gguf: EngineConfig | str | os.PathLike,
                 vision: str | os.PathLike | None = None, **fields: Any):
        if isinstance(model_dir_or_text_gguf, EngineConfig):
            config = model_dir_or_text_gguf.replace(**fields) if fields else model_dir_or_text_gguf
            if vision is not None:
                config = config.replace(vision=vision)
        else:
            try:
                config = EngineConfig(model=model_dir_or_text_gguf, vision=vision, **fields)
            except TypeError as e:  # an unknown keyword: name it as the caller wrote it
                raise TypeError(f"OcrEngine: {e}") from None
        self.config = config
        from .. import preprocess
        from ..vision import VisionEncoder

        self._preprocess = preprocess
        self.paths = resolve_model_paths(config.model, config.vision)
        self.model_name = self.paths.text.parent.name if Path(config.model).is_dir() else self.paths.text.stem
        self.max_tiles = config.max_tiles
        self.max_pixels = config.max_pixels
        self.vision = VisionEncoder(str(self.paths.vision), n_threads=config.n_threads, precision=config.vision_precision)
        self.text: TextModel | None = None
        try:
            self.text = TextModel(
                self.paths.text, n_slots=config.max_slots, n_ctx_slot=config.n_ctx, kv_tokens=config.kv_tokens,
                n_batch=config.n_batch, n_threads=config.n_threads, kv_type=config.kv_type, flash_attn=config.flash_attn,
                verbose=config.verbose,
            )
            if self.text.n_embd != self.vision.output_width:
                raise ModelError(
                    f"vision embeddings ({self.vision.output_width}) do not match the LM hidden size ({self.text.n_embd})"
                )
        except BaseException:
            self._close_models()
            raise
        self.n_ctx = self.text.n_ctx_slot
        self.max_slots = self.text.n_slots
        self.max_queue = config.max_queue
        self.cache = EmbeddingCache(config.embed_cache_bytes)
        self._closed = False
        self._submit_lock = threading.Lock()
        self._encode_q: queue.Queue[_Prepared | None] = queue.Queue()
        self._in_encode = 0
        # encoder and decode loop take turns on the CPU when their threads would oversubscribe it
        share_cpu = config.share_cpu
        if share_cpu is None:
            share_cpu = self.vision.n_threads + self.text.n_threads > available_cpus()
        self.cpu_turns = CpuTurns() if share_cpu else NoTurns()
        self.scheduler = Scheduler(self.text, max_queue=config.max_queue, cpu_turns=self.cpu_turns)
        self._encoder = threading.Thread(target=self._encode_loop, name="gotocr-encoder", daemon=True)
        self._encoder.start()
        self._prompt_ids = lru_cache(maxsize=256)(self._tokenize_prompt)

    def _submit(self, image_or_pages, options: OcrOptions, *, stream: bool, logits_hook=None,
                listener=None, handoff: "_Handoff | None" = None) -> OcrHandle:
        """``submit`` with two hooks for callers on other threads (the asyncio API).

        ``listener`` is attached to the handle before the request can produce anything, so it
        sees every delta. ``handoff`` receives the handle as soon as it exists, before the request
        is scheduled: a caller that gave up meanwhile (``handoff.cancel()``) cancels it there.
        """
        if handoff is not None and handoff.cancelled:
            raise Cancelled("the request was cancelled before it was submitted")
        if self._closed:
            raise EngineClosed("the engine is closed")
        capacity = self.max_slots + self.max_queue
        if self._held() >= capacity:  # cheap early refusal
            raise Overloaded(f"queue full ({self.max_queue} waiting); retry later")
        prepared = self._prepare(image_or_pages, options, stream=stream)
        req = prepared.request
        if logits_hook is not None:
            for part, s in enumerate(prepared.seqs):
                s.logits_hook = lambda row, part=part: logits_hook(part, row)
        with self._submit_lock:
            # bounded: at most max_slots + max_queue sequences in the engine
            if self._held() + len(prepared.seqs) > capacity:
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

    def _held(self) -> int:
        """Sequences in the engine: being encoded, waiting for a slot, decoding."""
        return self._in_encode + self.scheduler.n_waiting + self.scheduler.n_running

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
        self.cpu_turns.close()
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

    def _prepare(self, image_or_pages, options: OcrOptions, *, stream: bool) -> _Prepared:
        t0 = time.perf_counter()
        crop, max_tokens, loop_span = options.crop, options.max_tokens, options.loop_guard_span()
        pages = list(image_or_pages) if isinstance(image_or_pages, (list, tuple)) else [image_or_pages]
        if not pages:
            raise InvalidRequest("no image given")
        pp = self._preprocess
        images = []
        for src in pages:
            try:  # an image is one page; a PDF (bytes or path) gives all of its pages
                images.extend(load_pages(src, max_pixels=self.max_pixels))
            except pp.ImageError as e:
                code = "image_too_large" if isinstance(e, pp.ImageTooLarge) else "invalid_image"
                raise InvalidRequest(str(e), code=code) from e
        if len(images) > 1 and len(pages) == 1 and not isinstance(image_or_pages, (list, tuple)):
            raise InvalidRequest(
                f"the PDF has {len(images)} pages: OCR them one by one (gotocr_fast.inputs.render_pdf_pages) "
                "or pass [pdf] to read them as one multi-page prompt"
            )
        mode = options.mode(multi_page=len(images) > 1)
        ngram = options.no_repeat_ngram_size
        params = options.sampling(default_no_repeat_ngram_size(mode) if ngram is None else ngram)
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
        req = OcrHandle(rid, len(queries), stream=stream)
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
            seq = DecodeSequence(
                prefix=list(prefix), n_image_tokens=n_image_tokens, suffix=list(suffix), sampler=sampler,
                max_tokens=budget, piece=self.text.piece,
                on_delta=lambda text, part=part: req._part_delta(part, text),
                on_done=lambda s, part=part: self._seq_done(req, part, s),
                loop_guard=None if guard is None else LoopGuard(guard, capacity=min(budget, 4096)),
                stop_texts=options.stop,
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
                        out = self.cpu_turns.run("encode", self.vision.encode, pix)
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
    def _seq_done(self, req: OcrHandle, part: int, seq: DecodeSequence) -> None:
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
        # what stopped it: the last sequence that finished for that reason (its stop token or text)
        stop_reason = next((s.stop_reason for s in reversed(seqs) if s.finish_reason == finish), None)
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
                stop_reason=stop_reason,
                prompt_tokens=sum(s.prompt_tokens for s in seqs),
                completion_tokens=sum(len(s.generated) for s in seqs),
                timings=timings,
                cache_hit=req.cache_hit,
            )
        )
