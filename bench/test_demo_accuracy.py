"""Reading accuracy of the bundled demo model per weight type, and its agreement with transformers.

The held-out set of the demo model's task (``gotocr_fast.reading.heldout_pages``: one-line pages,
1-4 line blocks and box mode) is read by our engine with the model converted to each weight type
(f32, f16, q8_0, and llama.cpp's k-quant mixes; f32 and q4_k_m text also with the bf16 encoder,
where the CPU has native bf16 arithmetic; f16 also with a q8_0 K cache), greedy with the engine's defaults (GOT's
no-repeat-20-gram rule for one view; the KV cache the weights call for: f32 for f32 weights, so
the f32 row is the reference's arithmetic all through, f16 for every other type). ``RESULTS.md`` gets a table of character error rate per
kind, decode ms/token, how often the text equals the f32 text, and how often each finish reason
ended a page (the loop guard's "repetition" must never fire on real reading).

transformers (``GotOcr2ForConditionalGeneration.generate``, greedy, the same no-repeat rule) reads
the same pages from the expanded checkpoint: its text must equal ours at f32 on ≥ 99 % of them;
every page where they differ is listed with transformers' top-1/top-2 logit margin at the first
token where the two disagree (a near tie is rounding, a wide margin would be a bug).

``GOTOCR_BENCH_DEMO_BUNDLE=DIR`` measures a bundle that ``python -m train.export RUN DIR`` wrote
(a training state not yet in the package) instead of the installed one; the results name it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from harness import BASELINE_HINT, SETTINGS, need, run_rounds, tag

BUNDLE_ENV = "GOTOCR_BENCH_DEMO_BUNDLE"


def _bundle() -> Path | None:
    """The bundle to measure: GOTOCR_BENCH_DEMO_BUNDLE's, else the installed one, else None."""
    from gotocr_fast import demo_model

    if os.environ.get(BUNDLE_ENV):
        path = Path(os.environ[BUNDLE_ENV])
        if not (path / "model.safetensors").is_file():
            raise pytest.UsageError(f"{BUNDLE_ENV}={path}: no model.safetensors there (python -m train.export RUN DIR)")
        return path
    return demo_model.bundle_path() if demo_model.has_bundle() else None


BUNDLE = _bundle()
BUNDLE_NAME = ("installed" if BUNDLE is not None and not os.environ.get(BUNDLE_ENV)
               else BUNDLE.name if BUNDLE is not None else None)

pytestmark = pytest.mark.skipif(BUNDLE is None, reason=f"the demo model is not bundled in this build and {BUNDLE_ENV} "
                                "is not set (train/checkpoint holds its training state; docs/DEMO_MODEL.md)")

OUTTYPES = ("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m")
BF16_VISION = ("f32", "q4_k_m")
"""Text weight types also read with the bf16 encoder (``vision_precision="bf16"``): what the bf16
compute costs in accuracy, alone and with the smallest text type."""
Q8_0_K_CACHE = "f16+q8_0-kcache"
"""f16 weights with a q8_0 K cache (``kv_type="q8_0"``): what that cache costs, beside the f16 row."""
CASES = OUTTYPES + tuple(f"{t}+bf16-vision" for t in BF16_VISION) + (Q8_0_K_CACHE,)
KINDS = ("line", "block", "box")
PAGES_PER_KIND = int(os.environ.get("GOTOCR_BENCH_HELDOUT_PAGES", "100"))
MAX_TOKENS = 160  # 4 lines of 32 characters are < 100 tokens; a longer answer is a failure anyway

_texts: dict[str, dict[str, list[str]]] = {}


@pytest.fixture(scope="module")
def heldout():
    from gotocr_fast import reading

    return {kind: list(reading.heldout_pages(PAGES_PER_KIND, kind=kind)) for kind in KINDS}


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("demo-models")


def _options(page) -> dict:
    opts = {"max_tokens": MAX_TOKENS}
    if page.box is not None:
        opts["box"] = list(page.box)
    return opts


def _read(engine, pages) -> tuple[list[str], int, float, dict[str, int]]:
    texts, tokens, decode_ms, reasons = [], 0, 0.0, {}
    for page in pages:
        r = engine.ocr(page.image, **_options(page))
        texts.append(r.text)
        tokens += max(0, r.completion_tokens - 1)  # the first token comes from the prefill
        decode_ms += r.timings.decode_ms
        reasons[r.finish_reason] = reasons.get(r.finish_reason, 0) + 1
    return texts, tokens, decode_ms, reasons


def _scores(heldout, texts: dict[str, list[str]]) -> dict[str, float]:
    from gotocr_fast.evaluation import score, total

    out = {}
    for kind in KINDS:
        s = total(score(p.truth, t) for p, t in zip(heldout[kind], texts[kind]))
        out[f"cer_{kind}"] = s.cer
        out[f"wer_{kind}"] = s.wer
    return out


@pytest.mark.parametrize("case", CASES)
def test_demo_accuracy(benchmark, case, heldout, demo_cache):
    from gotocr_fast import demo_model
    from gotocr_fast.engine import OcrEngine

    outtype, *variants = case.split("+")
    precision = "bf16" if "bf16-vision" in variants else "f32"
    kv_type = "q8_0" if "q8_0-kcache" in variants else None
    model = demo_model.model_dir(outtype, cache_dir=demo_cache, bundle=BUNDLE)
    result = {}
    with OcrEngine(model, n_ctx=1024, max_slots=1, n_threads=SETTINGS.threads,
                   vision_precision=precision, kv_type=kv_type) as engine:
        if engine.vision.precision != precision:
            pytest.skip(f"this CPU has no native bf16 arithmetic: the encoder runs {engine.vision.precision}")
        engine.ocr(heldout["line"][0].image, max_tokens=4)  # first-use allocations out of the timing

        def read_all():
            result.clear()
            for kind in KINDS:
                result[kind] = _read(engine, heldout[kind])

        run_rounds(benchmark, read_all, rounds=1, warmup=0)
    texts = {kind: result[kind][0] for kind in KINDS}
    tokens = sum(result[k][1] for k in KINDS)
    decode_ms = sum(result[k][2] for k in KINDS)
    reasons: dict[str, int] = {}
    for k in KINDS:
        for reason, n in result[k][3].items():
            reasons[reason] = reasons.get(reason, 0) + n
    _texts[case] = texts
    info = _scores(heldout, texts)
    for reference in ("f32", "f16"):
        if reference in _texts:
            same = sum(a == b for k in KINDS for a, b in zip(_texts[reference][k], texts[k]))
            info[f"same_text_as_{reference}"] = same / (len(KINDS) * PAGES_PER_KIND)
    tag(benchmark, "accuracy", "ours", dtype=case, units=len(KINDS) * PAGES_PER_KIND, unit="page",
        pages_per_kind=PAGES_PER_KIND, bundle=BUNDLE_NAME, decode_ms_per_token=decode_ms / max(1, tokens),
        text_gguf_mib=sum(f.stat().st_size for f in model.glob("got-text-*.gguf")) / 2**20,
        finish_reasons=reasons, **info)


def _first_divergence(ids: list[int], text: str, tokenizer) -> int:
    """Index of the first of transformers' generated tokens whose text leaves ``text`` (ours).

    Compared as text, not as ids: our text re-tokenised would merge characters the model wrote one
    token at a time, and the index would then point at the wrong step (and its margin).
    """
    for k in range(len(ids)):
        if not text.startswith(tokenizer.decode(ids[:k + 1], skip_special_tokens=True)):
            return k
    return len(ids)


def test_demo_transformers_agreement(benchmark, heldout, demo_cache):
    need("torch", "transformers", "tokenizers", hint=BASELINE_HINT)
    import torch
    from tokenizers import Tokenizer

    from baselines import torch_got
    from gotocr_fast import demo_model, tokens
    from gotocr_fast.prompt import OcrMode, build_prompt, build_query

    if "f32" not in _texts:
        pytest.skip("needs test_demo_accuracy[f32] of the same run (our f32 texts)")
    ckpt = demo_model.write_checkpoint(demo_cache / "checkpoint", BUNDLE)
    config = demo_model.load_config(BUNDLE)
    model = torch_got.load_model(ckpt, "f32", SETTINGS.threads)
    processor = torch_got.image_processor(ckpt)
    tokenizer = Tokenizer.from_file(str(ckpt / "tokenizer.json"))

    def prompt_ids(page) -> list[int]:
        mode = OcrMode(boxes=(page.box,)) if page.box is not None else OcrMode()
        text = build_prompt(build_query(mode, image_size=page.image.size), config.tokens_per_view)
        return tokenizer.encode(text, add_special_tokens=False).ids

    def generate(page):
        ids = torch.tensor([prompt_ids(page)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             pixel_values=torch_got.pixel_values(processor, page.image, crop=False),
                             max_new_tokens=MAX_TOKENS, do_sample=False, num_beams=1, no_repeat_ngram_size=20,
                             eos_token_id=tokens.IM_END_ID, pad_token_id=tokens.ENDOFTEXT_ID,
                             output_scores=True, return_dict_in_generate=True)
        new = out.sequences[0, ids.shape[1]:].tolist()
        if new and new[-1] == tokens.IM_END_ID:
            new = new[:-1]
        return new, out.scores

    theirs: dict[str, list[str]] = {}
    differences = []

    def read_all():
        for kind in KINDS:
            theirs[kind] = []
            for i, page in enumerate(heldout[kind]):
                new, scores = generate(page)
                text = tokenizer.decode(new, skip_special_tokens=True)
                theirs[kind].append(text)
                ours = _texts["f32"][kind][i]
                if text != ours:
                    k = _first_divergence(new, ours, tokenizer)
                    margin = None
                    if k < len(scores):
                        top = torch.topk(scores[k][0].float(), 2).values
                        margin = float(top[0] - top[1])
                    differences.append({"kind": kind, "page": i, "ours": ours, "transformers": text,
                                        "first_diff_token": k, "margin": margin})

    t0 = time.perf_counter()
    run_rounds(benchmark, read_all, rounds=1, warmup=0)
    n = len(KINDS) * PAGES_PER_KIND
    agree = 1 - len(differences) / n
    tag(benchmark, "accuracy", "transformers", dtype="f32", units=n, unit="page", pages_per_kind=PAGES_PER_KIND,
        bundle=BUNDLE_NAME,
        agreement_with_ours_f32=agree, differences=differences, seconds=time.perf_counter() - t0,
        **_scores(heldout, theirs))
    assert agree >= 0.99, f"transformers and ours (f32) differ on {len(differences)} of {n} pages: {differences[:3]}"
