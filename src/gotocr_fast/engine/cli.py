"""``gotocr ocr`` and ``gotocr batch`` (wired in by ``gotocr_fast.cli``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from pathlib import Path

from .. import EngineConfig, InvalidRequest, OcrError, OcrOptions
from ..inputs import DEFAULT_PDF_DPI, IMAGE_SUFFIXES, ImageError, is_pdf, pdf_page_count, render_pdf_pages
from .defaults import LOOP_GUARD, REFERENCE_MAX_NEW_TOKENS, REFERENCE_NO_REPEAT_NGRAM_SIZE
from .options import COLORS, DEFAULT_N_CTX, DEFAULT_QUEUE, DEFAULT_SLOTS, TYPES, VISION_PRECISIONS

__all__ = ["ocr_main", "batch_main"]


def _box(text: str) -> list[float]:
    """``x1,y1,x2,y2`` → numbers (how many, and their values, OcrOptions checks)."""
    try:
        return [float(p) for p in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box wants x1,y1,x2,y2 in pixels; got {text!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=os.environ.get("GOTOCR_MODEL"),
                   help="model folder (got-text-*.gguf + got-vision-*.gguf) or the text GGUF; env GOTOCR_MODEL "
                        "(default: the bundled demo model, a small model trained on printed text lines)")
    p.add_argument("--vision", default=None, help="vision GGUF (when --model is a text GGUF elsewhere)")
    p.add_argument("--type", choices=TYPES, default=None, help=f"output mode (default {OcrOptions.type})")
    p.add_argument("--color", choices=COLORS, default=None, help="colour-guided OCR")
    p.add_argument("--crop", action="store_true", help="multi-crop tiling for large pages")
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"tokens to generate at most (default {REFERENCE_MAX_NEW_TOKENS}, as GOT's scripts, "
                        "or what the context leaves after the prompt)")
    p.add_argument("--temperature", type=float, default=None, help=f"default {OcrOptions.temperature} (greedy)")
    p.add_argument("--top-p", type=float, default=None, help=f"default {OcrOptions.top_p}")
    p.add_argument("--repetition-penalty", type=float, default=None, help=f"default {OcrOptions.repetition_penalty}")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-repeat-ngram", type=int, default=None, metavar="N",
                   help="ban repeating any N-gram of the prompt and output (transformers' no_repeat_ngram_size; "
                        f"default {REFERENCE_NO_REPEAT_NGRAM_SIZE} for one view, off with --crop / --multi-page, "
                        "as GOT's scripts; 0 = off)")
    p.add_argument("--loop-guard", type=int, default=None, metavar="TOKENS",
                   help=f"stop a loop (the text ending in >= {LOOP_GUARD.min_repeats} repeats of a cycle of <= "
                        f"{LOOP_GUARD.max_period} tokens) once it spans TOKENS tokens: finish_reason 'repetition', "
                        f"the text keeps one cycle (default {LOOP_GUARD.min_span}; 0 = off)")
    p.add_argument("--dpi", type=float, default=DEFAULT_PDF_DPI,
                   help=f"PDF render resolution (default {DEFAULT_PDF_DPI:g}; lowered for pages over the pixel limit)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--vision-precision", choices=VISION_PRECISIONS, default=EngineConfig.vision_precision,
                   help="vision encoder arithmetic: bf16 where the CPU multiplies bf16 natively (AMX, AVX512_BF16; "
                        "else f32), about 3.5x faster a view on AMX")
    p.add_argument("--slots", type=int, default=None,
                   help=f"concurrent sequences in llama.cpp (default {DEFAULT_SLOTS}; `ocr`: no more than its "
                        "inputs × boxes need). The slots share one KV cache of --ctx tokens")
    p.add_argument("--ctx", type=int, default=DEFAULT_N_CTX, help=f"context tokens per request (default {DEFAULT_N_CTX})")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's and gotocr_fast's log lines")


def _engine(args, sequences: int | None = None):
    """The engine for a command; ``sequences``: how many can ever run at once (None: unbounded)."""
    if not args.model:
        from ..demo_model import NOTICE, has_bundle, model_dir

        if not has_bundle():
            raise InvalidRequest("no model: pass --model DIR (a folder made by `gotocr convert`) or set "
                                 "GOTOCR_MODEL; this installation has no bundled demo model")
        print(f"note: {NOTICE}", file=sys.stderr)
        args.model = str(model_dir())
    from .. import OcrEngine

    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    # the slots share one KV pool of --ctx cells (docs/MEMORY.md); one image needs one slot,
    # not the server-sized default
    slots = args.slots if args.slots is not None else min(DEFAULT_SLOTS, sequences or DEFAULT_SLOTS)
    try:
        config = EngineConfig(model=args.model, vision=args.vision, n_threads=args.threads, n_ctx=args.ctx,
                              vision_precision=args.vision_precision, max_slots=slots, max_queue=max(DEFAULT_QUEUE, slots * 4), verbose=args.verbose)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None
    return OcrEngine(config)


def _options(args, box=None) -> OcrOptions:
    """The request options the flags give (an unset flag leaves the option's default)."""
    return OcrOptions.of(type=args.type, color=args.color, crop=args.crop, max_tokens=args.max_tokens,
                         temperature=args.temperature, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                         seed=args.seed, no_repeat_ngram_size=args.no_repeat_ngram, loop_guard=args.loop_guard,
                         box=box or None)


def _expand(path: str, dpi: int):
    """``(label, image_or_path)`` for one CLI input: an image, or every page of a PDF."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if is_pdf(p):
        for i, img in enumerate(render_pdf_pages(p, dpi=dpi)):
            yield f"{path}#page={i + 1}", img
    else:
        yield path, p


def _result_json(label: str, r) -> dict:
    return {
        "input": label, "text": r.text, "finish_reason": r.finish_reason,
        "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                  "total_tokens": r.total_tokens},
        "timings": {"preprocess_ms": round(r.timings.preprocess_ms, 3), "encode_ms": round(r.timings.encode_ms, 3),
                    "prefill_ms": round(r.timings.prefill_ms, 3), "decode_ms": round(r.timings.decode_ms, 3)},
    }


def ocr_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gotocr ocr", description="OCR images or PDF pages with a converted GOT model.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_PDF")
    _common(p)
    p.add_argument("--box", type=_box, action="append", default=None,
                   help="region x1,y1,x2,y2 in pixels (repeat for several boxes)")
    p.add_argument("--multi-page", action="store_true", help="all inputs (and PDF pages) as ONE multi-page prompt")
    p.add_argument("--json", action="store_true", help="print JSON (one object per input, or a list)")
    p.add_argument("--render", metavar="FILE.html", default=None,
                   help="also write the answers as a standalone HTML page (math typeset, tables drawn; "
                        "needs --type format)")
    args = p.parse_args(argv)
    if args.render and args.type != "format":  # rendering shows markup: only format output has it
        raise InvalidRequest("--render needs --type format (plain text has no markup to render)")
    if args.render and not Path(args.render).absolute().parent.is_dir():
        raise InvalidRequest(f"--render: no such folder for {args.render!r}")
    items = [it for path in args.inputs for it in _expand(path, args.dpi)]
    opts = _options(args, args.box)
    sequences = (1 if args.multi_page else len(items)) * max(1, len(args.box or ()))
    with _engine(args, sequences) as engine:
        if args.multi_page:
            r = engine.ocr([img for _, img in items], opts)
            out = [("+".join(lbl for lbl, _ in items), r)]
        elif len(items) == 1 and not args.json:
            stream = engine.ocr_stream(items[0][1], opts)
            pieces = []
            with stream:
                for delta in stream:
                    pieces.append(delta)
                    sys.stdout.write(delta)
                    sys.stdout.flush()
            sys.stdout.write("\n")
            if args.render:
                _write_render(args.render, [(items[0][0], "".join(pieces))])
            return 0
        else:
            reqs = [(lbl, engine.submit(img, opts, stream=False)) for lbl, img in items]
            out = [(lbl, req.result()) for lbl, req in reqs]
        if args.json:
            objs = [_result_json(lbl, r) for lbl, r in out]
            print(json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False, indent=2))
        else:
            for lbl, r in out:
                if len(out) > 1:
                    print(f"==> {lbl} <==")
                print(r.text)
        if args.render:
            _write_render(args.render, [(lbl, r.text) for lbl, r in out])
    return 0


def _write_render(path: str, answers: list[tuple[str, str]]) -> None:
    from ..web.render import write_document

    write_document(path, answers)


def _batch_items(src: Path, dpi: int):
    """``(output stem, loader)`` for every page under ``src`` (a folder of images/PDFs, or a PDF)."""
    files = [src] if src.is_file() else sorted(f for f in src.rglob("*") if f.is_file())
    for f in files:
        rel = f.relative_to(src) if src.is_dir() else Path(f.name)
        stem = str(rel.with_suffix("")).replace(os.sep, "__")
        # by content, or by name: a broken file called .pdf is reported, not skipped
        if is_pdf(f) or f.suffix.lower() == ".pdf":
            yield stem, f, "pdf"
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            yield stem, f, "image"


def batch_main(argv: list[str]) -> int:
    if any(a == "--ray" or a.startswith("--ray=") for a in argv):
        # a Ray Data pipeline over a cluster (the optional `ray` extra): gotocr_fast/ray/batch.py
        from ..ray.batch import main as ray_batch_main

        return ray_batch_main(argv)
    p = argparse.ArgumentParser(prog="gotocr batch",
                                description="OCR every image / PDF page under a folder (or one PDF); "
                                            "one .md + .json per page, resumable.")
    p.add_argument("source", metavar="DIR_OR_PDF")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-resume", action="store_true", help="redo pages that already have output")
    p.add_argument("--no-progress", action="store_true")
    _common(p)
    args = p.parse_args(argv)
    src = Path(args.source)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    opts = _options(args)

    failures: list[tuple[str, str]] = []  # (file or page label, message)
    pages = _batch_pages(src, args.dpi, failures)
    todo = [pg for pg in pages if args.no_resume or not (out / f"{pg[0]}.json").is_file()]
    bar = None if args.no_progress else _progress_bar(len(todo))
    with _engine(args) as engine:
        done = _read_pages(engine, todo, opts, args.dpi, out, failures, bar)
    if bar is not None:
        bar.close()
    for label, msg in failures:
        # errors about a file usually name it already ("P: cannot decode image")
        print(f"error: {msg}" if msg.startswith(label + ":") else f"error: {label}: {msg}", file=sys.stderr)
    print(f"{done} page(s) done, {len(pages) - len(todo)} skipped (already done), {len(failures)} failed; "
          f"output in {out}", file=sys.stderr)
    return 1 if failures else 0


def _batch_pages(src: Path, dpi: int, failures: list[tuple[str, str]]) -> list[tuple[str, str, object]]:
    """The work list, one (output stem, label, loader) per page; a PDF that cannot be opened is
    one failure. The loader is an image path, or (pdf, page index) to render when its turn comes."""
    pages: list[tuple[str, str, object]] = []
    for stem, f, kind in _batch_items(src, dpi):
        if kind == "image":
            pages.append((stem, str(f), f))
            continue
        try:
            n = pdf_page_count(f, max_pages=None)  # pages are rendered one at a time: no count limit
        except (OcrError, ImageError, OSError) as e:
            failures.append((str(f), str(e)))
            continue
        for i in range(n):
            pages.append((f"{stem}.p{i + 1:04d}", f"{f}#page={i + 1}", (f, i)))
    return pages


def _progress_bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="page", file=sys.stderr, desc="gotocr batch")


def _write_page(out: Path, stem: str, label: str, r) -> None:
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(r.text + "\n", encoding="utf-8")
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_result_json(label, r), ensure_ascii=False, indent=2), encoding="utf-8")
    tmp.replace(js)  # the .json is written last: its presence marks the page done (resume)


def _read_pages(engine, todo, opts, dpi: int, out: Path, failures: list[tuple[str, str]], bar) -> int:
    """Submit the pages with at most two per slot in flight (pages are rendered just in time),
    write each result as it completes, in order; returns how many were written."""
    window = max(2, engine.max_slots * 2)
    inflight: deque = deque()
    done = 0

    def drain_one() -> None:
        nonlocal done
        stem, label, req = inflight.popleft()
        try:
            _write_page(out, stem, label, req.result())
            done += 1
        except OcrError as e:
            failures.append((label, str(e)))
        if bar is not None:
            bar.update(1)

    for stem, label, loader in todo:
        while len(inflight) >= window:
            drain_one()
        try:
            page = render_pdf_pages(loader[0], dpi=dpi, pages=[loader[1]])[0] if isinstance(loader, tuple) else loader
            req = engine.submit(page, opts, stream=False)
        except (OcrError, ImageError, OSError) as e:
            failures.append((label, str(e)))
            if bar is not None:
                bar.update(1)
            continue
        inflight.append((stem, label, req))
    while inflight:
        drain_one()
    return done
