"""The engine's typed boundary: load-time configuration and per-request options.

Each default and each validation rule of the engine's inputs is written here once; the server, the
CLI and Python callers build these objects and hand them to :class:`gotocr_fast.OcrEngine`
(keyword arguments such as ``engine.ocr(image, type="format")`` are turned into them the same way).

* :class:`EngineConfig` (load time): model paths, threads, context, slots, queue, cache and the
  limits a deployment sets (pixel cap, largest ``max_tokens``, the default token budget and loop
  guard for requests that give none).
* :class:`OcrOptions` (one request): mode (type, boxes, colour, crop), sampling, the token budget,
  the n-gram rule, the loop guard and extra stop texts. Invalid values raise
  :class:`~gotocr_fast.engine.errors.InvalidRequest` with a stable ``code`` when the object is built.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..prompt import COLORS, TYPES, InvalidPrompt, OcrMode
from ..preprocess import DEFAULT_MAX_PIXELS
from ..vision import PRECISIONS as VISION_PRECISIONS
from .model import KV_TYPES
from .defaults import LOOP_GUARD, REFERENCE_MAX_NEW_TOKENS, REFERENCE_NO_REPEAT_NGRAM_SIZE
from .repetition import LoopGuardParams
from .errors import InvalidRequest

__all__ = [
    "EngineConfig",
    "OcrOptions",
    "DEFAULT_N_CTX",
    "DEFAULT_SLOTS",
    "DEFAULT_QUEUE",
    "DEFAULT_MAX_PIXELS",
    "TYPES",
    "COLORS",
]

DEFAULT_N_CTX = 8192
"""Context tokens of one request (prompt + generated): GOT's 4096-token budget after any page."""
DEFAULT_SLOTS = 4
"""Requests decoded at the same time; they share one KV pool (``kv_tokens``, docs/MEMORY.md)."""
DEFAULT_QUEUE = 64
"""Sequences that may wait (being encoded, or for a slot) before ``submit`` raises ``Overloaded``."""

Box = tuple[float, float, float, float]


def _int(name: str, value: Any, lo: int, *, exc: type[Exception] = ValueError, code: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        message = f"{name} must be an integer >= {lo}; got {value!r}"
        raise exc(message) if code is None else exc(message, code=code)


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Everything :class:`OcrEngine` needs at load time.

    ``model`` is a model folder (``got-text-*.gguf`` + ``got-vision-*.gguf``) or the text GGUF, in
    which case ``vision`` names the vision GGUF. ``n_ctx`` is the context of ONE request;
    ``kv_tokens`` the KV pool the ``max_slots`` running requests share (None: ``n_ctx``, and at
    least 2048 cells per slot; the rule and its checks are ``engine/model.py``'s; docs/MEMORY.md).
    ``max_queue``: sequences that may wait beyond the ``max_slots`` decoding (being encoded or
    queued for a slot; 0: none wait); past it ``submit`` raises ``Overloaded``. ``share_cpu``:
    encoder and decode loop take turns on the CPU (default: when their threads together exceed the
    CPUs). ``vision_precision``: ``"bf16"`` runs the vision encoder's matmuls and attention in bf16
    where the CPU multiplies bf16 natively (AMX, AVX512_BF16; ~3.5x faster a view on an AMX Xeon,
    relative RMS error ~7e-3 against f32: docs/ARCHITECTURE.md); elsewhere it runs f32.
    ``kv_type``: the KV cache's type, ``"f16"``, ``"f32"`` or ``"q8_0"`` (K in q8_0, V in f16:
    three quarters of f16's memory; a head dimension that is a multiple of 32) (default: f32 for a
    text model with f32 weights, whose arithmetic is then the reference's all through; f16
    otherwise, half the memory; ``engine/model.py``). ``flash_attn``:
    llama.cpp's flash attention (default: off on a CPU-only build, llama.cpp's "auto" with a GPU
    build).

    Request policy: ``max_tokens_limit`` is the largest ``max_tokens`` a request may ask for
    (None: only the context bounds it); ``default_max_tokens`` and ``loop_guard`` apply to
    requests that give none (None: the decoding defaults of ``defaults.py``).
    """

    model: str
    vision: str | None = None
    n_threads: int | None = None
    n_ctx: int = DEFAULT_N_CTX
    kv_tokens: int | None = None
    max_slots: int = DEFAULT_SLOTS
    max_queue: int = DEFAULT_QUEUE
    embed_cache_bytes: int = 256 * 1024 * 1024
    max_tiles: int = 6
    max_pixels: int = DEFAULT_MAX_PIXELS
    n_batch: int = 2048
    kv_type: str | None = None
    vision_precision: str = "f32"
    flash_attn: bool | None = None
    share_cpu: bool | None = None
    verbose: bool = False
    max_tokens_limit: int | None = None
    default_max_tokens: int | None = None
    loop_guard: int | None = None

    def __post_init__(self) -> None:
        # paths are kept as text (a PathLike is accepted): the config is plain, comparable data
        object.__setattr__(self, "model", os.fspath(self.model))
        if self.vision is not None:
            object.__setattr__(self, "vision", os.fspath(self.vision))
        for name, lo in (("n_ctx", 64), ("max_slots", 1), ("max_queue", 0), ("max_tiles", 1), ("n_batch", 32),
                         ("max_pixels", 1), ("embed_cache_bytes", 0)):
            _int(name, getattr(self, name), lo)
        for name, lo in (("n_threads", 1), ("kv_tokens", 1), ("max_tokens_limit", 1), ("default_max_tokens", 1),
                         ("loop_guard", 0)):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), lo)
        if self.vision_precision not in VISION_PRECISIONS:
            raise ValueError(f"vision_precision must be one of {', '.join(VISION_PRECISIONS)}; got {self.vision_precision!r}")
        if self.kv_type is not None and self.kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {', '.join(KV_TYPES)}; got {self.kv_type!r}")
        if (self.default_max_tokens is not None and self.max_tokens_limit is not None
                and self.default_max_tokens > self.max_tokens_limit):
            raise ValueError("default_max_tokens must be <= max_tokens_limit")

    def replace(self, **changes: Any) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    def resolve(self, options: "OcrOptions") -> "OcrOptions":
        """The request's options with this deployment's defaults filled in and its limit checked.

        Idempotent: the server calls it before reading any input (so a bad value is refused
        first), the engine again on submit.
        """
        changes: dict[str, Any] = {}
        if options.max_tokens is None and self.default_max_tokens is not None:
            changes["max_tokens"] = self.default_max_tokens
        if options.loop_guard is None and self.loop_guard is not None:
            changes["loop_guard"] = self.loop_guard
        resolved = dataclasses.replace(options, **changes) if changes else options
        limit = self.max_tokens_limit
        if limit is not None and resolved.max_tokens is not None and resolved.max_tokens > limit:
            raise InvalidRequest(f"max_tokens {resolved.max_tokens} exceeds this server's limit of {limit}",
                                 code="max_tokens_too_large")
        return resolved


def _boxes(box: Any) -> tuple[Box, ...]:
    """``[x1, y1, x2, y2]`` or a list of them → a tuple of 4-tuples (shape only; OcrMode checks values)."""
    if box is None:
        return ()
    if isinstance(box, (str, bytes, Mapping)) or not hasattr(box, "__len__") or not hasattr(box, "__iter__"):
        raise InvalidRequest(f"box must be [x1, y1, x2, y2] or a list of them; got {box!r}", code="invalid_box")
    items = list(box)
    if not items:
        return ()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        if len(items) != 4:
            raise InvalidRequest(f"box must be [x1, y1, x2, y2]; got {len(items)} numbers", code="invalid_box")
        return (tuple(items),)  # type: ignore[return-value]
    out = []
    for b in items:
        if isinstance(b, (str, bytes, Mapping)) or not isinstance(b, (list, tuple)):
            raise InvalidRequest("box must be [x1, y1, x2, y2] or a list of such boxes", code="invalid_box")
        if len(b) != 4:
            raise InvalidRequest(f"each box must be [x1, y1, x2, y2]; got {list(b)!r}", code="invalid_box")
        out.append(tuple(b))
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class OcrOptions:
    """One request's options (the ``/v1/ocr`` fields of docs/HTTP.md); validated when built.

    ``None`` means the default: ``max_tokens`` GOT's 4096 cut to what the context leaves after the
    prompt, ``no_repeat_ngram_size`` 20 for one view and off for crop / multi-page, ``loop_guard``
    256 tokens (``defaults.py``; an :class:`EngineConfig` may set its own first). ``box`` is one
    ``[x1, y1, x2, y2]`` in pixels or a list of them (one answer line per box); it is stored as a
    tuple of boxes. ``stop``: texts that end generation besides GOT's ``<|im_end|>`` (not part of
    the answer).
    """

    TYPES: ClassVar[tuple[str, ...]] = TYPES
    COLORS: ClassVar[tuple[str, ...]] = COLORS
    REFERENCE_MAX_TOKENS: ClassVar[int] = REFERENCE_MAX_NEW_TOKENS
    """The token budget when neither the request nor the engine's config gives one (context permitting)."""
    REFERENCE_NO_REPEAT_NGRAM_SIZE: ClassVar[int] = REFERENCE_NO_REPEAT_NGRAM_SIZE
    """The n-gram rule's default for one view (off for crop and multi-page)."""
    LOOP_GUARD: ClassVar[LoopGuardParams] = LOOP_GUARD
    """The loop guard's parameters; ``loop_guard`` overrides its ``min_span``."""

    type: str = "plain"
    box: tuple[Box, ...] = ()
    color: str | None = None
    crop: bool = False
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    no_repeat_ngram_size: int | None = None
    loop_guard: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "box", _boxes(self.box))
        if not isinstance(self.crop, bool):
            raise InvalidRequest(f"crop must be true or false; got {self.crop!r}")
        # the mode's rules (type, colour, box values, box with crop) live in OcrMode; "invalid_box"
        # is kept for a box that is not [x1, y1, x2, y2] at all (_boxes)
        try:
            OcrMode(type=self.type, boxes=self.box, color=self.color, crop=self.crop)
        except InvalidPrompt as e:
            raise InvalidRequest(str(e)) from e
        if self.max_tokens is not None:
            _int("max_tokens", self.max_tokens, 1, exc=InvalidRequest, code="invalid_request")
        if self.loop_guard is not None:
            _int("loop_guard (tokens; 0 = off)", self.loop_guard, 0, exc=InvalidRequest, code="invalid_request")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise InvalidRequest(f"stop must be a non-empty text or a list of them; got {self.stop!r}")
        set_(self, "stop", tuple(stop))
        # the sampling rules (the n-gram size's too) live in SamplingParams
        self.sampling(0 if self.no_repeat_ngram_size is None else self.no_repeat_ngram_size)

    @classmethod
    def of(cls, options: "OcrOptions | None" = None, /, **fields: Any) -> "OcrOptions":
        """``options`` with ``fields`` changed (or new options from ``fields``); ``None`` fields are
        left at their default, an unknown name is an :class:`InvalidRequest`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise InvalidRequest(f"unknown option(s): {', '.join(sorted(unknown))}")
        if options is not None and not isinstance(options, OcrOptions):
            raise TypeError(f"options must be OcrOptions; got {type(options).__name__}")
        given = {k: v for k, v in fields.items() if v is not None}
        if options is None:
            return cls(**given)
        return dataclasses.replace(options, **given) if given else options

    def replace(self, **changes: Any) -> "OcrOptions":
        return dataclasses.replace(self, **changes)

    @property
    def boxes(self) -> tuple[Box, ...]:
        return self.box

    def mode(self, *, multi_page: bool) -> OcrMode:
        """The prompt mode for a request of one page or several."""
        try:
            return OcrMode(type=self.type, boxes=self.box, color=self.color, crop=self.crop, multi_page=multi_page)
        except InvalidPrompt as e:
            raise InvalidRequest(str(e)) from e

    def sampling(self, no_repeat_ngram_size: int):
        """The sampler's parameters, with the n-gram size the mode resolved to."""
        from .sampling import SamplingParams

        try:
            return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                  repetition_penalty=self.repetition_penalty, seed=self.seed,
                                  no_repeat_ngram_size=no_repeat_ngram_size)
        except ValueError as e:
            raise InvalidRequest(str(e)) from e

    def loop_guard_span(self) -> int:
        """The loop guard's span in tokens (0 = off)."""
        return LOOP_GUARD.min_span if self.loop_guard is None else self.loop_guard

