"""pytest wiring of the benchmark suites: fixtures (model cache, inputs) and what gets recorded.

Run (see bench/README.md)::

    pytest bench/ --benchmark-only --benchmark-json bench/results.json
    python bench/make_results.py

Settings come from environment variables, listed in ``harness.py``. Nothing here imports torch:
the transformers / onnxruntime baselines skip (reason printed) when those packages are absent.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # harness, baselines, make_results import as top-level modules
    sys.path.insert(0, str(BENCH_DIR))

from harness import SETTINGS  # noqa: E402

# Thread pools read these when their library loads: set before any suite imports one.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(SETTINGS.threads)

import pytest  # noqa: E402

from harness import BASELINE_HINT, PACKAGE_HINT, ModelPaths, cached_dir, make_page, need, source_hash  # noqa: E402
from make_results import machine_facts  # noqa: E402

# --------------------------------------------------------------------------------------------
# Run only when asked for: a plain `pytest` (or `pytest .`) must not start full-size benchmarks.


def _names_bench(arg: str) -> bool:
    path = Path(arg.split("::", 1)[0]).resolve()
    return path == BENCH_DIR or BENCH_DIR in path.parents


def _bench_named(config) -> bool:
    """Whether the command line names bench/ (or a file in it): only then do benchmarks run."""
    return any(_names_bench(a) for a in config.args)


_LOAD_AT_START = [round(x, 2) for x in os.getloadavg()]


def pytest_configure(config):
    # Print skip reasons (a missing baseline says why) without asking for -rs.
    chars = config.option.reportchars or ""
    if "s" not in chars and "a" not in chars.lower():
        config.option.reportchars = chars + "s"


ENGINE_SUITES = ("test_engine.py", "test_page_paired.py", "test_ray.py", "test_demo_accuracy.py")
"""Suites timing an ``OcrEngine``, run first and in this order (``test_demo_accuracy.py`` last: it
ends with transformers on the main thread). GNU libgomp serves both ggml's and PyTorch's OpenMP,
keeps a team of workers for every thread that has run a parallel region, and once the process
holds more workers than CPUs it parks them in the kernel at every barrier. The engine computes on
a thread of its own, so any earlier suite that ran ggml or torch on the main thread would leave a
second team behind and slow every engine suite after it (q4_k_m decode steps 50 ms instead of
30 ms on 2 cores)."""


def _suite_rank(item) -> int:
    name = Path(str(item.fspath)).name
    return ENGINE_SUITES.index(name) if name in ENGINE_SUITES else len(ENGINE_SUITES)


def pytest_collection_modifyitems(config, items):
    if _bench_named(config):
        items.sort(key=_suite_rank)  # stable: each suite keeps its own order
        return
    skip = pytest.mark.skip(reason="benchmarks run only when bench/ is named: pytest bench/ --benchmark-only")
    for item in items:
        if BENCH_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


_SKIPPED: list[dict] = []


def pytest_runtest_logreport(report):
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append({"nodeid": report.nodeid, "reason": reason.removeprefix("Skipped: ")})


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["gotocr"] = {
        "config": SETTINGS.config,
        "threads": SETTINGS.threads,
        "tokens": SETTINGS.tokens,
        "reuse_stale": SETTINGS.reuse_stale,
        "machine": machine_facts(SETTINGS.threads),
        "load_average": _LOAD_AT_START,  # 1 / 5 / 15-minute load when pytest started
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "versions": _versions(),
    }


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["gotocr_skipped"] = list(_SKIPPED)
    output_json["gotocr_idle_after_suite"] = list(_IDLE)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("gotocr-fast", "llama_cpp_python", "numpy", "pillow", "torch", "transformers",
                 "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------------------------
# Peak RSS: the kernel's high-water mark, reset at the start of every suite (module).

def _status_kib(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def _reset_peak_rss() -> None:
    try:  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then the peak is the process' lifetime peak


def _peak_rss_mib() -> float:
    kib = _status_kib("VmHWM")
    if not kib:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def _release_memory() -> None:
    gc.collect()
    try:
        from gotocr_fast.engine.resident import trim_heap
    except ImportError:  # baseline-only runs work without our package
        return
    trim_heap()  # hand freed heap pages back to the OS so the next suite starts low


def _thread_names() -> list[str]:
    names = []
    for comm in Path("/proc/self/task").glob("*/comm"):
        try:
            names.append(comm.read_text().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return sorted(names)


def _idle_cpu(seconds: float = 1.0) -> float:
    """CPU seconds per second this process burns while the main thread sleeps.

    After a suite has freed its models nothing of ours should run; threads left spinning (a
    pool not shut down, a model not freed) would slow every later suite, the server's above all.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    return (time.process_time() - c0) / (time.perf_counter() - t0)


_IDLE: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def _suite_memory(request):
    """Autouse + module scope: set up before, torn down after, the suite's own model fixtures."""
    _release_memory()
    _reset_peak_rss()
    yield
    _release_memory()
    if not _bench_named(request.config):
        return  # benchmarks were skipped: nothing ran
    busy = _idle_cpu()
    threads = _thread_names()
    _IDLE.append({"suite": request.node.name, "idle_cpu": round(busy, 3), "threads": threads})
    if busy > 0.05:
        print(f"\n[bench] WARNING: after {request.node.name} the process still uses {busy:.0%} CPU "
              f"while idle; threads: {', '.join(threads)}")


@pytest.fixture(autouse=True)
def _record_rss(request):
    start = _status_kib("VmRSS") / 1024
    yield
    bench = (getattr(request.node, "funcargs", None) or {}).get("benchmark")
    if bench is not None:
        bench.extra_info.setdefault("rss_start_mib", round(start, 1))
        bench.extra_info["rss_peak_mib"] = round(_peak_rss_mib(), 1)  # suite peak so far


# --------------------------------------------------------------------------------------------
# Fixtures: settings, the model, inputs

@pytest.fixture(scope="session")
def settings():
    return SETTINGS


@pytest.fixture(scope="session")
def got_config():
    need("gotocr_fast.synth", hint=PACKAGE_HINT)
    from gotocr_fast import synth

    return synth.CONFIGS[SETTINGS.config]


@pytest.fixture(scope="session")
def checkpoint_dir(got_config) -> Path:
    """The seed-0 random-weight checkpoint, transformers layout, written once into the cache."""
    from gotocr_fast import synth

    prefix = f"{SETTINGS.config}-"

    def build(tmp: Path) -> None:
        print(f"\n[bench] writing the {SETTINGS.config} random-weight checkpoint into {tmp} ...")
        synth.write_checkpoint(tmp / "hf", SETTINGS.config, "hf", seed=0)

    root = cached_dir(prefix + source_hash(Path(synth.__file__)), build, prune_prefix=prefix)
    return root / "hf"


@pytest.fixture(scope="session")
def model_files(checkpoint_dir):
    """``model_files(outtype)`` → :class:`harness.ModelPaths` of the converted model (cached)."""
    memo: dict[str, ModelPaths] = {}

    def get(outtype: str) -> ModelPaths:
        if outtype not in memo:
            need("gotocr_fast.convert", hint=PACKAGE_HINT)
            import gotocr_fast.convert as convert

            try:
                convert_checkpoint = convert.convert_checkpoint
            except Exception as exc:
                pytest.skip(f"gotocr_fast.convert.convert_checkpoint not available yet: {exc}")
            prefix = f"gguf-{outtype}-"
            key = f"{checkpoint_dir.parent.name}/{prefix}{source_hash(Path(convert.__file__).parent)}"

            def build(tmp: Path) -> None:
                print(f"\n[bench] converting the checkpoint to {outtype} GGUFs in {tmp} ...")
                convert_checkpoint(checkpoint_dir, tmp, outtype=outtype, progress=False)

            try:
                memo[outtype] = ModelPaths.in_folder(cached_dir(key, build, prune_prefix=prefix))
            except convert.ConvertError as exc:  # e.g. q8_0 without llama.cpp's quantizer
                pytest.skip(f"no {outtype} model: the converter says: {exc}")
        return memo[outtype]

    return get


@pytest.fixture(scope="session")
def onnx_vision_path(checkpoint_dir, got_config) -> Path:
    """ONNX export of transformers' vision tower + projector (f32), made once per checkpoint."""
    need("torch", "transformers", "onnx", hint=BASELINE_HINT)
    from baselines import onnx_vision, torch_got

    import torch

    key = f"{checkpoint_dir.parent.name}/onnx-{torch.__version__}-opset{onnx_vision.OPSET}"

    def build(tmp: Path) -> None:
        print(f"\n[bench] exporting the vision encoder to ONNX in {tmp} ...")
        model = torch_got.load_model(checkpoint_dir, "f32", SETTINGS.threads)
        onnx_vision.export(model, got_config.vision.image_size, tmp / "vision.onnx")

    return cached_dir(key, build) / "vision.onnx"


@pytest.fixture(scope="session")
def pages():
    """``pages(n)`` → the first n distinct page images (made once)."""
    need("PIL")
    cache: list = []

    def get(n: int):
        while len(cache) < n:
            cache.append(make_page(len(cache)))
        return cache[:n]

    return get


@pytest.fixture(scope="session")
def prompt_ids(checkpoint_dir, got_config) -> list[int]:
    """Token ids of GOT's plain-OCR prompt for one view, by the checkpoint's tokenizer.json.

    The baselines feed these ids; our engine builds the same prompt itself.
    """
    need("tokenizers", hint="pip install tokenizers")
    from tokenizers import Tokenizer

    from gotocr_fast.prompt import OcrMode, build_prompt, build_query
    from gotocr_fast.tokens import IMG_PAD_ID

    text = build_prompt(build_query(OcrMode()), got_config.tokens_per_view)
    ids = Tokenizer.from_file(str(checkpoint_dir / "tokenizer.json")).encode(
        text, add_special_tokens=False).ids
    assert ids.count(IMG_PAD_ID) == got_config.tokens_per_view, "the tokenizer split <imgpad>"
    return ids
