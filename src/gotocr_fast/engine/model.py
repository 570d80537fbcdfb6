"""Loading GOT's two halves: the Qwen2 text GGUF into llama.cpp, the vision GGUF into VisionEncoder.

Control calls (load, tokenize, pieces, KV removal) go through llama-cpp-python's low-level ctypes
binding; the per-step hot path (token / embedding batches, logits rows) through our compiled
``gotocr_fast._llama``. One :class:`TextModel` = one model + one context; only the scheduler
thread decodes on it. Tokenization and token pieces only read the vocabulary and may run on any
thread.
"""

from __future__ import annotations

import ctypes
import os
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cpus import available_cpus
from ..llama_load import model_params
from ..llama_log import llama_cpp_module
from . import resident
from .errors import ModelError

__all__ = [
    "ModelPaths", "resolve_model_paths", "TextModel", "KvCacheFull", "PAGE_KV_TOKENS", "default_kv_tokens",
    "KV_TYPES", "kv_bytes_per_token", "load_llama_cpp",
]


@dataclass(frozen=True)
class ModelPaths:
    text: Path
    vision: Path


def resolve_model_paths(model: str | os.PathLike, vision: str | os.PathLike | None = None) -> ModelPaths:
    """A model folder (``got-text-*.gguf`` + ``got-vision-*.gguf``) or the two GGUF paths."""
    p = Path(model)
    if p.is_dir():
        texts = sorted(p.glob("got-text-*.gguf"))
        visions = sorted(p.glob("got-vision-*.gguf"))
        if vision is not None:
            visions = [Path(vision)]
        if len(texts) != 1 or len(visions) != 1:
            raise ModelError(
                f"{p}: expected exactly one got-text-*.gguf and one got-vision-*.gguf "
                f"(found {len(texts)} and {len(visions)}); pass the two paths explicitly"
            )
        return ModelPaths(texts[0], visions[0])
    if not p.is_file():
        raise ModelError(f"model not found: {p}")
    if vision is None:
        candidates = sorted(p.parent.glob("got-vision-*.gguf"))
        if len(candidates) != 1:
            raise ModelError(f"{p}: pass vision (no single got-vision-*.gguf next to it)")
        vision = candidates[0]
    v = Path(vision)
    if not v.is_file():
        raise ModelError(f"vision model not found: {v}")
    return ModelPaths(p, v)


_GGML_F32, _GGML_F16, _GGML_Q8_0 = 0, 1, 8  # enum ggml_type
_Q8_0_BLOCK = 32  # elements of one q8_0 block: 32 int8 + one f16 scale = 34 bytes
# (K type, V type) of each KV cache type. "q8_0" quantizes K only: llama.cpp takes a quantized V
# cache only with flash attention, which is slower per decoded token on CPUs (see
# _default_flash_attn), so V stays f16.
_KV_TYPES = {"f32": (_GGML_F32, _GGML_F32), "f16": (_GGML_F16, _GGML_F16), "q8_0": (_GGML_Q8_0, _GGML_F16)}
KV_TYPES = tuple(_KV_TYPES)


def _row_bytes(ggml_type: int, n: int) -> int:
    if ggml_type == _GGML_Q8_0:
        return n // _Q8_0_BLOCK * 34
    return n * (4 if ggml_type == _GGML_F32 else 2)


def kv_bytes_per_token(*, n_layer: int, n_embd_kv: int, kv_type: str) -> int:
    """KV cache bytes one token takes: a K and a V row of ``n_embd_kv`` elements in every layer."""
    type_k, type_v = _KV_TYPES[kv_type]
    return n_layer * (_row_bytes(type_k, n_embd_kv) + _row_bytes(type_v, n_embd_kv))


def default_kv_type(text_gguf: str | os.PathLike) -> str:
    """The KV cache type for a text model when none is asked for: ``"f32"`` when its layer
    matmuls are f32, else ``"f16"``.

    Whoever converts with ``--outtype f32`` asks for the reference's arithmetic, and an f16 cache
    would be the one rounding left in it: on the demo model it flipped greedy text at near-tie
    tokens (margins up to 0.007) that the f32 cache reads as transformers does. Every other type
    rounds its weights more than an f16 cache rounds K and V, which keeps it at half the memory.
    A file whose tensor table cannot be read gets f16 (llama.cpp then says what is wrong with it).
    """
    from ..gguf_tensors import layer_matrices, read_tensor_table

    try:
        matmuls = layer_matrices(read_tensor_table(text_gguf))
    except (OSError, ValueError):
        return "f16"
    return "f32" if matmuls and all(t.ggml_type == _GGML_F32 for t in matmuls) else "f16"


_backend_lock = threading.Lock()
_backend_ready = False


def load_llama_cpp(verbose: bool = False):
    """Import llama-cpp-python, initialise the backend once, route llama.cpp's log (errors only
    unless ``verbose``)."""
    global _backend_ready
    try:
        llama_cpp = llama_cpp_module(verbose)
    except ImportError as e:  # pragma: no cover - dependency missing
        raise ModelError("llama-cpp-python==0.3.36 is required: pip install llama-cpp-python==0.3.36") from e
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


def _load_native():
    try:
        from .. import _llama
    except ImportError as e:
        raise ModelError(
            "gotocr_fast._llama (the compiled llama.cpp batch path) is missing: build the package "
            "(pip install -e . / see DEVELOPING.md)"
        ) from e
    return _llama


def _default_flash_attn(ll, kv_type: str) -> bool | None:
    """False, or None for llama.cpp's "auto" (on wherever the backend supports it).

    Off with an f32 cache: ggml's CPU flash attention rounds Q/K/V through f16 (≈2e-3 logit
    error on an f32 model, too much for parity). Off on a CPU-only build as well: on the full-size
    model, one view's prompt, 2 threads, it made decode 10-15 % slower per token (prefill ≈10 %
    faster, but a page decodes 256 tokens for one prefill), measured against stock llama.cpp,
    which also runs without it. With a GPU build, llama.cpp's auto.
    """
    if kv_type != "f16":
        return False
    return None if ll.llama_supports_gpu_offload() else False


class KvCacheFull(ModelError):
    """llama.cpp found no free KV cells for a batch (the scheduler makes room and retries)."""


def _check_decode(rc: int, what: str) -> None:
    if rc == 1:  # llama_decode: no free KV cells for the batch; nothing was written
        raise KvCacheFull(f"llama_decode ({what}): the KV cache has no room for the batch")
    if rc != 0:
        raise ModelError(f"llama_decode ({what}) failed with status {rc}")


PAGE_KV_TOKENS = 2048
"""KV cells the default pool keeps per slot: a typical page, one view's 286-token prompt and up
to ~1,750 generated tokens (docs/MEMORY.md)."""


def default_kv_tokens(n_ctx_slot: int, n_slots: int) -> int:
    """The default pool: one request's whole context, and at least a typical page per slot."""
    return max(n_ctx_slot, n_slots * PAGE_KV_TOKENS)


class TextModel:
    """The Qwen2 LM in llama.cpp: ``n_slots`` sequences sharing one KV pool of ``kv_tokens`` cells.

    ``n_ctx_slot`` is the context of one request (prompt + generated tokens); ``kv_tokens`` the
    pool every running sequence takes its cells from (default: :func:`default_kv_tokens`, 8192
    for 4 slots of 8192): one request alone can use its whole context, several typical pages
    share the pool, and the scheduler makes room when it runs out (``scheduler.py``). It may not
    be smaller than ``n_ctx_slot``, so a request that fits its context always fits the pool once
    alone.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_slots: int = 4,
        n_ctx_slot: int = 8192,
        kv_tokens: int | None = None,
        n_batch: int = 2048,
        n_threads: int | None = None,
        kv_type: str | None = None,
        flash_attn: bool | None = None,
        verbose: bool = False,
    ):
        if kv_type is None:
            kv_type = default_kv_type(path)
        if kv_type not in _KV_TYPES:
            raise ValueError(f"kv_type must be one of {', '.join(_KV_TYPES)}; got {kv_type!r}")
        if kv_tokens is None:
            kv_tokens = default_kv_tokens(n_ctx_slot, n_slots)
        if kv_tokens < n_ctx_slot:
            raise ValueError(f"kv_tokens ({kv_tokens}) must be >= the context of one request ({n_ctx_slot})")
        self._ll = ll = load_llama_cpp(verbose)
        self._native = _load_native()
        self.path = Path(path)
        n_threads = n_threads or available_cpus()
        self.n_threads = n_threads
        try:
            mparams = model_params(ll, self.path)
        except ValueError as e:  # a bad GOTOCR_EXTRA_BUFTS
            raise ModelError(str(e)) from None
        self._model = ll.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise ModelError(f"llama.cpp could not load the text model {self.path}")
        self._ctx = None
        self._idle_pool = None
        try:
            self.vocab = ll.llama_model_get_vocab(self._model)
            self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
            self.n_embd = int(ll.llama_model_n_embd(self._model))
            n_head = int(ll.llama_model_n_head(self._model))
            head_dim = self.n_embd // n_head
            if kv_type == "q8_0" and head_dim % _Q8_0_BLOCK:
                # each head's K slice must be whole q8_0 blocks, or attention reads across heads
                raise ModelError(f"kv_type 'q8_0' needs a head dimension that is a multiple of "
                                 f"{_Q8_0_BLOCK}; this model's is {head_dim}: use f16")
            cparams = ll.llama_context_default_params()
            cparams.n_ctx = kv_tokens
            cparams.n_seq_max = n_slots
            cparams.n_batch = n_batch
            cparams.n_ubatch = min(512, n_batch)
            cparams.n_threads = n_threads
            cparams.n_threads_batch = n_threads
            # one KV stream shared by the slots: memory for the tokens actually held, not
            # n_slots × n_ctx; a batch runs as one pass whatever its seq ids (docs/MEMORY.md)
            cparams.kv_unified = True
            cparams.no_perf = True
            # f16 KV halves cache memory; f32 keeps logits within 1e-3 of an f32 reference;
            # a q8_0 K row takes 17/32 of an f16 one (docs/MEMORY.md: what it costs in accuracy)
            cparams.type_k, cparams.type_v = _KV_TYPES[kv_type]
            if flash_attn is None:
                flash_attn = _default_flash_attn(ll, kv_type)
            cparams.flash_attn_type = -1 if flash_attn is None else int(bool(flash_attn))
            mappings_before = resident.anonymous_mappings()
            self._ctx = ll.llama_init_from_model(self._model, cparams)
            if not self._ctx:
                raise ModelError(f"llama.cpp could not create a context ({kv_tokens} KV cells, {n_slots} slots)")
            self.n_slots = int(ll.llama_n_seq_max(self._ctx))
            self.n_ctx_slot = n_ctx_slot
            self.kv_tokens = int(ll.llama_n_ctx(self._ctx))  # llama.cpp may round the pool up
            self.kv_type = kv_type
            self.kv_bytes = self.kv_tokens * kv_bytes_per_token(
                n_layer=int(ll.llama_model_n_layer(self._model)),
                n_embd_kv=head_dim * int(ll.llama_model_n_head_kv(self._model)),
                kv_type=kv_type,
            )
            self.n_batch = int(ll.llama_n_batch(self._ctx))
            self._mem = ll.llama_get_memory(self._ctx)
            # None where the pool cannot be identified: it then simply stays resident
            self._idle_pool = resident.find_pool(mappings_before, self.kv_bytes)
            if self._idle_pool is not None:
                self._idle_pool.release()  # llama.cpp has just zeroed it: nothing is held yet
            self.ctx_ptr = ctypes.cast(self._ctx, ctypes.c_void_p).value
        except BaseException:
            self.close()
            raise
        self._piece_cache: dict[int, bytes] = {}

    # --- vocabulary (any thread) -------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's tokenizer with special tokens parsed, after GOT's NFC normalisation."""
        data = unicodedata.normalize("NFC", text).encode("utf-8")
        n_max = len(data) + 16
        buf = (self._ll.llama_token * n_max)()
        n = self._ll.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, True)
        if n < 0:
            n_max = -n
            buf = (self._ll.llama_token * n_max)()
            n = self._ll.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, True)
            if n < 0:
                raise ModelError("llama_tokenize failed")
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (special/control tokens render as nothing)."""
        p = self._piece_cache.get(token)
        if p is None:
            buf = ctypes.create_string_buffer(64)
            n = self._ll.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            p = buf.raw[: max(n, 0)]
            self._piece_cache[token] = p
        return p

    # --- decoding (scheduler thread only) ----------------------------------------------------
    def decode_tokens(self, tokens: np.ndarray, pos: np.ndarray, seq: np.ndarray, logits: np.ndarray) -> None:
        _check_decode(self._native.decode_tokens(self.ctx_ptr, tokens, pos, seq, logits), "tokens")

    def decode_embeddings(self, embd: np.ndarray, pos: np.ndarray, seq: np.ndarray, logits: np.ndarray) -> None:
        _check_decode(self._native.decode_embeddings(self.ctx_ptr, embd, pos, seq, logits), "embeddings")

    def logits(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), n_vocab]: the output rows (batch indices) of the last decode."""
        return self._native.get_logits(self.ctx_ptr, rows, self.n_vocab)

    def free_sequence(self, seq_id: int) -> None:
        """Drop every KV cell of ``seq_id`` (the slot is reusable right after)."""
        self._ll.llama_memory_seq_rm(self._mem, seq_id, -1, -1)

    def trim_sequence(self, seq_id: int, n_keep: int) -> None:
        """Drop ``seq_id``'s cells from position ``n_keep`` on."""
        self._ll.llama_memory_seq_rm(self._mem, seq_id, n_keep, -1)

    def copy_sequence(self, src: int, dst: int, n_keep: int) -> None:
        """Make ``dst`` (an empty slot) hold ``src``'s first ``n_keep`` positions.

        In the shared KV stream this copies nothing: the cells of positions [0, n_keep) are
        tagged with ``dst`` as well, and stay until the last sequence holding them lets go.
        """
        self._ll.llama_memory_seq_cp(self._mem, src, dst, 0, n_keep)

    def clear(self) -> None:
        self._ll.llama_memory_clear(self._mem, True)

    @property
    def releases_idle_pool(self) -> bool:
        return self._idle_pool is not None

    def release_idle_memory(self) -> bool:
        """Give the KV pool's pages back to the OS while no sequence holds a cell (they read back
        as the zeros llama.cpp filled the pool with), and the C heap's free pages. Returns whether
        the pool was released; a pool in use is left alone."""
        released = False
        if self._idle_pool is not None and self._ctx and all(
                self._ll.llama_memory_seq_pos_max(self._mem, s) < 0 for s in range(self.n_slots)):
            released = self._idle_pool.release()
        resident.trim_heap()
        return released

    def close(self) -> None:
        ll = self._ll
        self._idle_pool = None
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            ll.llama_model_free(self._model)
            self._model = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
