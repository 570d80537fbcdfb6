"""Turn a pytest-benchmark JSON file into ``bench/RESULTS.md``.

    python bench/make_results.py [--json bench/results.json] [--out bench/RESULTS.md]

Every number in RESULTS.md comes from the JSON of one run: the speedups are ratios of times
measured in that run, the machine facts are what ``bench/conftest.py`` recorded on the machine
that ran it. Nothing here is typed in by hand.

Each benchmark carries ``extra_info`` written by the suites (see ``bench/conftest.py``):

- ``stage``: what was timed (``vision_view``, ``prefill``, ``decode``, ``page``, ...);
- ``impl``: ``ours`` or a baseline (``transformers``, ``onnxruntime``, ``llama.cpp``);
- ``dtype``: the weight type (``f32``, ``f16``, ``bf16``, ``q8_0``);
- ``units`` / ``unit``: how much work one timed round does (views, tokens, pages, requests);
- ``flops``: floating-point operations in one round (vision benchmarks);
- ``rss_peak_mib`` / ``rss_start_mib``: the process' peak / starting resident set in that test.

A speedup is (their time per unit) ÷ (our time per unit) = our throughput ÷ theirs, so > 1 means
we are faster. Times per unit use the minimum over rounds by default (``--stat median`` for the
median): the machines these run on are often shared, and the minimum is the statistic least
moved by other processes taking the cores for a while.

This module also holds the CPU facts and the peak-FLOP estimate, so the numbers can be
re-derived without pytest; ``bench/conftest.py`` imports them to record the machine at run time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from gotocr_fast.cpus import cpu_info

HERE = Path(__file__).resolve().parent

# Order of stages in the report, with a short description of what one unit is.
STAGES: dict[str, str] = {
    "preprocess_1view": "preprocessing, one 1024² view from a decoded page (per page)",
    "preprocess_crop": "preprocessing, crop mode: up to 6 tiles + thumbnail (per page)",
    "vision_view": "vision encoder + projector (per 1024² view)",
    "prefill": "LM prefill of the one-view GOT prompt incl. its image embeddings (per prompt)",
    "decode": "LM greedy decode (per generated token)",
    "page": "one page end to end: image → preprocess → encode → prefill → decode (per page)",
}
BASELINES = ("transformers", "onnxruntime", "llama.cpp")
# llama.cpp runs the very GGUF we run: compare like with like (f16 with f16, q8_0 with q8_0);
# the other baselines are compared with every variant of ours (what you would switch from).
SAME_DTYPE_ONLY = {"llama.cpp"}
DTYPE_ORDER = {"f32": 0, "f16": 1, "bf16": 2, "q8_0": 3}


# --------------------------------------------------------------------------------------------
# Machine facts and the peak-FLOP estimate
# --------------------------------------------------------------------------------------------

def physical_cores() -> int:
    """Physical cores visible to us (distinct (physical id, core id) pairs), else os.cpu_count()."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return os.cpu_count() or 1
    cores = set()
    for block in text.strip().split("\n\n"):
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in block.splitlines())
        )
        cores.add((fields.get("physical id", "0"), fields.get("core id", fields.get("processor"))))
    return max(1, len(cores))


def simd_class(flags: set[str]) -> str:
    """The widest float SIMD the CPU reports: ``AVX-512``, ``AVX2``, ``AVX`` or ``SSE``."""
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    if "avx" in flags:
        return "AVX"
    return "SSE"


def fp32_flops_per_cycle(simd: str, has_fma: bool, vendor: str, family: int) -> int:
    """Peak fp32 FLOPs per cycle per core, assuming two vector FMA pipes.

    2 FMA pipes × lanes × 2 (multiply + add) — true for Intel since Haswell and AMD since Zen 2.
    AVX-512 counts 16 lanes, except on AMD Zen 4 (family 0x19 with AVX-512) which executes
    512-bit ops as two 256-bit halves, so it peaks like AVX2. Without FMA a core issues one
    add and one multiply per cycle per pipe.
    """
    lanes = {"AVX-512": 16, "AVX2": 8, "AVX": 8, "SSE": 4}[simd]
    if simd == "AVX-512" and vendor == "AuthenticAMD" and family == 25:
        lanes = 8
    return 2 * lanes * 2 if has_fma else 2 * lanes


def machine_facts(threads: int) -> dict:
    """CPU model, SIMD class, clock, and the estimated fp32 peak for ``threads`` threads."""
    info = cpu_info()
    flags = set(info.get("flags", "").split())
    simd = simd_class(flags)
    has_fma = "fma" in flags
    vendor = info.get("vendor_id", "")
    family = int(info.get("cpu family", "0") or 0)
    ghz_source = "GOTOCR_BENCH_CPU_GHZ"
    ghz = float(os.environ.get("GOTOCR_BENCH_CPU_GHZ", "0") or 0)
    if not ghz:
        try:
            khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
            ghz, ghz_source = int(khz) / 1e6, "cpufreq cpuinfo_max_freq"
        except (OSError, ValueError):
            ghz = float(info.get("cpu MHz", "0") or 0) / 1000
            ghz_source = "/proc/cpuinfo cpu MHz"
    cores = physical_cores()
    cores_used = max(1, min(threads, cores))
    per_cycle = fp32_flops_per_cycle(simd, has_fma, vendor, family)
    return {
        "cpu_model": info.get("model name", platform.processor() or "unknown"),
        "vendor": vendor,
        "cpu_family": family,
        "simd": simd,
        "fma": has_fma,
        "bf16_native": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "physical_cores": cores,
        "threads": threads,
        "cores_used": cores_used,
        "ghz": round(ghz, 3),
        "ghz_source": ghz_source,
        "fp32_flops_per_cycle": per_cycle,
        "peak_gflops": round(cores_used * ghz * per_cycle, 1),
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _fmt_flops(flops: float) -> str:
    return f"{flops / 1e12:.3f} TFLOP" if flops >= 1e11 else f"{flops / 1e9:.3f} GFLOP"


def _variant(extra: dict) -> str:
    dtype = extra.get("dtype")
    return f"{extra['impl']} {dtype}" if dtype else extra["impl"]


def _sort_key(row: dict):
    extra = row["extra_info"]
    impl_rank = 0 if extra["impl"] == "ours" else 1 + BASELINES.index(extra["impl"]) if extra[
        "impl"] in BASELINES else 9
    return (impl_rank, DTYPE_ORDER.get(extra.get("dtype", ""), 9), row["name"])


def per_unit(row: dict, stat: str) -> float:
    return row["stats"][stat] / max(1, row["extra_info"].get("units", 1))


def speedup_rows(rows: list[dict], stat: str) -> list[tuple[str, str, float, float, float]]:
    """(ours, theirs, our time/unit, their time/unit, speedup) for each ours × baseline pair."""
    ours = [r for r in rows if r["extra_info"]["impl"] == "ours"]
    theirs = [r for r in rows if r["extra_info"]["impl"] != "ours"]
    pairs = []
    for o in sorted(ours, key=_sort_key):
        for t in sorted(theirs, key=_sort_key):
            te = t["extra_info"]
            if te["impl"] in SAME_DTYPE_ONLY and te.get("dtype") != o["extra_info"].get("dtype"):
                continue
            if te.get("_run", 0) != o["extra_info"].get("_run", 0):
                continue  # ratios only between measurements of the same run
            ot, tt = per_unit(o, stat), per_unit(t, stat)
            pairs.append((_variant(o["extra_info"]), _variant(t["extra_info"]), ot, tt, tt / ot))
    return pairs


def _measurement(b: dict) -> tuple:
    """What a benchmark measured: its test and the implementation and type it tags."""
    e = b.get("extra_info") or {}
    return b["fullname"], e.get("impl"), e.get("dtype")


def join_runs(runs: list[dict]) -> dict:
    """One report from several runs: benchmarks tagged with their run, machine of the first. A
    later run's measurement replaces an earlier run's of the same test, implementation and type
    (a suite rerun after a change; rerun its baselines with it, since ratios stay within a run).
    A test one run skipped and another measured counts as measured."""
    if len(runs) == 1:
        return runs[0]
    joined = dict(runs[0])
    joined["gotocr_skipped"] = []
    joined["gotocr_idle_after_suite"] = []
    latest: dict[tuple, dict] = {}
    for i, run in enumerate(runs):
        for b in run.get("benchmarks", []):
            b = dict(b)
            b["extra_info"] = dict(b.get("extra_info") or {}, _run=i)
            latest.pop(_measurement(b), None)
            latest[_measurement(b)] = b
        joined["gotocr_skipped"] += run.get("gotocr_skipped") or []
        joined["gotocr_idle_after_suite"] += run.get("gotocr_idle_after_suite") or []
    joined["benchmarks"] = list(latest.values())
    measured = {b.get("fullname") for b in joined["benchmarks"]}
    joined["gotocr_skipped"] = [s for s in joined["gotocr_skipped"] if s["nodeid"] not in measured]
    joined["gotocr_runs"] = runs
    return joined


def render(data: dict, stat: str = "min") -> str:
    benches = [b for b in data.get("benchmarks", []) if "stage" in (b.get("extra_info") or {})]
    got = (data.get("machine_info") or {}).get("gotocr") or {}
    facts = got.get("machine") or machine_facts(int(got.get("threads", 2)))
    out = _run_section(data, facts, got, stat)
    out += _load_warning(data, facts)

    by_stage: dict[str, list[dict]] = defaultdict(list)
    for b in benches:
        by_stage[b["extra_info"]["stage"]].append(b)

    out += _speedups_section(by_stage, stat)
    out += _throughput_section(benches, by_stage, stat)
    out += _paired_sections(by_stage, stat)
    out += _server_section(by_stage, stat)
    out += _page_timings_section(by_stage)
    out += _vision_section(by_stage, facts, stat)
    out += _gemm_section(by_stage, stat)
    out += accuracy_section(by_stage.get("accuracy", []))
    out += _measurements_section(benches)
    out += _idle_and_skipped_section(data)
    return "\n".join(out)


def _run_section(data: dict, facts: dict, got: dict, stat: str) -> list[str]:
    """Title, machine and run facts."""
    out: list[str] = []
    w = out.append
    w("# gotocr_fast benchmark results")
    w("")
    w("Generated by `python bench/make_results.py` from the pytest-benchmark JSON of a run "
      "(`pytest bench/ --benchmark-only --benchmark-json bench/results.json`). Do not edit by "
      "hand: rerun and regenerate. What each suite measures: `bench/README.md`.")
    w("")
    w("## Machine and run")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| CPU | {facts['cpu_model']} ({facts['physical_cores']} physical cores visible) |")
    w(f"| SIMD class | {facts['simd']}{' + FMA' if facts['fma'] else ''}"
      f"{', native bf16' if facts.get('bf16_native') else ''} |")
    w(f"| threads per engine | {facts['threads']} (torch, onnxruntime intra-op, llama.cpp, ggml) |")
    w(f"| clock used for peak | {facts['ghz']} GHz ({facts['ghz_source']}) |")
    w(f"| estimated fp32 peak | {facts['peak_gflops']} GFLOP/s = {facts['cores_used']} cores × "
      f"{facts['ghz']} GHz × {facts['fp32_flops_per_cycle']} FLOP/cycle |")
    w(f"| model | random weights, config `{got.get('config', '?')}` "
      f"(same shapes and FLOPs as GOT-OCR2 for `full`) |")
    if got.get("reuse_stale"):
        w("| model cache | **GOTOCR_BENCH_REUSE=1: models may come from older synth/converter code** |")
    if got.get("load_average") is not None:
        end = got.get("load_average_end")
        w(f"| load average (1/5/15 min) | {got['load_average']} at the start"
          f"{f', {end} at the end' if end else ''} of the run (other processes share the CPUs) |")
    runs = data.get("gotocr_runs") or [data]
    for i, run in enumerate(runs):
        label = f"run {i + 1}: " if len(runs) > 1 else ""
        commit = run.get("commit_info") or {}
        if commit.get("id"):
            w(f"| {label}commit | `{commit['id'][:12]}`{' (dirty)' if commit.get('dirty') else ''} |")
        w(f"| {label}date | {run.get('datetime', '?')} |")
        if len(runs) > 1:
            rgot = (run.get("machine_info") or {}).get("gotocr") or {}
            names = sorted({Path(b["fullname"].split("::")[0]).name for b in run.get("benchmarks", [])})
            w(f"| {label}suites | {', '.join(names)} (load average {rgot.get('load_average')}) |")
    w(f"| statistic | {stat} over rounds |")
    w("")
    if len(runs) > 1:
        w(f"This report joins {len(runs)} runs; a ratio is only ever taken between two "
          "measurements of the same run.")
        w("")
    return out


def _load_warning(data: dict, facts: dict) -> list[str]:
    """A warning when other processes loaded the machine during a run."""
    out: list[str] = []
    w = out.append
    loads = [((r.get("machine_info") or {}).get("gotocr") or {}).get("load_average")
             for r in (data.get("gotocr_runs") or [data])]
    loads += [((r.get("machine_info") or {}).get("gotocr") or {}).get("load_average_end")
              for r in (data.get("gotocr_runs") or [data])]
    busiest = max((la[0] for la in loads if la), default=0.0)
    if busiest > facts["physical_cores"]:
        w(f"> **Warning: the machine was loaded** (1-minute load average up to {busiest:.1f} on "
          f"{facts['physical_cores']} cores at the start or end of a run). Other processes took CPU time "
          "during the measurements: the numbers below are unreliable, and ratios between "
          "benchmarks timed minutes apart can be off by several times (see `ours f16` vs "
          "`llama.cpp f16`, the same llama.cpp code on the same GGUF, which should read ≈ 1×).")
        w("")
    return out


def _speedups_section(by_stage: dict[str, list[dict]], stat: str) -> list[str]:
    """Ours against each baseline, stage by stage."""
    out: list[str] = []
    w = out.append
    w("## Speedups (ours ÷ theirs)")
    w("")
    w("Speedup = their time per unit ÷ our time per unit, both measured in this run "
      "(> 1: we are faster). llama.cpp runs our own GGUF, so it is paired with the same "
      "weight type only; transformers and onnxruntime with each of our weight types.")
    if by_stage.get("decode_paired") or by_stage.get("page_paired"):
        w("")
        w("These pairs come from separate suites, timed minutes apart; for decode and the page the "
          "interleaved sections further down (each of our rounds right after a baseline round) "
          "are the ones to read, as machine drift cancels there.")
    w("")
    any_pair = False
    for stage, desc in STAGES.items():
        pairs = speedup_rows(by_stage.get(stage, []), stat)
        if not pairs:
            continue
        any_pair = True
        w(f"### {stage}: {desc}")
        w("")
        w("| ours | theirs | ours / unit | theirs / unit | speedup |")
        w("|---|---|---:|---:|---:|")
        for ov, tv, ot, tt, s in pairs:
            w(f"| {ov} | {tv} | {_fmt_time(ot)} | {_fmt_time(tt)} | **{s:.2f}×** |")
        w("")
    if not any_pair:
        w("No stage has both our and a baseline measurement in this run.")
        w("")
    return out


def _throughput_section(benches: list[dict], by_stage: dict[str, list[dict]], stat: str) -> list[str]:
    """One engine under N concurrent requests."""
    out: list[str] = []
    w = out.append
    tp = sorted((b for b in benches if b["extra_info"]["stage"] == "throughput"),
                key=lambda b: (b["extra_info"].get("workload", "pages"), b["extra_info"].get("concurrency", 0)))
    if tp:
        runs_tp = {b["extra_info"].get("_run", 0) for b in tp}
        serial = [b for b in by_stage.get("page", []) if b["extra_info"]["impl"] == "transformers"
                  and b["extra_info"].get("_run", 0) in runs_tp]
        w("## Engine throughput under concurrency")
        w("")
        w("N requests submitted at once to one `OcrEngine`; time = until the last finishes. "
          "Workload `pages`: N distinct pages (each is encoded). Workload `regions`: N different "
          "boxes of one page (encoded and prefilled once; the other requests copy that KV). `scaling vs 1` = "
          "generated tokens/s ÷ that of one request of the same workload. `vs transformers` = our "
          "requests/s ÷ pages/s of the transformers page run (one page at a time, same tokens).")
        w("")
        head = "| model | workload | concurrency | wall | requests/s | generated tokens/s | encodes | scaling vs 1 |"
        sep = "|---|---|---:|---:|---:|---:|---:|---:|"
        if serial:
            head += "".join(f" vs {_variant(s['extra_info'])} |" for s in serial)
            sep += "---:|" * len(serial)
        w(head)
        w(sep)
        base: dict[tuple[str, str], float] = {}
        for b in tp:
            e = b["extra_info"]
            t = b["stats"][stat]
            workload = e.get("workload", "pages")
            req_s = e["units"] / t
            toks_s = e.get("completion_tokens", 0) / t
            base.setdefault((e.get("dtype", ""), workload), toks_s)
            scale = toks_s / base[(e.get("dtype", ""), workload)] if base[(e.get("dtype", ""), workload)] else float("nan")
            cells = (f"| {_variant(e)} | {workload} | {e['concurrency']} | {_fmt_time(t)} | {req_s:.3f} | "
                     f"{toks_s:.1f} | {e.get('encodes', '?')} | {scale:.2f}× |")
            for s in serial:
                cells += f" {req_s * per_unit(s, stat):.2f}× |"
            w(cells)
        w("")
    return out


def _paired_sections(by_stage: dict[str, list[dict]], stat: str) -> list[str]:
    """Decode and page against the baselines, rounds interleaved."""
    out: list[str] = []
    w = out.append
    paired_sections = [
        ("decode_paired", "Decode against the baselines, interleaved (`test_decode_paired.py`)",
         "one round of the baseline (llama.cpp on our GGUF, or transformers), then one of ours",
         "token"),
        ("page_paired", "One page against transformers, interleaved (`test_page_paired.py`)",
         "one transformers `generate` round, then one `OcrEngine.ocr` round of ours, on the same "
         "page image", "page"),
    ]
    pick = {"min": min, "median": statistics.median, "mean": statistics.fmean}[stat]
    for stage, title, what, unit in paired_sections:
        paired = sorted(by_stage.get(stage, []), key=_sort_key)
        if not paired:
            continue
        w(f"## {title}")
        w("")
        child = all(b["extra_info"].get("baseline_process") == "child" for b in paired)
        where = ("the baseline in a child process of its own (one OpenMP runtime would slow both sides)"
                 if child else "in the same process")
        w(f"Rounds alternate: {what}, {where}, so drift of the machine hits both "
          f"series alike. Each side's statistic is the {stat} over its own rounds.")
        w("")
        w(f"| ours | theirs | ours / {unit} | theirs / {unit} | speedup | rounds |")
        w("|---|---|---:|---:|---:|---:|")
        for b in paired:
            e = b["extra_info"]
            base = e.get("baseline_round_s") or []
            if not base:
                continue
            ot, tt = per_unit(b, stat), pick(base) / max(1, e["units"])
            theirs = f"{e.get('baseline', '?')} {e.get('baseline_dtype', e.get('dtype', ''))}"
            w(f"| {_variant(e)} | {theirs} | {_fmt_time(ot)} | "
              f"{_fmt_time(tt)} | **{tt / ot:.2f}×** | {b['stats']['rounds']} + {len(base)} |")
        w("")
    return out


def _server_section(by_stage: dict[str, list[dict]], stat: str) -> list[str]:
    """The HTTP server under load."""
    out: list[str] = []
    w = out.append
    # a server benchmark that failed mid-way has no latencies: its round time means nothing
    server_all = by_stage.get("server", [])
    server = sorted((b for b in server_all if "latency_p95_s" in b["extra_info"]),
                    key=lambda b: b["extra_info"].get("concurrency", 0))
    failed_server = [b for b in server_all if "latency_p95_s" not in b["extra_info"]]
    if server:
        w("## HTTP server under load (`test_server_load.py`)")
        w("")
        w("`gotocr serve` in a child process; N clients each send requests one after another, "
          "every request a page not sent before (no embedding-cache hits). Requests/s from the "
          "chosen statistic of the round time; latencies from the last round. CPU columns: cores "
          "busy on average during the round, in the server and in the benchmark's client process.")
        w("")
        w("| model | clients | requests / round | round time | requests/s | p50 latency | p95 latency "
          "| server CPU | client CPU |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for b in server:
            e = b["extra_info"]
            t = b["stats"][stat]
            w(f"| {_variant(e)} | {e.get('concurrency', '?')} | {e['units']} | {_fmt_time(t)} | "
              f"{e['units'] / t:.3f} | {_fmt_time(e.get('latency_p50_s', 0))} | "
              f"{_fmt_time(e.get('latency_p95_s', 0))} | {e.get('server_cpu_cores', '–')} | "
              f"{e.get('client_cpu_cores', '–')} |")
        w("")
        for b in failed_server:
            w(f"`{b['name']}` did not finish in this run (no latencies): left out.")
            w("")
    return out


def _page_timings_section(by_stage: dict[str, list[dict]]) -> list[str]:
    """Where a page's time goes, from the engine's own timings."""
    out: list[str] = []
    w = out.append
    ours_pages = [b for b in by_stage.get("page", []) if "encode_ms" in b["extra_info"]]
    if ours_pages:
        w("## Where a page's time goes (ours)")
        w("")
        w("The engine's own timings of the last `test_page` round (`OcrResult.timings`).")
        w("")
        w("| model | preprocess | encode | prefill | decode | generated tokens | decode tokens/s |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for b in sorted(ours_pages, key=_sort_key):
            e = b["extra_info"]
            toks = e.get("completion_tokens", 0)
            # the first token comes out of the prefill; the decode phase makes the others
            rate = (toks - 1) / (e["decode_ms"] / 1e3) if e["decode_ms"] > 0 and toks > 1 else 0.0
            w(f"| {_variant(e)} | {e['preprocess_ms']:.0f} ms | {e['encode_ms']:.0f} ms | "
              f"{e['prefill_ms']:.0f} ms | {e['decode_ms']:.0f} ms | {toks} | {rate:.1f} |")
        w("")
    return out


def _vision_section(by_stage: dict[str, list[dict]], facts: dict, stat: str) -> list[str]:
    """The vision encoder's fraction of FLOP peak."""
    out: list[str] = []
    w = out.append
    vision = sorted(by_stage.get("vision_view", []), key=_sort_key)
    if vision:
        w("## Vision encoder: fraction of FLOP peak")
        w("")
        flops = vision[0]["extra_info"].get("flops", 0) / max(1, vision[0]["extra_info"]["units"])
        w(f"{_fmt_flops(flops)} per view (counted from the config: 2 × multiply-adds of "
          "every conv, linear and attention matmul incl. the decomposed rel-pos terms; norms, "
          f"softmax and GELU not counted) ÷ time per view ÷ estimated peak "
          f"{facts['peak_gflops']} GFLOP/s.")
        w("")
        measured = _measured_fma_peak(by_stage, facts)
        if measured:
            w(f"The estimate takes the clock the CPU reports, which a boosting core can exceed; the "
              f"measured column divides by {measured:.1f} GFLOP/s instead: the f32 FMA loop of the "
              f"GEMM-shape suite (one thread, mean over its cases) × {facts['cores_used']} cores, an "
              "upper bound where busy cores clock lower than one.")
            w("")
        w("Kernels: the instruction set each kind of our kernel ran with (GEMM / attention / layer "
          "norm, chosen at run time from the CPU's features; `ggml` where ggml's own op ran).")
        w("")
        w("| implementation | time / view | GFLOP/s | % of fp32 peak |"
          + (" % of measured f32 FMA peak |" if measured else "") + " kernels | CPU |")
        w("|---|---:|---:|---:|" + ("---:|" if measured else "") + "---|---|")
        for b in vision:
            e = b["extra_info"]
            t = per_unit(b, stat)
            gflops = e.get("flops", 0) / max(1, e["units"]) / t / 1e9
            isa = e.get("kernel_isa") or {}
            kernels = " / ".join(isa.get(k, "?") for k in ("gemm", "attention", "layernorm")) if isa else ""
            measured_cell = f" {100 * gflops / measured:.1f} % |" if measured else ""
            w(f"| {_variant(e)} | {_fmt_time(t)} | {gflops:.1f} | "
              f"{100 * gflops / facts['peak_gflops']:.1f} % |{measured_cell} {kernels} | {e.get('cpu', '')} |")
        w("")
    return out


def _mean_fma_peak(cases: list[dict]) -> float | None:
    """One thread's f32 FMA peak, the mean of what the GEMM-shape cases measured (None if none did)."""
    peaks = [b["extra_info"]["fma_peak_gflops"] for b in cases if b["extra_info"].get("fma_peak_gflops")]
    return sum(peaks) / len(peaks) if peaks else None


def _measured_fma_peak(by_stage: dict[str, list[dict]], facts: dict) -> float | None:
    """The f32 FMA peak of the cores an engine uses, from the one-thread FMA loop that the
    GEMM-shape suite times (None without that suite in the joined runs)."""
    peak = _mean_fma_peak(by_stage.get("gemm_shape", []))
    return peak * facts["cores_used"] if peak else None


def _gemm_section(by_stage: dict[str, list[dict]], stat: str) -> list[str]:
    """The f32 GEMM per matmul shape of a view, as a fraction of the FMA peak measured with it."""
    cases = by_stage.get("gemm_shape", [])
    if not cases:
        return []
    out: list[str] = []
    w = out.append
    w("## f32 GEMM per matmul shape, one thread")
    w("")
    w("GFLOP/s = 2·M·N·K ÷ time (bias and GELU epilogue not counted); the FMA peak is one thread's "
      "register-only FMA loop at the GEMM's vector width, measured around each case's rounds "
      "(the higher of the two).")
    w("")
    baseline = next((b["extra_info"]["baseline"] for b in cases if b["extra_info"].get("baseline")), None)
    if baseline:
        w(f"Baseline: {baseline}, one thread, matmul + bias (no GELU) on the same operands, one round of it "
          "before each of ours; 'ours ÷ it' is its time over ours.")
        w("")
    w("| matmul | M × N × K | GFLOP/s | FMA peak (GFLOP/s) | % of peak | ISA |"
      + (f" {baseline} GFLOP/s | its % of peak | ours ÷ it |" if baseline else ""))
    w("|---|---|---:|---:|---:|---|" + ("---:|---:|---:|" if baseline else ""))
    total_flops = total_time = base_time = 0.0
    for b in cases:
        e = b["extra_info"]
        t = per_unit(b, stat)
        gflops = e["flops"] / t / 1e9
        peak = e.get("fma_peak_gflops")
        total_flops += e["flops"]
        total_time += t
        share = f"{100 * gflops / peak:.0f} %" if peak else "n/a"
        row = (f"| {e['gemm']}{' (+GELU)' if e.get('gelu') else ''} | {e['shape'].replace('x', ' × ')} | "
               f"{gflops:.1f} | {peak if peak else 'n/a'} | {share} | {e.get('gemm_isa', '')} |")
        if baseline:
            bt = e.get("baseline_s")
            base_time += bt or 0.0
            row += _baseline_cells(e["flops"], bt, t, peak)
        w(row)
    if total_time > 0:
        gflops = total_flops / total_time / 1e9
        peak = _mean_fma_peak(cases)
        share = f"{100 * gflops / peak:.0f} %" if peak else "n/a"
        row = f"| all of them | | {gflops:.1f} | {f'{peak:.1f}' if peak else 'n/a'} (mean) | {share} | |"
        if baseline:
            row += _baseline_cells(total_flops, base_time or None, total_time, peak)
        w(row)
    w("")
    return out


def _baseline_cells(flops: float, baseline_s: float | None, ours_s: float, peak: float | None) -> str:
    """The baseline's columns of a GEMM row: GFLOP/s, its share of the FMA peak, its time ÷ ours."""
    if not baseline_s:
        return " n/a | n/a | n/a |"
    gflops = flops / baseline_s / 1e9
    share = f"{100 * gflops / peak:.0f} %" if peak else "n/a"
    return f" {gflops:.1f} | {share} | **{baseline_s / ours_s:.2f}×** |"


def _measurements_section(benches: list[dict]) -> list[str]:
    """Every measurement, then peak RSS per suite."""
    out: list[str] = []
    w = out.append
    w("## All measurements")
    w("")
    w("| suite | benchmark | impl | unit | time / unit (median) | min | rounds | suite peak RSS so far |")
    w("|---|---|---|---|---:|---:|---:|---:|")
    for b in sorted(benches, key=lambda b: (b["fullname"].split("::")[0], _sort_key(b))):
        e = b["extra_info"]
        suite = Path(b["fullname"].split("::")[0]).name
        w(f"| {suite} | `{b['name']}` | {_variant(e)} | {e.get('unit', 'round')} | "
          f"{_fmt_time(per_unit(b, 'median'))} | {_fmt_time(per_unit(b, 'min'))} | "
          f"{b['stats']['rounds']} | {e.get('rss_peak_mib', 0):.0f} MiB |")
    w("")

    suites: dict[str, list[dict]] = defaultdict(list)
    for b in benches:
        suites[Path(b["fullname"].split("::")[0]).name].append(b)
    if suites:
        w("## Peak RSS per suite")
        w("")
        w("Peak resident set of the pytest process during the suite, model loading included (the "
          "kernel's high-water mark VmHWM, reset when the suite starts, after the previous "
          "suite's models were freed). It includes the Python process and the libraries "
          "already imported: compare with the RSS at the start of the suite's tests.")
        w("")
        w("| suite | peak RSS | RSS at test start (min) |")
        w("|---|---:|---:|")
        for name, rows in sorted(suites.items()):
            peak = max(r["extra_info"].get("rss_peak_mib", 0) for r in rows)
            start = min(r["extra_info"].get("rss_start_mib", 0) for r in rows)
            w(f"| {name} | {peak:.0f} MiB | {start:.0f} MiB |")
        w("")
    return out


def _idle_and_skipped_section(data: dict) -> list[str]:
    """CPU left busy after each suite, and the skipped tests."""
    out: list[str] = []
    w = out.append
    idle = data.get("gotocr_idle_after_suite") or []
    if idle:
        busy = [i for i in idle if i["idle_cpu"] > 0.05]
        w("## Left running after each suite")
        w("")
        w("After each suite freed its models, the pytest process slept 1 s and its CPU time was "
          "read: anything above zero is work left running that slows the suites after it.")
        w("")
        if busy:
            w("| suite | CPU while idle | threads |")
            w("|---|---:|---:|")
            for i in busy:
                w(f"| {i['suite']} | {100 * i['idle_cpu']:.0f} % | {len(i['threads'])} |")
        else:
            worst = max(i["idle_cpu"] for i in idle)
            w(f"Nothing: at most {100 * worst:.1f} % of a core after any of the {len(idle)} suites.")
        w("")

    skipped = data.get("gotocr_skipped") or []
    if skipped:
        w("## Skipped in this run")
        w("")
        w("| test | reason |")
        w("|---|---|")
        for s in skipped:
            w(f"| `{s['nodeid']}` | {s['reason']} |")
        w("")
    return out


def accuracy_section(rows: list[dict]) -> list[str]:
    """The bundled demo model's held-out reading accuracy per weight type (test_demo_accuracy.py)."""
    ours = [r for r in rows if r["extra_info"]["impl"] == "ours"]
    theirs = [r for r in rows if r["extra_info"]["impl"] == "transformers"]
    if not ours and not theirs:
        return []
    order = {t: i for i, t in enumerate(("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m",
                                         "f32+bf16-vision", "q4_k_m+bf16-vision", "f16+q8_0-kcache"))}
    ours.sort(key=lambda r: order.get(r["extra_info"].get("dtype"), 99))
    n = (ours or theirs)[0]["extra_info"].get("pages_per_kind", 0)
    bundle = (ours or theirs)[0]["extra_info"].get("bundle") or "installed"
    title = ("## Reading accuracy of the bundled demo model" if bundle == "installed" else
             f"## Reading accuracy of a demo-model training state (`{bundle}`, not the installed bundle)")
    out = [title, "",
           f"Held-out set of the demo model's task, {n} pages per kind (one line, 1-4 line blocks, box "
           "mode), greedy with the engine's defaults. CER = character edits / truth characters over the "
           "kind; decode = ms per generated token after the first; 'same as f32' = pages whose text "
           "equals the f32 model's.", "",
           "| weights | text GGUF | CER line | CER block | CER box | WER block | decode ms/token | same as f32 "
           "| finish reasons |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in ours:
        e = r["extra_info"]
        same = e.get("same_text_as_f32")
        out.append(f"| ours {e['dtype']} | {e.get('text_gguf_mib', 0):.1f} MiB | {100 * e['cer_line']:.2f} % | "
                   f"{100 * e['cer_block']:.2f} % | {100 * e['cer_box']:.2f} % | {100 * e['wer_block']:.2f} % | "
                   f"{e['decode_ms_per_token']:.2f} | {'' if same is None else f'{100 * same:.1f} %'} | "
                   f"{', '.join(f'{k} {v}' for k, v in sorted((e.get('finish_reasons') or {}).items()))} |")
    for r in theirs:
        e = r["extra_info"]
        out.append(f"| transformers f32 | | {100 * e['cer_line']:.2f} % | {100 * e['cer_block']:.2f} % | "
                   f"{100 * e['cer_box']:.2f} % | {100 * e['wer_block']:.2f} % | | | |")
    out.append("")
    for r in ours:
        e = r["extra_info"]
        if e["dtype"].endswith("+q8_0-kcache") and e.get("same_text_as_f16") is not None:
            out.append(f"With a q8_0 K cache (V f16) the f16 model's text equals that of its f16 cache on "
                       f"{100 * e['same_text_as_f16']:.1f} % of the pages.")
            out.append("")
    for r in theirs:
        e = r["extra_info"]
        diffs = e.get("differences") or []
        out.append(f"transformers' greedy text equals ours (f32) on {100 * e['agreement_with_ours_f32']:.1f} % of "
                   "the pages" + (f"; {len(diffs)} differ:" if diffs else "."))
        out.append("")
        if diffs:
            out.append("| kind | page | first differing token | transformers' top-1/top-2 margin | ours | transformers |")
            out.append("|---|---:|---:|---:|---|---|")
            for d in diffs:
                margin = "" if d.get("margin") is None else f"{d['margin']:.3f}"
                out.append(f"| {d['kind']} | {d['page']} | {d['first_diff_token']} | {margin} | "
                           f"`{d['ours']!r}` | `{d['transformers']!r}` |")
            out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, action="append",
                    help="pytest-benchmark JSON (default bench/results.json); repeat to join runs")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--stat", default="min", choices=["min", "median", "mean"])
    args = ap.parse_args(argv)
    runs = []
    for path in args.json or [HERE / "results.json"]:
        try:
            runs.append(json.loads(path.read_text()))
        except FileNotFoundError:
            print(f"{path}: not found; run `pytest bench/ --benchmark-only "
                  f"--benchmark-json {path}` first", file=sys.stderr)
            return 2
    args.out.write_text(render(join_runs(runs), args.stat) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
