"""``gotocr batch --ray``: Ray Data over a mixed folder on a local Ray cluster (tiny random model).

The expected outputs are those of the local ``gotocr batch`` (one engine in this process, no Ray)
on the same folder: the same files, the same JSON apart from timings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_helpers import png_bytes, write_pdf

pytest.importorskip("ray", reason="Ray is not installed: pip install '.[ray]'")

import gotocr_fast._llama  # noqa: E402,F401 - required: a broken build fails, never skips
import gotocr_fast._vision  # noqa: E402,F401

from gotocr_fast.ray import batch as ray_batch  # noqa: E402

COMMON = ["--max-tokens", "16", "--ctx", "1024", "--threads", "1", "--no-progress"]


def make_folder(root: Path, pdf_pages: int = 2) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(png_bytes((70, 50), (20, 40, 200)))
    (root / "sub" / "b.jpg").write_bytes(png_bytes((50, 70), (220, 30, 30), "JPEG"))
    write_pdf(root / "doc.pdf", pdf_pages)
    (root / "broken.png").write_bytes(png_bytes((30, 30), (1, 2, 3))[:40])  # truncated
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\nnot a PDF body")
    (root / "notes.txt").write_text("not an input")
    return root


def outputs(out: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(out.iterdir()) if p.name != ray_batch.RESULTS_JSONL}


def without_timings(text: str) -> dict:
    obj = json.loads(text)
    obj.pop("timings")
    return obj


def test_mixed_folder_same_outputs_as_local_batch(ray_cluster, tiny_model_dir, tmp_path, capsys):
    from gotocr_fast.engine.cli import batch_main

    folder = make_folder(tmp_path / "in")
    model = ["--model", str(tiny_model_dir)]
    assert batch_main([str(folder), "--out", str(tmp_path / "local"), *model, *COMMON, "--slots", "1"]) == 1
    code = ray_batch.main([str(folder), "--ray", ray_cluster, "--out", str(tmp_path / "ray"), *model, *COMMON,
                           "--slots", "2", "--concurrency", "2", "--batch-size", "2"])
    assert code == 1  # two inputs failed
    err = capsys.readouterr().err
    assert "broken.png" in err and "broken.pdf" in err

    local, ray = outputs(tmp_path / "local"), outputs(tmp_path / "ray")
    assert sorted(ray) == sorted(local) == sorted(
        f"{s}.{ext}" for s in ("a", "sub__b", "doc.p0001", "doc.p0002") for ext in ("json", "md"))
    for name in ray:
        if name.endswith(".json"):
            assert without_timings(ray[name]) == without_timings(local[name]), name
        else:
            assert ray[name] == local[name], name

    lines = [json.loads(line) for line in (tmp_path / "ray" / ray_batch.RESULTS_JSONL).read_text().splitlines()]
    done = {r["output"]: r for r in lines if "error" not in r}
    failed = {Path(r["input"]).name: r["error"] for r in lines if "error" in r}
    assert sorted(done) == ["a", "doc.p0001", "doc.p0002", "sub__b"]
    assert done["a"]["text"] == json.loads(ray["a.json"])["text"]
    assert sorted(failed) == ["broken.pdf", "broken.png"]
    assert "not a readable PDF" in failed["broken.pdf"] or "PDF" in failed["broken.pdf"]
    assert not list((tmp_path / "ray").glob("*tmp*"))


class CrashOnce(ray_batch.PageOcr):
    """Kills its own process in its first call of the whole run (a marker file says it happened).

    ``marker`` is set on the class before the run: the class travels to the workers by value."""

    marker = ""

    def __call__(self, batch):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().__call__(batch)
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def _job(folder: Path, out: Path, model: Path, **kw) -> ray_batch.BatchJob:
    args = ray_batch.build_parser().parse_args(
        [str(folder), "--out", str(out), "--model", str(model), *COMMON, "--slots", "1", "--batch-size", "1"])
    job = ray_batch.job_from_args(args)
    for k, v in kw.items():
        setattr(job, k, v)
    return job


def test_actor_killed_mid_run_is_retried_and_every_page_written_once(ray_cluster, tiny_model_dir, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
    folder = tmp_path / "in"
    folder.mkdir()
    write_pdf(folder / "doc.pdf", 5)
    (folder / "a.png").write_bytes(png_bytes((70, 50), (20, 40, 200)))
    CrashOnce.marker = str(tmp_path / "crashed")
    report = ray_batch.run_batch(_job(folder, tmp_path / "out", tiny_model_dir, ocr_class=CrashOnce))
    assert (tmp_path / "crashed").exists()  # an actor did die mid-run
    want = ["a"] + [f"doc.p{i:04d}" for i in range(1, 6)]
    assert sorted(report.written) == want  # each page exactly once, none lost
    assert report.failures == []
    for stem in want:
        assert json.loads((tmp_path / "out" / f"{stem}.json").read_text())["finish_reason"] in ("stop", "length")
    assert len((tmp_path / "out" / ray_batch.RESULTS_JSONL).read_text().splitlines()) == len(want)


def test_resume_after_an_interrupted_run(ray_cluster, tiny_model_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    n_pages = 12
    write_pdf(folder / "doc.pdf", n_pages)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gotocr_fast", "batch", "--ray", ray_cluster, str(folder), "--out", str(out),
           "--model", str(tiny_model_dir), "--max-tokens", "48", "--ctx", "1024", "--threads", "1",
           "--slots", "1", "--batch-size", "1", "--no-progress"]
    log = open(tmp_path / "first-run.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("*.json")):
            time.sleep(0.02)
    finally:
        proc.kill()  # interrupted at its first written page
        proc.wait()
        log.close()
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.json")}
    assert 0 < len(first) < n_pages, (tmp_path / "first-run.log").read_text()[-3000:]

    report = ray_batch.run_batch(_job(folder, out, tiny_model_dir))
    assert report.skipped == len(first)
    want = {f"doc.p{i:04d}.json" for i in range(1, n_pages + 1)}
    assert {f"{s}.json" for s in report.written} == want - set(first)
    assert {p.name for p in out.glob("*.json")} == want
    # the pages of the first run were not written again
    assert {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name in first if (p := out / name)} == first
    assert len((out / ray_batch.RESULTS_JSONL).read_text().splitlines()) == n_pages
    assert not list(out.glob("*tmp*"))
