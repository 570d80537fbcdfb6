"""``VisionEncoder``: the GOT vision encoder (ggml, native/got_vision.cpp) for Python callers.

Pixels in, image embeddings out::

    with VisionEncoder("got-vision-f16.gguf") as enc:
        emb = enc.encode(pixel_values)   # float32 [N, 3, S, S] -> float32 [N, T, E]

Every size comes from the GGUF. ``encode`` releases the GIL while ggml computes; one encoder can
be shared by threads (calls are serialised inside), and ``close`` waits for a running ``encode``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .cpus import available_cpus

__all__ = ["PRECISIONS", "VisionEncoder", "VisionError"]

# Arithmetic of the encoder's weight matmuls on the CPU kernels. "f32" (default) is the path held
# to the f32 oracle (1e-3); "bf16" rounds weights and activations to bf16 and sums in f32 on CPUs
# that multiply bf16 natively (AMX, else AVX512_BF16) and falls back to f32 elsewhere.
PRECISIONS = ("f32", "bf16")


class VisionError(RuntimeError):
    """The vision GGUF cannot be loaded, or an encode failed (message from the native encoder)."""


class VisionEncoder:
    """A loaded vision GGUF (``general.architecture = got-vision``).

    ``n_threads``: CPU threads (default: the CPUs this process may use). ``backend``: ``"cpu"``
    (default), ``"gpu"`` (error if ggml offers none) or ``"auto"``; ``device`` names a ggml device.
    ``max_batch_views`` bounds how many views one graph evaluation holds (compute memory grows
    with it; see ``compute_buffer_size``). ``cpu_kernels`` (default on) runs the weight matmuls,
    their bias and the MLP's GELU on the project's own CPU kernels when the backend is the CPU
    (``False``: ggml's own ops everywhere; ``cpu_kernels`` then reads whether they are in use).
    ``precision`` (one of ``PRECISIONS``): ``"bf16"`` runs those matmuls in bf16 where the CPU
    multiplies bf16 natively; ``precision`` then reads what runs (``"f32"`` on other CPUs), and
    ``kernel_isa`` which instruction set each kind of kernel uses.
    """

    def __init__(
        self,
        gguf_path: str | os.PathLike[str],
        n_threads: int | None = None,
        *,
        backend: str = "cpu",
        device: str | None = None,
        max_batch_views: int = 1,
        cpu_kernels: bool = True,
        precision: str = "f32",
    ) -> None:
        from gotocr_fast import _vision  # compiled module; imported here so errors name the cause

        self._lock = threading.Lock()
        self._ctx = None
        path = Path(gguf_path)
        if n_threads is None:
            n_threads = available_cpus()
        if not isinstance(n_threads, int) or isinstance(n_threads, bool) or n_threads < 1:
            raise ValueError(f"n_threads must be a positive int, got {n_threads!r}")
        if not isinstance(max_batch_views, int) or isinstance(max_batch_views, bool) or max_batch_views < 1:
            raise ValueError(f"max_batch_views must be a positive int, got {max_batch_views!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not path.is_file():
            raise VisionError(f"{path}: no such file")
        try:
            self._ctx = _vision.VisionContext(
                os.fspath(path), n_threads, backend, device, max_batch_views, bool(cpu_kernels), precision == "bf16"
            )
        except RuntimeError as e:
            raise VisionError(str(e)) from None
        c = self._ctx
        self.path = path
        self.n_threads = n_threads
        self.image_size: int = c.image_size
        self.num_channels: int = c.num_channels
        self.tokens_per_view: int = c.tokens_per_view
        self.output_width: int = c.output_width  # E: each image token's embedding width (= LM hidden size)
        self.image_mean: tuple[float, ...] = c.image_mean
        self.image_std: tuple[float, ...] = c.image_std
        self.backend_name: str = c.backend_name
        self.weights_size: int = c.weights_size
        self.compute_buffer_size: int = c.compute_buffer_size
        self.max_batch_views: int = c.max_batch_views
        self.cpu_kernels: bool = c.cpu_kernels
        self.precision: str = "bf16" if c.cpu_bf16 else "f32"
        # e.g. {"gemm": "amx", "attention": "avx512", "layernorm": "avx512"}
        self.kernel_isa: dict[str, str] = c.kernel_isa

    @property
    def embedding_length(self) -> int:
        """The output width, E (the same number as ``output_width``, the name to use).

        Not the GGUF key ``got-vision.embedding_length``, which is the ViT width.
        """
        return self.output_width

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def _context(self):
        if self._ctx is None:
            raise VisionError("the encoder is closed")
        return self._ctx

    def set_n_threads(self, n_threads: int) -> None:
        if not isinstance(n_threads, int) or isinstance(n_threads, bool) or n_threads < 1:
            raise ValueError(f"n_threads must be a positive int, got {n_threads!r}")
        with self._lock:
            self._context().set_n_threads(n_threads)
            self.n_threads = n_threads

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [N, C, S, S] (normalised views) -> float32 [N, tokens_per_view, output_width]."""
        if not isinstance(pixels, np.ndarray):
            raise TypeError(f"pixels must be a numpy.ndarray, got {type(pixels).__name__}")
        if pixels.dtype != np.float32:
            raise TypeError(f"pixels must be float32, got {pixels.dtype}")
        want = (self.num_channels, self.image_size, self.image_size)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != want:
            raise ValueError(f"pixels must have shape (N, {want[0]}, {want[1]}, {want[2]}), got {pixels.shape}")
        n = pixels.shape[0]
        if n < 1:
            raise ValueError("pixels hold no views (N = 0)")
        pixels = np.ascontiguousarray(pixels)
        out = np.empty((n, self.tokens_per_view, self.output_width), dtype=np.float32)
        with self._lock:
            ctx = self._context()
            try:
                ctx.encode_into(pixels, out)
            except RuntimeError as e:
                raise VisionError(str(e)) from None
        return out

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._ctx.close()
                self._ctx = None

    def __enter__(self) -> VisionEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        ctx = getattr(self, "_ctx", None)
        if ctx is not None:
            ctx.close()

    def __repr__(self) -> str:
        state = "closed" if self._ctx is None else self.backend_name
        return (
            f"VisionEncoder({str(getattr(self, 'path', '?'))!r}, image_size={getattr(self, 'image_size', '?')}, "
            f"tokens_per_view={getattr(self, 'tokens_per_view', '?')}, "
            f"output_width={getattr(self, 'output_width', '?')}, {state})"
        )
