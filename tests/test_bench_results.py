"""bench/make_results.py joining several benchmark runs into one results page."""

from __future__ import annotations

import importlib.util
from pathlib import Path

MAKE_RESULTS = Path(__file__).resolve().parents[1] / "bench" / "make_results.py"


def _make_results():
    spec = importlib.util.spec_from_file_location("make_results_under_test", MAKE_RESULTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(fullname: str, impl: str, dtype: str, seconds: float) -> dict:
    return {"fullname": fullname, "name": fullname.split("::")[-1], "stats": {"min": seconds},
            "extra_info": {"impl": impl, "dtype": dtype, "stage": "vision_view"}}


def test_a_later_run_replaces_the_same_measurement_and_keeps_the_rest():
    join_runs = _make_results().join_runs
    view = "bench/test_vision.py::test_vision[bf16-compute-bf16]"
    page = "bench/test_page_paired.py::test_page_paired[q8_0]"
    full_run = {"benchmarks": [_bench(view, "ours", "bf16 compute", 3.3), _bench(page, "ours", "q8_0", 13.8)]}
    suite_rerun = {"benchmarks": [_bench(view, "ours", "bf16 compute", 2.9)]}
    page_rerun = {"benchmarks": [_bench(page, "ours", "q8_0+bf16-vision", 10.9)]}

    joined = join_runs([full_run, suite_rerun, page_rerun])

    got = {(b["fullname"], b["extra_info"]["dtype"]): (b["stats"]["min"], b["extra_info"]["_run"])
           for b in joined["benchmarks"]}
    # the rerun view replaces the full run's; the page of another type is a measurement of its own
    assert got == {(view, "bf16 compute"): (2.9, 1), (page, "q8_0"): (13.8, 0),
                   (page, "q8_0+bf16-vision"): (10.9, 2)}
    assert len(joined["gotocr_runs"]) == 3


def test_a_test_skipped_in_one_run_and_measured_in_another_is_not_listed_as_skipped():
    join_runs = _make_results().join_runs
    demo = "bench/test_demo_accuracy.py::test_demo_accuracy[f16]"
    ray = "bench/test_ray.py::test_ray_serve"
    full_run = {"benchmarks": [], "gotocr_skipped": [{"nodeid": demo, "reason": "not bundled"},
                                                     {"nodeid": ray, "reason": "no ray"}]}
    demo_rerun = {"benchmarks": [_bench(demo, "ours", "f16", 0.2)]}

    joined = join_runs([full_run, demo_rerun])

    assert joined["gotocr_skipped"] == [{"nodeid": ray, "reason": "no ray"}]
