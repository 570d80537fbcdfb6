"""Connecting to the Ray cluster: the one place the CLI commands call ``ray.init``."""

from __future__ import annotations

import importlib.util
import os

__all__ = ["RAY_MISSING", "ray_available", "require_ray", "connect"]

RAY_MISSING = "this command needs Ray: pip install 'gotocr-fast[ray]' (or pip install 'ray[serve,data]')"


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def require_ray() -> None:
    """Raise the CLI's user error (exit 2, one line) when Ray is not installed."""
    if not ray_available():
        from gotocr_fast.cli import CliError

        raise CliError(RAY_MISSING)


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (``"auto"``: the one ``ray start`` left on this machine), or
    start a local one when ``address`` is empty (``RAY_ADDRESS`` in the environment still wins, as
    in every Ray program). Returns True when this call started or joined it (the caller then
    disconnects at the end), False when the process was already connected."""
    import ray

    if ray.is_initialized():
        return False
    # Usage statistics would phone home from every node; a self-hosted OCR service must not.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address or None, log_to_driver=True)
    return True
