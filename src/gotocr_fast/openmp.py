"""How long OpenMP worker threads spin at a barrier before sleeping: set before ggml loads.

llama-cpp-python's ggml parallelises every graph with OpenMP (GNU libgomp), whose idle workers spin
``GOMP_SPINCOUNT`` times (300,000 by default) at each barrier before sleeping in the kernel. On
cores of our own, spinning is what keeps a decode step fast: a graph has hundreds of barriers, and
waking a sleeping worker at each costs more than the op. On cores shared with another busy
process, a full spin waits out the preempted partner's whole time slice at every barrier.
Measured on 2 cores of an AMX Xeon: a q4_k_m decode step of the full-size model in an idle engine,
and a step of the tiny test model while two other busy threads share the cores:

============  ==========================  =============================
spin count    full-size step, idle        tiny step, cores shared
============  ==========================  =============================
300,000       32.8-32.9 ms                3-100 ms (erratic)
3,000         33.5 ms                     4.3 ms
1,000         35.0-38.4 ms                2.5 ms
300           44 ms (outside the engine)  1.8 ms
============  ==========================  =============================

3,000 keeps the idle speed and bounds what a busy neighbour costs. libgomp reads the variable once,
when it is loaded, so this takes effect only where ``gotocr_fast`` is imported before anything
loads libgomp (llama_cpp, torch); a value already in the environment is kept.
"""

from __future__ import annotations

import os

SPIN_COUNT_VAR = "GOMP_SPINCOUNT"
DEFAULT_SPIN_COUNT = "3000"


def default_spin_count() -> bool:
    """Set ``GOMP_SPINCOUNT`` unless the environment has it; returns whether it was set here."""
    if SPIN_COUNT_VAR in os.environ:
        return False
    os.environ[SPIN_COUNT_VAR] = DEFAULT_SPIN_COUNT
    return True
