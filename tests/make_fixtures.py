"""Write the committed parity oracles in tests/fixtures/ from HF transformers (run by hand).

Needs torch==2.13.0 (CPU) + transformers 5.x + tiktoken + Pillow, and gotocr_fast importable
(installed, or see DEVELOPING.md). From the repository root:

    python tests/make_fixtures.py                 # everything (the full config takes minutes)
    python tests/make_fixtures.py --only images vision text mm sampling

Every oracle value comes from transformers (``GotOcr2ForConditionalGeneration`` in float32, eval,
CPU), its PIL image processor and tiktoken; our own code only supplies the seeded checkpoint
(``gotocr_fast.synth``, the thing being modelled) and the seeded pixel inputs
(``synth.synth_pixels``). Prompts are the ORIGINAL GOT prompts (docs/MODEL.md, "Prompt"), written out here
and tokenized with tiktoken over ``qwen.tiktoken`` + the special ids of ``gotocr_fast.tokens``,
after NFC normalisation. See tests/fixtures/README.md for the file contents.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import tiktoken
import torch
import transformers
from PIL import Image, ImageDraw, ImageFont
from transformers import GenerationConfig, GotOcr2ForConditionalGeneration
from transformers.generation.logits_process import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    GotOcr2ImageProcessorPil,
    get_optimal_tiled_canvas,
)

from gotocr_fast import synth
from gotocr_fast.tokens import ENDOFTEXT_ID, IM_END_ID, SPECIAL_TOKENS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
IMAGES = FIXTURES / "images"
SEED = 0  # checkpoint seed of every oracle
PIXEL_SEED = 0  # synth.synth_pixels(image_size, n_views, PIXEL_SEED)
TOPK = 32
MAX_NEW_TOKENS = 48
MAX_TILES = 6  # GOT's multi-crop limit (transformers' default is 12)

# Qwen's tiktoken split pattern (tokenization_qwen.py in Qwen's and GOT's repositories).
QWEN_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

SYSTEM = "You should follow the instructions carefully and explain your answers in detail."

torch.set_grad_enabled(False)


# --------------------------------------------------------------------------------------------
# tokenizer (independent of gotocr_fast.convert)


def qwen_encoding() -> tiktoken.Encoding:
    spec = importlib.util.find_spec("dashscope")  # located, not imported
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return tiktoken.Encoding("qwen", pat_str=QWEN_PAT, mergeable_ranks=ranks, special_tokens=dict(SPECIAL_TOKENS))


def encode(enc: tiktoken.Encoding, text: str) -> list[int]:
    return enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")


def got_prompt(query: str, n_image_tokens: int) -> str:
    """The original GOT ChatML prompt (conv_mpt): docs/MODEL.md, "Prompt", written out literally."""
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>"
        f"<|im_start|>user\n<img>{'<imgpad>' * n_image_tokens}</img>\n{query}<|im_end|>"
        "<|im_start|>assistant\n"
    )


# --------------------------------------------------------------------------------------------
# sample images (committed; regenerated only with --only images)


def make_images() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=18)
    wide = Image.new("RGB", (560, 200), "white")
    d = ImageDraw.Draw(wide)
    d.text((12, 10), "GOT-OCR2 parity 2024: Hello, world!", fill="black", font=font)
    d.text((12, 50), "Red line: 3.14159 apples", fill=(220, 20, 20), font=font)
    d.text((12, 90), "Green line: E = mc^2", fill=(20, 170, 40), font=font)
    d.text((12, 130), "Blue line: x_1 + x_2 = 42", fill=(30, 50, 220), font=font)
    d.rectangle((380, 150, 540, 190), outline="black", width=2)
    d.text((390, 160), "[boxed]", fill="black", font=font)
    wide.save(IMAGES / "wide.png", optimize=True)

    tall = Image.new("RGB", (220, 480), "white")
    d = ImageDraw.Draw(tall)
    lines = ["Title", "", "1. alpha", "2. beta", "3. gamma", "", "| a | b |", "| 1 | 2 |", "", "Sum: 3", "end."]
    for i, line in enumerate(lines):
        d.text((14, 12 + i * 38), line, fill="black", font=font)
    d.line((14, 470, 200, 470), fill=(0, 0, 200), width=3)
    tall.save(IMAGES / "tall.png", optimize=True)


def load_image(name: str) -> Image.Image:
    return Image.open(IMAGES / f"{name}.png").convert("RGB")


# --------------------------------------------------------------------------------------------
# model helpers


def load_model(ckpt: Path) -> GotOcr2ForConditionalGeneration:
    model, info = GotOcr2ForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise RuntimeError(f"loading {ckpt}: {bad}")
    return model.eval()


def topk(logits: torch.Tensor, k: int = TOPK) -> tuple[np.ndarray, np.ndarray]:
    values, ids = logits.float().topk(k, dim=-1)
    return ids.numpy().astype(np.int64), values.numpy().astype(np.float32)


CHECKPOINT_SHA256: dict[str, str] = {}  # config -> sha256 of the hf model.safetensors the oracles came from


def checkpoint(workdir: Path, config: str) -> Path:
    ckpt = synth.write_checkpoint(workdir / config, config, "hf", seed=SEED)
    CHECKPOINT_SHA256[config] = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    return ckpt


def write(name: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    meta = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "checkpoint_seed": SEED,
        **meta,
    }
    if meta.get("config") in CHECKPOINT_SHA256:
        meta["checkpoint_sha256"] = CHECKPOINT_SHA256[meta["config"]]
    np.savez_compressed(FIXTURES / f"{name}.npz", **arrays)
    (FIXTURES / f"{name}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    size = (FIXTURES / f"{name}.npz").stat().st_size
    print(f"wrote {name}.npz ({size / 1e6:.2f} MB): {', '.join(f'{k}{list(v.shape)}' for k, v in arrays.items())}")


def fname(config: str) -> str:
    return config.replace("-", "_")


# --------------------------------------------------------------------------------------------
# a. vision features


def vision_oracle(config: str, model) -> None:
    cfg = synth.CONFIGS[config]
    pixels = torch.from_numpy(synth.synth_pixels(cfg.vision.image_size, 2, PIXEL_SEED))
    out = model.model.get_image_features(pixels)
    write(f"{fname(config)}_vision", {
        "features": out.pooler_output.numpy().astype(np.float32),
        "vision_tower": out.last_hidden_state.numpy().astype(np.float32),
    }, {
        "config": config,
        "pixels": f"gotocr_fast.synth.synth_pixels({cfg.vision.image_size}, n_views=2, seed={PIXEL_SEED})",
        "features": "GotOcr2Model.get_image_features(pixels).pooler_output: projector output [N, tokens, E]",
        "vision_tower": "get_image_features(...).last_hidden_state: neck output before the projector, NCHW",
    })


# --------------------------------------------------------------------------------------------
# b. text only

TEXT = "user\nHello, 世界! OCR 测试: the quick brown fox, 2024."


def text_oracle(config: str, model, enc) -> None:
    ids = [SPECIAL_TOKENS["<|im_start|>"]] + encode(enc, TEXT) + [IM_END_ID]
    logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    tk_ids, tk_vals = topk(logits)
    write(f"{fname(config)}_text", {
        "input_ids": np.asarray(ids, np.int64),
        "last_logits": logits[-1].numpy().astype(np.float32),
        "topk_ids": tk_ids,
        "topk_values": tk_vals,
        "logsumexp": torch.logsumexp(logits, -1).numpy().astype(np.float32),
    }, {
        "config": config,
        "text": "<|im_start|> + tiktoken(NFC(text)) + <|im_end|>",
        "raw_text": TEXT,
        "last_logits": "logits at the last position, full vocab",
        "topk": f"top-{TOPK} ids/values at every position (sorted, descending)",
    })


# --------------------------------------------------------------------------------------------
# c. multimodal, every GOT mode

WIDE_BOX = (40, 40, 330, 120)  # pixels of wide.png (560x200)
WIDE_BOXES = ((40, 40, 330, 120), (370, 145, 550, 195))
TALL_BOX = (10, 80, 180, 200)  # pixels of tall.png (220x480)


def box_text(box, size) -> str:
    w, h = size
    coords = [int(box[0] / w * 1000), int(box[1] / h * 1000), int(box[2] / w * 1000), int(box[3] / h * 1000)]
    return str(coords)  # GOT: str(list_of_ints) -> "[x1, y1, x2, y2]"


def mm_cases() -> list[dict]:
    """(name, images, query, crop) for every mode; queries are GOT's literal strings."""
    wide = (560, 200)
    tall = (220, 480)
    cases = [
        dict(name="plain", images=["wide"], query="OCR: "),
        dict(name="format", images=["tall"], query="OCR with format: "),
        dict(name="box", images=["wide"], query=f"{box_text(WIDE_BOX, wide)} OCR: ", boxes=[WIDE_BOX]),
        # several boxes = several prompts over the same image (one box per prompt, as GOT trained)
        dict(name="boxes_0", images=["wide"], query=f"{box_text(WIDE_BOXES[0], wide)} OCR: ", boxes=[WIDE_BOXES[0]]),
        dict(name="boxes_1", images=["wide"], query=f"{box_text(WIDE_BOXES[1], wide)} OCR: ", boxes=[WIDE_BOXES[1]]),
        dict(name="color_red", images=["wide"], query="[red] OCR: ", color="red"),
        dict(name="color_green", images=["wide"], query="[green] OCR: ", color="green"),
        dict(name="color_blue", images=["wide"], query="[blue] OCR: ", color="blue"),
        dict(name="crop", images=["wide"], query="OCR upon the patch reference: ", crop=True),
        dict(name="multipage", images=["wide", "tall"], query="OCR across multi pages: ", multi_page=True),
        dict(name="format_multipage", images=["wide", "tall"], query="OCR with format across multi pages: ",
             multi_page=True, type="format"),
        dict(name="format_box", images=["tall"], query=f"{box_text(TALL_BOX, tall)} OCR with format: ",
             boxes=[TALL_BOX], type="format"),
        dict(name="format_crop", images=["tall"], query="OCR with format upon the patch reference: ",
             crop=True, type="format"),
        dict(name="format_color", images=["wide"], query="[blue] OCR with format: ", color="blue", type="format"),
    ]
    for c in cases:
        c.setdefault("type", "plain")
        c.setdefault("boxes", [])
        c.setdefault("color", None)
        c.setdefault("crop", False)
        c.setdefault("multi_page", False)
    return cases


FULL_LOGITS_CASES = ("plain", "crop", "multipage", "format_box")


def pixel_values_for(case: dict, image_size: int) -> tuple[np.ndarray, list]:
    proc = GotOcr2ImageProcessorPil(size={"height": image_size, "width": image_size})
    views, grids = [], []
    for name in case["images"]:
        img = load_image(name)
        out = proc(images=[img], crop_to_patches=case["crop"], min_patches=1, max_patches=MAX_TILES,
                   return_tensors="np")
        views.append(np.asarray(out["pixel_values"], np.float32))
        if case["crop"]:
            grids.append(list(get_optimal_tiled_canvas((img.height, img.width), (image_size, image_size), 1, MAX_TILES)))
    return np.concatenate(views), grids


def mm_oracle(config: str, model, enc) -> None:
    cfg = synth.CONFIGS[config]
    s, t = cfg.vision.image_size, cfg.tokens_per_view
    arrays: dict[str, np.ndarray] = {}
    meta_cases = {}
    gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=IM_END_ID,
                               pad_token_id=ENDOFTEXT_ID, bos_token_id=ENDOFTEXT_ID, output_logits=True,
                               return_dict_in_generate=True)
    for case in mm_cases():
        name = case["name"]
        pixels, grids = pixel_values_for(case, s)
        n_views = pixels.shape[0]
        prompt = got_prompt(case["query"], t * n_views)
        ids = encode(enc, prompt)
        input_ids = torch.tensor([ids])
        out = model.generate(input_ids=input_ids, pixel_values=torch.from_numpy(pixels),
                             attention_mask=torch.ones_like(input_ids), generation_config=gen_cfg)
        gen = out.sequences[0, len(ids):].numpy().astype(np.int64)
        step_logits = torch.stack([lg[0].float() for lg in out.logits])  # [steps, V]
        top2 = step_logits.topk(2, dim=-1).values
        first = step_logits[0]
        # the first step's logits again from a plain forward (what a prefill gives)
        fwd = model(input_ids=input_ids, pixel_values=torch.from_numpy(pixels), logits_to_keep=1).logits[0, -1].float()
        if not torch.allclose(fwd, first, atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"{config}/{name}: forward and generate disagree")
        tk_ids, tk_vals = topk(first)
        p = f"{name}/"
        arrays[p + "prompt_ids"] = np.asarray(ids, np.int64)
        arrays[p + "gen_ids"] = gen
        arrays[p + "gen_margins"] = (top2[:, 0] - top2[:, 1]).numpy().astype(np.float32)
        arrays[p + "first_topk_ids"] = tk_ids
        arrays[p + "first_topk_values"] = tk_vals
        arrays[p + "first_logsumexp"] = np.float32(torch.logsumexp(first, -1).item()).reshape(1)
        arrays[p + "pixel_stats"] = np.stack([pixels.mean(axis=(2, 3)), pixels.std(axis=(2, 3))], axis=1).astype(np.float32)
        if name in FULL_LOGITS_CASES:
            arrays[p + "first_logits"] = first.numpy().astype(np.float32)
        meta_cases[name] = {
            "images": [f"images/{n}.png" for n in case["images"]],
            "type": case["type"], "boxes": [list(b) for b in case["boxes"]], "color": case["color"],
            "crop": case["crop"], "multi_page": case["multi_page"],
            "query": case["query"], "n_views": int(n_views), "tile_grids_cols_rows": grids,
            "prompt_tokens": len(ids), "generated": int(len(gen)),
            "stopped": bool(len(gen) and gen[-1] == IM_END_ID),
            "full_first_logits": name in FULL_LOGITS_CASES,
        }
        print(f"  {config}/{name}: views {n_views} prompt {len(ids)} gen {len(gen)} "
              f"min margin(first 10) {float(arrays[p + 'gen_margins'][:10].min()):.3f}")
    write(f"{fname(config)}_mm", arrays, {
        "config": config,
        "image_size": s, "tokens_per_view": t,
        "prompt": "original GOT ChatML (docs/MODEL.md, Prompt): <|im_start|>system\\n{SYSTEM}<|im_end|><|im_start|>user\\n"
                  "<img>{<imgpad> x tokens_per_view x n_views}</img>\\n{query}<|im_end|><|im_start|>assistant\\n",
        "system": SYSTEM,
        "tokenizer": "tiktoken over dashscope's qwen.tiktoken + gotocr_fast.tokens.SPECIAL_TOKENS, NFC first, "
                     "allowed_special=all",
        "box_coords": "int(x / width * 1000), int(y / height * 1000) of the original image; text str(list)",
        "pixels": f"transformers GotOcr2ImageProcessorPil(size={s}x{s}) per image: crop_to_patches=<crop>, "
                  f"min_patches=1, max_patches={MAX_TILES}; tiles row by row, then a thumbnail when >1 tile; "
                  "multi-page: each page one view, pages in order inside one <img>...</img>",
        "generation": f"transformers generate, greedy (do_sample=False), max_new_tokens={MAX_NEW_TOKENS}, "
                      f"eos_token_id={IM_END_ID}; gen_margins = top1 - top2 raw logit per step: compare "
                      "tokens only while the margin is clear",
        "keys": "<case>/prompt_ids, gen_ids, gen_margins, first_topk_ids, first_topk_values, first_logsumexp "
                "[1], pixel_stats [n_views, 2(mean,std), 3], first_logits (full vocab; only cases with "
                "full_first_logits)",
        "cases": meta_cases,
    })


# --------------------------------------------------------------------------------------------
# c2. greedy decoding with and without GOT's no-repeat n-gram rule (longer generations)

DECODING_CASES = ("plain", "color_green", "crop")
DECODING_NEW_TOKENS = 256
DECODING_NGRAM_SIZES = (0, 20, 3)  # 0: generate's default (off); 20: GOT's; 3: a rule that bites early
# What the official GOT-OCR2.0 scripts pass to generate: GOT/demo/run_ocr_2.0.py (one view: plain,
# format, box, colour) no_repeat_ngram_size=20; GOT/demo/run_ocr_2.0_crop.py (multi-crop and
# multi-page) has that line commented out. Both max_new_tokens=4096.
REFERENCE_NGRAM = {"single_view": 20, "crop_or_multi_page": 0}


def decoding_oracle(config: str, model, enc) -> None:
    cfg = synth.CONFIGS[config]
    s, t = cfg.vision.image_size, cfg.tokens_per_view
    cases = {c["name"]: c for c in mm_cases()}
    arrays: dict[str, np.ndarray] = {}
    meta_cases = {}
    for name in DECODING_CASES:
        case = cases[name]
        pixels, _ = pixel_values_for(case, s)
        ids = encode(enc, got_prompt(case["query"], t * pixels.shape[0]))
        input_ids = torch.tensor([ids])
        reference = REFERENCE_NGRAM["crop_or_multi_page" if case["crop"] or case["multi_page"] else "single_view"]
        runs = {}
        for n in DECODING_NGRAM_SIZES:
            gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=DECODING_NEW_TOKENS, eos_token_id=IM_END_ID,
                                       pad_token_id=ENDOFTEXT_ID, bos_token_id=ENDOFTEXT_ID, output_scores=True,
                                       return_dict_in_generate=True, no_repeat_ngram_size=n or None)
            out = model.generate(input_ids=input_ids, pixel_values=torch.from_numpy(pixels),
                                 attention_mask=torch.ones_like(input_ids), generation_config=gen_cfg)
            gen = out.sequences[0, len(ids):].numpy().astype(np.int64)
            scores = torch.stack([sc[0].float() for sc in out.scores])  # processed: banned ids are -inf
            top2 = scores.topk(2, dim=-1).values
            arrays[f"{name}/ngram{n}/gen_ids"] = gen
            arrays[f"{name}/ngram{n}/gen_margins"] = (top2[:, 0] - top2[:, 1]).numpy().astype(np.float32)
            runs[n] = gen.tolist()
        arrays[f"{name}/prompt_ids"] = np.asarray(ids, np.int64)
        diverge = {str(n): next((i for i, (a, b) in enumerate(zip(runs[0], runs[n])) if a != b), None)
                   for n in DECODING_NGRAM_SIZES if n}
        meta_cases[name] = {
            "images": [f"images/{n}.png" for n in case["images"]], "type": case["type"],
            "boxes": [list(b) for b in case["boxes"]], "color": case["color"], "crop": case["crop"],
            "multi_page": case["multi_page"], "query": case["query"], "n_views": int(pixels.shape[0]),
            "reference_no_repeat_ngram_size": reference, "first_difference_from_ngram0": diverge,
            "generated": {str(n): len(g) for n, g in runs.items()},
        }
        for n in DECODING_NGRAM_SIZES:
            m = arrays[f"{name}/ngram{n}/gen_margins"].tolist()
            clear = next((i for i, x in enumerate(m) if x <= 1e-2), len(m))
            print(f"  {config}/{name} ngram {n}: {len(runs[n])} tokens, margins clear for {clear}, "
                  f"first difference from ngram 0 at {diverge.get(str(n))}")
    write(f"{fname(config)}_decoding", arrays, {
        "config": config,
        "cases": meta_cases,
        "generation": f"transformers generate, greedy, max_new_tokens={DECODING_NEW_TOKENS}, eos_token_id={IM_END_ID}, "
                      f"no_repeat_ngram_size n for n in {DECODING_NGRAM_SIZES} (0: None, off); prompts, pixels and "
                      "tokenizer as "
                      "<config>_mm",
        "reference": "reference_no_repeat_ngram_size: what GOT's official scripts use for the case's mode "
                     "(run_ocr_2.0.py: 20 for one view; run_ocr_2.0_crop.py: off for crop and multi-page)",
        "keys": "<case>/prompt_ids; <case>/ngram<n>/gen_ids; <case>/ngram<n>/gen_margins (top1 - top2 of the "
                "PROCESSED scores, banned ids at -inf: compare tokens only while it is clear)",
    })


# --------------------------------------------------------------------------------------------
# e. sampling semantics

SAMPLING_SETTINGS = [
    # (temperature, top_p, repetition_penalty)
    (1.0, 1.0, 1.0),
    (0.7, 1.0, 1.0),
    (1.0, 0.9, 1.0),
    (0.7, 0.8, 1.3),
    (1.5, 0.95, 1.1),
    (0.8, 0.9, 0.8),
    (1.0, 1e-4, 1.0),
    (1.2, 1.0, 1.5),
]


def sampling_oracle() -> None:
    rng = np.random.default_rng(1234)
    logits = (rng.standard_normal(4096) * 3.0).astype(np.float32)
    order = np.argsort(-logits)
    # previous tokens: the top few (so the penalty bites), a repeat, some negative-logit ones
    prev = np.asarray([order[0], order[1], order[0], order[5], order[-1], order[-2], order[100], 7], np.int64)
    arrays = {"logits": logits, "prev_ids": prev}
    settings = []
    for i, (temp, top_p, rep) in enumerate(SAMPLING_SETTINGS):
        procs = LogitsProcessorList()
        if rep != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(rep))
        if temp != 1.0:
            procs.append(TemperatureLogitsWarper(temp))
        if top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
        scores = procs(torch.from_numpy(prev)[None], torch.from_numpy(logits.copy())[None])[0]
        probs = torch.softmax(scores, -1)
        arrays[f"{i}/scores"] = scores.numpy().astype(np.float32)
        arrays[f"{i}/probs"] = probs.numpy().astype(np.float32)
        settings.append({"index": i, "temperature": temp, "top_p": top_p, "repetition_penalty": rep,
                         "kept": int(torch.isfinite(scores).sum()), "processors": [type(p).__name__ for p in procs]})
    write("sampling", arrays, {
        "logits": "np.random.default_rng(1234).standard_normal(4096) * 3 (stored: 'logits')",
        "prev_ids": "the tokens already in the sequence (transformers penalises every id in input_ids: prompt "
                    "and generated), duplicates count once",
        "order": "transformers generate order: RepetitionPenaltyLogitsProcessor -> TemperatureLogitsWarper -> "
                 "TopPLogitsWarper(min_tokens_to_keep=1); top_k disabled (generate's default top_k=50 is NOT "
                 "applied: our API has no top_k)",
        "keys": "<i>/scores: processed scores (-inf where filtered), <i>/probs: softmax(scores)",
        "settings": settings,
    })


# --------------------------------------------------------------------------------------------
# f. the no-repeat n-gram rule on its own

NGRAM_VOCAB = 64
NGRAM_PROMPT = 200  # ids[:NGRAM_PROMPT] play the prompt; banned sets from there on
NGRAM_SIZES = (1, 2, 3, 4, 20)
NGRAM_SETTINGS = [
    # (n, temperature, top_p, repetition_penalty, length of input_ids)
    (3, 1.0, 1.0, 1.0, 440),
    (20, 0.7, 0.9, 1.3, 600),
    (2, 1.2, 0.8, 1.0, 300),
    (1, 1.0, 0.95, 1.1, 250),
    (4, 0.0, 1.0, 1.0, 520),  # greedy: only the processors (temperature 0 = no warpers)
]


def ngram_ids() -> np.ndarray:
    """600 ids that repeat at every scale: a prompt with a long run of one id (as GOT's <imgpad>
    rows), random ids over small alphabets (short n-grams recur) and copied stretches (20-grams recur);
    the sequence ends inside a copied stretch, so every size bans something at the end."""
    rng = np.random.default_rng(4321)
    V = NGRAM_VOCAB
    prompt = np.concatenate([rng.integers(0, V, 60), np.full(40, V - 1), rng.integers(0, 8, 100)])
    parts = [prompt]
    n = len(prompt)
    while n < 600:
        kind = rng.integers(0, 3)
        seq = np.concatenate(parts)
        if kind == 0:
            chunk = rng.integers(0, 6, int(rng.integers(10, 40)))
        elif kind == 1:
            chunk = rng.integers(0, V, int(rng.integers(5, 20)))
        else:
            a = int(rng.integers(0, n - 40))
            chunk = seq[a : a + int(rng.integers(25, 41))]
        parts.append(chunk)
        n += len(chunk)
    seq = np.concatenate(parts)[:570]
    return np.concatenate([seq, seq[300:330]]).astype(np.int64)  # the last 30 ids copy ids[300:330]


def ngram_oracle() -> None:
    ids = ngram_ids()
    assert len(ids) == 600
    t_ids = torch.from_numpy(ids)[None]
    arrays: dict[str, np.ndarray] = {"ids": ids}
    for n in NGRAM_SIZES:
        proc = NoRepeatNGramLogitsProcessor(n)
        rows = []
        for length in range(NGRAM_PROMPT, len(ids) + 1):
            scores = proc(t_ids[:, :length], torch.zeros(1, NGRAM_VOCAB))
            rows.append(torch.isneginf(scores[0]).numpy())
        arrays[f"n{n}/banned"] = np.stack(rows)
        print(f"  ngram n={n}: steps with a ban {int(arrays[f'n{n}/banned'].any(1).sum())}/{len(rows)}")
    logits = (np.random.default_rng(99).standard_normal(NGRAM_VOCAB) * 3.0).astype(np.float32)
    arrays["logits"] = logits
    settings = []
    for i, (n, temp, top_p, rep, length) in enumerate(NGRAM_SETTINGS):
        procs = LogitsProcessorList()  # generate's order (GenerationMixin._get_logits_processor)
        if rep != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(rep))
        procs.append(NoRepeatNGramLogitsProcessor(n))
        if temp not in (0.0, 1.0):
            procs.append(TemperatureLogitsWarper(temp))
        if top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
        scores = procs(t_ids[:, :length], torch.from_numpy(logits.copy())[None])[0]
        banned = int(NoRepeatNGramLogitsProcessor(n)(t_ids[:, :length], torch.zeros(1, NGRAM_VOCAB)).isinf().sum())
        if banned == 0:
            raise RuntimeError(f"setting {i}: the rule bans nothing; pick another length")
        arrays[f"setting{i}/scores"] = scores.numpy().astype(np.float32)
        settings.append({"index": i, "n": n, "temperature": temp, "top_p": top_p, "repetition_penalty": rep,
                         "length": length, "banned": banned, "processors": [type(p).__name__ for p in procs]})
    write("ngram", arrays, {
        "ids": "600 int64 ids over a vocabulary of 64 (make_fixtures.ngram_ids: seeded, repeats at every scale)",
        "vocab": NGRAM_VOCAB,
        "first_step": NGRAM_PROMPT,
        "sizes": list(NGRAM_SIZES),
        "banned": "n<n>/banned [401, 64] bool: row i = the ids NoRepeatNGramLogitsProcessor(n) sets to -inf "
                  "given input_ids = ids[: first_step + i]",
        "settings": settings,
        "scores": "setting<i>/scores [64]: generate's processors in its order (RepetitionPenalty -> "
                  "NoRepeatNGram -> Temperature -> TopP) on 'logits' with input_ids = ids[:length]",
    })


# --------------------------------------------------------------------------------------------
# d. full config vision (one view)

FULL_ROWS = (0, 1, 17, 128, 255)


def vision_weights_sha256(config: str) -> str:
    """sha256 over the vision + projector tensors of the seeded checkpoint (canonical order, f32 LE).

    The full checkpoint is 2.3 GB; tests check this cheaper digest to know the oracle is current.
    """
    h = hashlib.sha256()
    for name, arr in synth.tensors(config, seed=SEED, include=lambda n: not n.startswith("language_model.")):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arr, "<f4").tobytes())
    return h.hexdigest()


def full_oracle(workdir: Path) -> None:
    model = load_model(checkpoint(workdir, "full"))
    pixels = torch.from_numpy(synth.synth_pixels(1024, 1, PIXEL_SEED))
    out = model.model.get_image_features(pixels)
    feats = out.pooler_output[0].float()  # [256, 1024]
    tower = out.last_hidden_state[0].float()  # [256, 64, 64]
    write("full_vision", {
        "rows": np.asarray(FULL_ROWS, np.int64),
        "feature_rows": feats[list(FULL_ROWS)].numpy(),
        "row_mean": feats.mean(-1).numpy(),
        "row_std": feats.std(-1).numpy(),
        "col_mean": feats.mean(0).numpy(),
        "tower_corner": tower[:, :4, :4].numpy(),  # [256 channels, 4, 4]
        "tower_channel_mean": tower.mean((1, 2)).numpy(),
        "feature_stats": np.asarray([feats.mean(), feats.std(), feats.abs().max()], np.float32),
    }, {
        "config": "full",
        "pixels": f"gotocr_fast.synth.synth_pixels(1024, n_views=1, seed={PIXEL_SEED})",
        "feature_rows": "projector output [256 tokens, 1024] at token rows 'rows'",
        "row_mean/row_std": "per-token mean/std (ddof=1, torch default) over the 1024 dims",
        "col_mean": "per-dim mean over the 256 tokens",
        "tower_corner": "neck output [256 ch, 64, 64] at [:, :4, :4]",
        "feature_stats": "mean, std (ddof=1), max |x| of the projector output",
        "vision_weights_sha256": vision_weights_sha256("full"),
        "vision_weights_sha256_recipe": "sha256 over (name utf-8, f32 LE bytes) of synth.tensors('full', 0) "
                                        "whose name does not start with 'language_model.'",
    })


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*",
                        default=["images", "vision", "text", "mm", "decoding", "sampling", "ngram", "full"],
                        choices=["images", "vision", "text", "mm", "decoding", "sampling", "ngram", "full"])
    parser.add_argument("--configs", nargs="*", default=["tiny", "tiny-alt"])
    args = parser.parse_args()
    torch.manual_seed(0)
    if "images" in args.only:
        make_images()
    enc = qwen_encoding()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if {"vision", "text", "mm", "decoding"} & set(args.only):
            for config in args.configs:
                model = load_model(checkpoint(tmp, config))
                if "vision" in args.only:
                    vision_oracle(config, model)
                if "text" in args.only:
                    text_oracle(config, model, enc)
                if "mm" in args.only:
                    mm_oracle(config, model, enc)
                if "decoding" in args.only:
                    decoding_oracle(config, model, enc)
                del model
        if "sampling" in args.only:
            sampling_oracle()
        if "ngram" in args.only:
            ngram_oracle()
        if "full" in args.only:
            full_oracle(tmp)


if __name__ == "__main__":
    main()
