"""Stock llama.cpp through llama-cpp-python's ``Llama``: our text GGUF, nothing of ours in the loop.

This is the ceiling for our LM stages: the same GGUF and the same llama.cpp build our engine
links, driven by llama-cpp-python's own high-level class. The prompt is fed as token ids (the
``<imgpad>`` ids stay token embeddings here instead of image embeddings: same shapes, same FLOPs).
"""

from __future__ import annotations

from pathlib import Path


def open_model(text_gguf: Path, threads: int, n_ctx: int = 4096):
    """``Llama`` with the model parameters our engine loads with (same extra buffer types), so the
    comparison stays like for like."""
    from gotocr_fast.llama_load import open_stock_llama

    return open_stock_llama(
        model_path=str(text_gguf), n_ctx=n_ctx, n_batch=512, n_ubatch=512,
        n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False,
    )


def _greedy(llm) -> int:
    """argmax of the last evaluated position's logits (read in place, no copy)."""
    import llama_cpp
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return int(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).argmax())


def prefill(llm, ids: list[int]) -> int:
    """Clear the context, evaluate the whole prompt; returns the greedy next token."""
    llm.reset()
    llm.eval(ids)
    return _greedy(llm)


def decode(llm, token: int, n: int) -> list[int]:
    """``n`` greedy steps after a prefill, one token per ``llama_decode``."""
    out = []
    for _ in range(n):
        llm.eval([token])
        token = _greedy(llm)
        out.append(token)
    return out
