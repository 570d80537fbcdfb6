"""Fixtures of the Ray tests: one local Ray cluster for the session (one node, this machine, 2 CPUs,
no dashboard; Serve's HTTP proxy listens on 127.0.0.1), started by the first test that needs it and
stopped at the end. Ray advertises the machine's own address even when asked for 127.0.0.1, so the
cluster address is that one; nothing leaves the machine. Helpers: ``ray_helpers.py``.

Every test here skips, with the reason, when Ray is not installed (the optional ``ray`` extra).
The folder is not called ``ray``: pytest puts ``tests/`` on ``sys.path``, and where Ray is not
installed a folder of that name would be imported as a namespace package ``ray`` in its place.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ray_helpers import RAY_CPUS


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The address (``host:port``) of a local Ray cluster that this process started and owns."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install '.[ray]'")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options = dict(num_cpus=RAY_CPUS, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
                   log_to_driver=False)
    try:
        ray.init(**options)
    except Exception:  # noqa: BLE001
        # Ray gives its node 30 s to register; a machine busy with other work can miss that once
        ray.shutdown()
        ray.init(**options)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        try:
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()
