"""transformers' page rounds in a child process of their own.

GNU libgomp serves both PyTorch's and ggml's OpenMP here (one ``libgomp.so.1`` per process), and it
keeps a team of workers for every thread that has run a parallel region. With torch's team on the
benchmark's main thread and our engine's on its compute thread, the process holds more workers
than CPUs, and libgomp then parks idle workers in the kernel at every barrier: on 2 cores our
decode steps took 50 ms instead of 30.6 ms with torch's team alive beside the engine, and torch's
ops pay the same way while our team sits idle during its rounds. A deployment holds only one of
the two, so each side gets a process: transformers runs here, the engine in the benchmark. The
child also drops the ``GOMP_SPINCOUNT`` that importing gotocr_fast sets (``gotocr_fast.openmp``),
so transformers spins as libgomp does by default.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np


def _serve(conn, checkpoint_dir: str, dtype: str, threads: int, ids: list[int], unset_spin_count: bool) -> None:
    if unset_spin_count:  # libgomp's own default for transformers, as it runs anywhere else
        from gotocr_fast.openmp import SPIN_COUNT_VAR

        os.environ.pop(SPIN_COUNT_VAR, None)
    try:
        from PIL import Image

        from baselines import torch_got

        model = torch_got.load_model(Path(checkpoint_dir), dtype, threads)
        processor = torch_got.image_processor(Path(checkpoint_dir))
    except BaseException as e:  # the parent skips or fails with this message
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", None))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        pixels, n_tokens = msg
        try:
            image = Image.fromarray(pixels)
            t0 = time.perf_counter()
            generated = torch_got.generate_page(model, processor, image, ids, n_tokens)
            conn.send(("ok", (time.perf_counter() - t0, generated)))
        except BaseException as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))


class TorchPageWorker:
    """``run(page, n_tokens) -> (seconds, generated tokens)`` of ``torch_got.generate_page`` in a
    child process (spawned: no OpenMP state of ours is inherited)."""

    def __init__(self, checkpoint_dir: Path, dtype: str, threads: int, ids: list[int]):
        import gotocr_fast

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, str(checkpoint_dir), dtype, threads, list(ids),
                                                      gotocr_fast.SPIN_COUNT_SET_HERE),
                                 name="transformers-page", daemon=True)
        self._proc.start()
        child.close()
        status, detail = self._recv()
        if status != "ready":
            self.close()
            raise RuntimeError(f"transformers could not load the checkpoint: {detail}")

    def _recv(self):
        try:
            return self._conn.recv()
        except EOFError:
            return "error", f"the transformers process ended (exit code {self._proc.exitcode})"

    def run(self, page, n_tokens: int) -> tuple[float, int]:
        self._conn.send((np.asarray(page.convert("RGB")), n_tokens))
        status, value = self._recv()
        if status != "ok":
            raise RuntimeError(f"transformers' page failed: {value}")
        return value

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
