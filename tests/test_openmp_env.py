"""gotocr_fast.openmp: importing the package sets libgomp's spin count unless the user did."""

from __future__ import annotations

import os
import subprocess
import sys

from gotocr_fast import openmp


def _spin_count_after_import(env: dict[str, str]) -> str:
    code = "import os, gotocr_fast; print(os.environ.get('GOMP_SPINCOUNT'), gotocr_fast.SPIN_COUNT_SET_HERE)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_import_sets_the_spin_count_before_ggml_loads():
    env = {k: v for k, v in os.environ.items() if k != openmp.SPIN_COUNT_VAR}
    assert _spin_count_after_import(env) == f"{openmp.DEFAULT_SPIN_COUNT} True"


def test_a_users_spin_count_is_kept():
    env = {**os.environ, openmp.SPIN_COUNT_VAR: "42"}
    assert _spin_count_after_import(env) == "42 False"
