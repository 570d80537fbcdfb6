"""``gotocr batch --ray [ADDRESS] SOURCES... --out DIR``: OCR a document collection with Ray Data.

The pipeline (Ray Data):

1. the driver lists the inputs (folders, files, globs; images and PDFs) and what ``--out``
   already holds: an image whose page is done is left out here;
2. ``map`` (:func:`count_pdf_pages`, one Ray task per PDF) opens each PDF on the cluster and
   counts its pages; the driver turns the files into one row per page still to do
   (:func:`page_rows`: a reference — path and page number — not pixels); a PDF that cannot be
   opened becomes one failed row;
3. those rows go into blocks of one batch each, so a long PDF spreads over every actor and each
   batch's results leave its actor as soon as they exist;
4. ``map_batches`` (:class:`PageOcr`, an actor pool of ``--concurrency`` engines, ``--actor-cpus``
   each) reads or renders a batch of pages and OCRs them, all submitted to the engine at once
   (its slots decode them together); a page that fails becomes a failed row, never an exception;
5. the driver consumes the results as they come and writes each page's ``<stem>.md`` and
   ``<stem>.json`` (the same names and JSON as ``gotocr batch``; temp file + rename, the ``.json``
   last: its presence marks the page done), then ``results.jsonl`` with every page of the run's
   inputs, done earlier or now, and every failure.

Ray Data restarts an actor that dies and retries its batch; the failed attempt's output never
reaches the driver, which is the only writer: every page is written once, and an interrupted run
resumes where it stopped. Outputs need no shared filesystem (only the driver writes them); inputs
and the model must be readable at the same paths on every node.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster import connect, require_ray, split_ray_option

__all__ = ["BatchJob", "BatchReport", "PageOcr", "count_pdf_pages", "page_rows", "find_inputs", "run_batch", "main",
           "RESULTS_JSONL"]

RESULTS_JSONL = "results.jsonl"
_TMP_SUFFIX = ".gotocr-tmp"


# ---- inputs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputFile:
    path: str
    """Absolute: what the workers open."""
    label: str
    """The path as the command line named it: what outputs and messages call the input."""
    stem: str
    """Output name: the path under its folder argument with ``/`` → ``__`` (as ``gotocr batch``)."""
    kind: str  # "image" | "pdf"


def _kind(path: Path) -> str | None:
    from gotocr_fast.inputs import IMAGE_SUFFIXES
    from gotocr_fast.inputs import is_pdf

    # by content, or by name: a broken file called .pdf is reported, not skipped
    if path.suffix.lower() == ".pdf" or is_pdf(path):
        return "pdf"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    return None


def find_inputs(sources: Sequence[str]) -> list[InputFile]:
    """Every image / PDF of the sources, in order; a folder is walked recursively.

    Raises FileNotFoundError for a source that names nothing, ValueError when two inputs would
    write the same output name."""
    found: list[InputFile] = []
    for source in sources:
        p = Path(source)
        if p.is_dir():
            pairs = [(f, f.relative_to(p)) for f in sorted(p.rglob("*")) if f.is_file()]
        elif p.is_file():
            pairs = [(p, Path(p.name))]
        elif glob.has_magic(source):
            matches = sorted(Path(m) for m in glob.glob(source, recursive=True))
            pairs = [(m, Path(m.name)) for m in matches if m.is_file()]
            if not pairs:
                raise FileNotFoundError(f"{source}: no file matches")
        else:
            raise FileNotFoundError(f"{source}: no such file or folder")
        for f, rel in pairs:
            kind = _kind(f)
            if kind is not None:
                stem = str(rel.with_suffix("")).replace(os.sep, "__")
                found.append(InputFile(str(f.resolve()), str(f), stem, kind))
    seen: dict[tuple[str, str], str] = {}  # a PDF's pages are <stem>.pNNNN: only equal kinds collide
    for item in found:
        key = (item.kind, item.stem)
        if key in seen and seen[key] != item.path:
            raise ValueError(f"{seen[key]} and {item.path} would both write {item.stem}*.json; "
                             "pass their common folder instead")
        seen[key] = item.path
    # the same file named twice (a folder and a glob inside it) is one input
    unique = {item.path: item for item in found}
    return list(unique.values())


def page_stem(stem: str, page: int) -> str:
    """A PDF page's output name (1-based ``page``), as ``gotocr batch`` names it."""
    return f"{stem}.p{page:04d}"


def _pdf_of(stem: str) -> str | None:
    """The PDF stem a page stem belongs to (``doc.p0003`` → ``doc``), or None."""
    base, sep, number = stem.rpartition(".p")
    return base if sep and number.isdigit() else None


def done_stems(out: Path) -> set[str]:
    return {p.name[: -len(".json")] for p in out.glob("*.json") if p.is_file()}


# ---- Ray Data stages ---------------------------------------------------------------------------

def _row(stem: str, label: str, path: str = "", page: int = -1, error: str = "") -> dict[str, Any]:
    return {"stem": stem, "label": label, "path": path, "page": page, "error": error}


def count_pdf_pages(row: dict[str, Any]) -> dict[str, Any]:
    """``map`` stage over PDFs: ``pages`` (0 and an ``error`` when the PDF cannot be opened)."""
    from gotocr_fast.inputs import pdf_page_count
    from gotocr_fast.preprocess import ImageError

    try:
        return {"path": row["path"], "pages": pdf_page_count(row["path"], max_pages=None, name=row["label"]),
                "error": ""}
    except (ImageError, OSError) as exc:
        return {"path": row["path"], "pages": 0, "error": str(exc)}


def page_rows(todo: list[InputFile], counts: dict[str, tuple[int, str]], done_pdf_pages: frozenset[str]) -> list[dict]:
    """One row per page still to do, in input order: references (``path``, 0-based ``page``; -1
    for an image), not pixels; a PDF that cannot be opened is one row with its ``error``."""
    rows: list[dict] = []
    for f in todo:
        if f.kind == "image":
            rows.append(_row(f.stem, f.label, f.path))
            continue
        n, error = counts[f.path]
        if error:
            rows.append(_row(f.stem, f.label, error=error))
            continue
        rows.extend(_row(page_stem(f.stem, i + 1), f"{f.label}#page={i + 1}", f.path, i)
                    for i in range(n) if page_stem(f.stem, i + 1) not in done_pdf_pages)
    return rows


class PageOcr:
    """``map_batches`` stage: an ``OcrEngine`` per actor; a batch of pages → their results.

    Each page is read (an image file's bytes) or rendered (a PDF page, at ``dpi`` under
    ``max_pixels``) here, then all pages of the batch are submitted at once. Output columns:
    ``stem``, ``label``, ``result`` (the page's JSON text, as ``gotocr batch`` writes it; empty on
    failure), ``text`` (the page's text), ``error`` (empty on success)."""

    def __init__(self, engine_args: dict[str, Any], options: dict[str, Any], dpi: float,
                 max_pixels: int | None) -> None:
        from gotocr_fast.engine import OcrEngine

        self.engine = OcrEngine(**engine_args)
        self.options = options
        self.dpi = dpi
        self.max_pixels = max_pixels

    def load(self, path: str, page: int, label: str) -> Any:
        if page < 0:
            with open(path, "rb") as f:
                return f.read()
        from gotocr_fast.inputs import render_pdf_pages

        name = label.rsplit("#page=", 1)[0]
        return render_pdf_pages(path, dpi=self.dpi, max_pixels=self.max_pixels, pages=[page], name=name)[0]

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from gotocr_fast.engine.cli import _result_json

        stems, labels = [str(x) for x in batch["stem"]], [str(x) for x in batch["label"]]
        errors = [str(e) for e in batch["error"]]
        pending: dict[int, Any] = {}
        for i, (path, page) in enumerate(zip(batch["path"], batch["page"])):
            if errors[i]:
                continue
            try:
                pending[i] = self.engine.submit(self.load(str(path), int(page), labels[i]), stream=False,
                                                **self.options)
            except Exception as exc:  # noqa: BLE001 - recorded as the page's failure
                errors[i] = _describe(exc)
        results, texts = [""] * len(stems), [""] * len(stems)
        for i, request in pending.items():
            try:
                r = request.result()
            except Exception as exc:  # noqa: BLE001 - recorded as the page's failure
                errors[i] = _describe(exc)
                continue
            results[i] = json.dumps(_result_json(labels[i], r), ensure_ascii=False, indent=2)
            texts[i] = r.text
        return {"stem": stems, "label": labels, "result": results, "text": texts, "error": errors}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def _describe(exc: BaseException) -> str:
    from gotocr_fast.engine.errors import OcrError
    from gotocr_fast.preprocess import ImageError

    # the engine's and the image loader's messages are written for users; anything else is named
    return str(exc) if isinstance(exc, (OcrError, ImageError)) else f"{type(exc).__name__}: {exc}"


# ---- the job -----------------------------------------------------------------------------------

def _default_max_pixels() -> int:
    from gotocr_fast.preprocess import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS


@dataclass
class BatchJob:
    sources: list[str]
    out: Path
    engine_args: dict[str, Any]
    """``OcrEngine`` keyword arguments (``model_dir_or_text_gguf``, ``n_threads``, ...)."""
    options: dict[str, Any]
    """OCR options of every page (``type``, ``max_tokens``, ...)."""
    concurrency: int | tuple[int, int] = 1
    """Engine actors: a number, or (min, max) for Ray Data to scale between."""
    actor_cpus: float = 1.0
    batch_size: int = 4
    dpi: float = 200.0
    max_pixels: int | None = field(default_factory=_default_max_pixels)
    """Pixel cap of a rendered PDF page (the engine caps images itself); None: no cap."""
    resume: bool = True
    progress: bool = True
    ocr_class: type = PageOcr
    """The ``map_batches`` callable class (subclass :class:`PageOcr` to post-process pages)."""


@dataclass
class BatchReport:
    written: list[str] = field(default_factory=list)
    """Stems written by this run, in the order they finished."""
    skipped: int = 0
    """Pages already done before this run (resume)."""
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    """(stem, label, message) per page that failed."""
    seconds: float = 0.0


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _clear_stale_temp_files(out: Path) -> None:
    # left by a run killed between write and rename; the page was not marked done
    for tmp in out.glob("*" + _TMP_SUFFIX):
        tmp.unlink(missing_ok=True)


def _count_pages(todo: list[InputFile]) -> dict[str, tuple[int, str]]:
    """Page counts of the PDFs, read on the cluster (one task per PDF, in parallel)."""
    import ray.data

    pdfs = [{"path": f.path, "label": f.label} for f in todo if f.kind == "pdf"]
    if not pdfs:
        return {}
    ds = ray.data.from_items(pdfs, override_num_blocks=len(pdfs)).map(count_pdf_pages)
    return {row["path"]: (int(row["pages"]), str(row["error"])) for row in ds.iter_rows()}


def _dataset(job: BatchJob, rows: list[dict]) -> Any:
    import ray.data

    # Blocks of one batch: a long PDF spreads over every actor, and each batch's results reach
    # the driver (and disk) as soon as they exist (a task's output leaves it when it ends).
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // job.batch_size)))
    size = job.concurrency
    pool = ray.data.ActorPoolStrategy(size=size) if isinstance(size, int) else \
        ray.data.ActorPoolStrategy(min_size=size[0], max_size=size[1])
    return ds.map_batches(
        job.ocr_class,
        fn_constructor_kwargs={"engine_args": job.engine_args, "options": job.options, "dpi": job.dpi,
                               "max_pixels": job.max_pixels},
        batch_size=job.batch_size,
        compute=pool,
        num_cpus=job.actor_cpus,
        batch_format="numpy",
    )


def run_batch(job: BatchJob) -> BatchReport:
    """Run the job on the connected cluster (see :func:`gotocr_fast.ray.cluster.connect`)."""
    t0 = time.perf_counter()
    job.out.mkdir(parents=True, exist_ok=True)
    _clear_stale_temp_files(job.out)
    inputs = find_inputs(job.sources)
    done = done_stems(job.out) if job.resume else set()
    report = BatchReport()

    todo = [f for f in inputs if not (f.kind == "image" and f.stem in done)]
    report.skipped = len(inputs) - len(todo)
    pdf_stems = {f.stem for f in inputs if f.kind == "pdf"}
    done_pdf_pages = frozenset(s for s in done if _pdf_of(s) in pdf_stems)
    report.skipped += len(done_pdf_pages)

    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver's bar counts pages written
    rows = page_rows(todo, _count_pages(todo), done_pdf_pages)
    bar = None
    if job.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), unit="page", file=sys.stderr, desc="gotocr batch (ray)")
    if rows:
        for row in _dataset(job, rows).iter_rows():
            stem, label = str(row["stem"]), str(row["label"])
            if row["error"]:
                report.failures.append((stem, label, str(row["error"])))
            else:
                _atomic_write(job.out / f"{stem}.md", str(row["text"]) + "\n")
                _atomic_write(job.out / f"{stem}.json", str(row["result"]))  # last: marks the page done
                report.written.append(stem)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    _write_jsonl(job.out, inputs, done_stems(job.out), report.failures)
    report.seconds = time.perf_counter() - t0
    return report


def _write_jsonl(out: Path, inputs: Iterable[InputFile], done: set[str], failures: list[tuple[str, str, str]]) -> None:
    """``results.jsonl``: each done page of these inputs (its JSON + ``output``), then each failure."""
    lines: list[str] = []
    inputs = list(inputs)
    pdf_stems = {f.stem for f in inputs if f.kind == "pdf"}
    image_stems = {f.stem for f in inputs if f.kind == "image"}
    for stem in sorted(done):
        if stem in image_stems or _pdf_of(stem) in pdf_stems:
            obj = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
            lines.append(json.dumps({"output": stem, **obj}, ensure_ascii=False))
    for stem, label, message in failures:
        lines.append(json.dumps({"output": stem, "input": label, "error": message}, ensure_ascii=False))
    _atomic_write(out / RESULTS_JSONL, "".join(line + "\n" for line in lines))


# ---- command line ------------------------------------------------------------------------------

def _concurrency(text: str) -> int | tuple[int, int]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--concurrency wants N or MIN,MAX; got {text!r}") from None
    if len(parts) == 1 and parts[0] >= 1:
        return parts[0]
    if len(parts) == 2 and 1 <= parts[0] <= parts[1]:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"--concurrency wants N >= 1 or MIN,MAX with 1 <= MIN <= MAX; got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    from gotocr_fast.engine.cli import _common

    p = argparse.ArgumentParser(
        prog="gotocr batch --ray",
        description="OCR folders / files / globs of images and PDFs on a Ray cluster (Ray Data): one .md + "
                    ".json per page (as gotocr batch) and results.jsonl; resumable.")
    p.add_argument("sources", nargs="+", metavar="DIR_FILE_OR_GLOB")
    p.add_argument("--out", required=True, help="output folder (written by this process only)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="Ray cluster address (host:port, ray://host:port or auto); none: start a local cluster")
    p.add_argument("--concurrency", type=_concurrency, default=1,
                   help="engine actors: N, or MIN,MAX to let Ray Data scale (default 1)")
    p.add_argument("--actor-cpus", type=float, default=1.0,
                   help="CPUs each engine actor reserves; its threads default to this (default 1)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="pages per actor call, all decoded together (default: --slots)")
    p.add_argument("--no-resume", action="store_true", help="redo pages that already have output")
    p.add_argument("--no-progress", action="store_true")
    _common(p)
    return p


def job_from_args(args: argparse.Namespace) -> BatchJob:
    from gotocr_fast.engine.cli import DEFAULT_SLOTS, _options

    if not args.model:
        from gotocr_fast.engine.errors import InvalidRequest

        raise InvalidRequest("no model: pass --model DIR (a converted model folder) or set GOTOCR_MODEL")
    if args.actor_cpus <= 0:
        raise ValueError("--actor-cpus must be > 0")
    slots = args.slots or DEFAULT_SLOTS
    batch_size = args.batch_size or slots
    if batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    threads = args.threads or max(1, int(args.actor_cpus))
    engine_args = {"model_dir_or_text_gguf": os.path.abspath(args.model),
                   "vision": os.path.abspath(args.vision) if args.vision else None,
                   "n_threads": threads, "n_ctx": args.ctx, "max_slots": slots,
                   "max_queue": max(64, batch_size * 4)}
    return BatchJob(sources=list(args.sources), out=Path(args.out), engine_args=engine_args,
                    options=dataclasses.asdict(_options(args)),
                    concurrency=args.concurrency, actor_cpus=args.actor_cpus, batch_size=batch_size,
                    dpi=args.dpi, resume=not args.no_resume, progress=not args.no_progress)


def main(argv: Sequence[str]) -> int:
    require_ray()
    _, address, rest = split_ray_option(list(argv))
    args = build_parser().parse_args(rest)
    args.ray = address
    try:
        job = job_from_args(args)
        find_inputs(job.sources)  # a wrong path is reported before the cluster starts
    except ValueError as exc:
        from gotocr_fast.cli import CliError

        raise CliError(str(exc)) from None
    import ray

    owned = connect(args.ray or None)
    try:
        report = run_batch(job)
    finally:
        if owned:
            ray.shutdown()
    for stem, label, message in report.failures:
        print(f"error: {label}: {message}", file=sys.stderr)
    print(f"{len(report.written)} page(s) done, {report.skipped} skipped (already done), "
          f"{len(report.failures)} failed in {report.seconds:.1f} s; output in {job.out} "
          f"(all results: {job.out / RESULTS_JSONL})", file=sys.stderr)
    return 1 if report.failures else 0
