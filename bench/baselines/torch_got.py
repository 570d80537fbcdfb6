"""transformers ``GotOcr2ForConditionalGeneration`` on CPU: the stages our engine replaces.

All calls run under ``torch.inference_mode()`` with ``torch.set_num_threads(threads)``. The LM
is timed through the model's own ``forward`` (embeddings in, cache out), as ``generate`` would
run it, without generate's Python bookkeeping; the page benchmark uses ``generate`` itself.
"""

from __future__ import annotations

import functools
import inspect
import time
from pathlib import Path

DTYPES = ("f32", "bf16")


def _torch_dtype(name: str):
    import torch

    return {"f32": torch.float32, "bf16": torch.bfloat16}[name]


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # can only be set before the first parallel op; harmless if already set
        pass


def load_model(checkpoint_dir: Path, dtype: str, threads: int):
    """The transformers model from a transformers-layout checkpoint, in eval mode."""
    import torch
    from transformers import GotOcr2ForConditionalGeneration

    set_threads(threads)
    kwargs = {"dtype": _torch_dtype(dtype)}
    if "dtype" not in inspect.signature(GotOcr2ForConditionalGeneration.from_pretrained).parameters:
        # transformers < 4.56 spells it torch_dtype; both go through **kwargs in 5.x
        kwargs = {"torch_dtype": _torch_dtype(dtype)}
    model = GotOcr2ForConditionalGeneration.from_pretrained(str(checkpoint_dir), **kwargs)
    model.eval()
    torch.set_grad_enabled(False)
    return model


def image_processor(checkpoint_dir: Path):
    """transformers' own GOT image processor (the PIL backend: no torchvision needed)."""
    try:
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil as cls
    except ImportError:  # older transformers: the slow processor is the PIL one
        from transformers import GotOcr2ImageProcessor as cls
    return cls.from_pretrained(str(checkpoint_dir))


def pixel_values(processor, image, crop: bool, max_tiles: int = 6):
    """[N, 3, S, S] tensor: one view, or crop-mode tiles + thumbnail (GOT's max of 6 tiles)."""
    out = processor(images=image, crop_to_patches=crop, max_patches=max_tiles, min_patches=1,
                    return_tensors="pt")
    return out["pixel_values"]


def image_features(model, pixel_values):
    """[N, tokens, hidden]: vision tower + projector, what transformers splices into the prompt."""
    import torch

    with torch.inference_mode():
        out = model.get_image_features(pixel_values=pixel_values.to(model.dtype))
    return getattr(out, "pooler_output", out)


def prompt_embeds(model, ids: list[int], features, image_token_id: int):
    """Token embeddings of the prompt with the image placeholders replaced by ``features``."""
    import torch

    with torch.inference_mode():
        input_ids = torch.tensor([ids])
        embeds = model.get_input_embeddings()(input_ids)
        mask = (input_ids == image_token_id).unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, features.to(embeds.dtype).reshape(-1))


def _cache_kw(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def prefill(model, embeds):
    """One forward over the whole prompt; returns (cache, greedy next token [1, 1])."""
    import torch

    with torch.inference_mode():
        out = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        return cache, out.logits[:, -1:].argmax(-1)


def decode(model, cache, token, n: int) -> list[int]:
    """``n`` greedy steps, one token per forward, reusing the KV cache (as generate does)."""
    import torch

    kw = _cache_kw(model)
    out_tokens = []
    with torch.inference_mode():
        for _ in range(n):
            out = model(input_ids=token, use_cache=True, **{kw: cache})
            cache = getattr(out, "cache", None) or out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
            out_tokens.append(int(token))
    return out_tokens


def generate_page(model, processor, image, ids: list[int], n_tokens: int) -> int:
    """One page end to end with ``generate``: preprocess, encode, prefill, ``n_tokens`` greedy steps.

    ``min_new_tokens`` = ``max_new_tokens`` so the work per page is fixed (random weights decide
    nothing useful about when to stop). Returns the number of generated tokens.
    """
    import torch

    with torch.inference_mode():
        pv = pixel_values(processor, image, crop=False).to(model.dtype)
        input_ids = torch.tensor([ids])
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             pixel_values=pv, do_sample=False, max_new_tokens=n_tokens,
                             min_new_tokens=n_tokens, pad_token_id=0)
    return int(out.shape[1] - input_ids.shape[1])


@functools.lru_cache(maxsize=None)
def bf16_is_faster(threads: int) -> tuple[bool, str]:
    """Probe: is a bf16 linear of the encoder's shape faster than f32 on this CPU?

    CPUs without native bf16 (no AVX512_BF16 / AMX) emulate it and lose; the probe measures
    rather than guessing from flags. A few hundred ms.
    """
    import torch

    set_threads(threads)
    x = torch.randn(1024, 768)
    w = torch.randn(3072, 768)
    times = {}
    with torch.inference_mode():
        for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = x.to(dt), w.to(dt)
            torch.nn.functional.linear(a, b)
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                torch.nn.functional.linear(a, b)
                best = min(best, time.perf_counter() - t0)
            times[name] = best
    ratio = times["f32"] / times["bf16"]
    return ratio > 1.0, f"bf16 linear runs at {ratio:.2f}× the f32 speed on this CPU"
