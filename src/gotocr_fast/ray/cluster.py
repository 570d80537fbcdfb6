"""Connecting to the Ray cluster: the one place the CLI commands call ``ray.init``."""

from __future__ import annotations

import importlib.util
import os

__all__ = ["RAY_MISSING", "ray_available", "require_ray", "connect", "split_ray_option"]

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


def _looks_like_address(token: str) -> bool:
    # host:port, ray://host:port, auto, local; never an existing path (a batch source after --ray)
    if token.startswith("-") or os.path.exists(token):
        return False
    return token in ("auto", "local") or ":" in token


def split_ray_option(argv: list[str]) -> tuple[bool, str | None, list[str]]:
    """``(given, address, rest)`` for ``--ray [ADDRESS]`` / ``--ray=ADDRESS`` anywhere in ``argv``.

    The word after a bare ``--ray`` is its address only when it looks like one (``host:port``,
    ``ray://…``, ``auto``, ``local``), so ``gotocr batch --ray scans/`` keeps ``scans/`` a source."""
    given, address, rest = False, None, []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--ray="):
            given, address = True, a.split("=", 1)[1] or None
        elif a == "--ray":
            given = True
            if i + 1 < len(argv) and _looks_like_address(argv[i + 1]):
                address = argv[i + 1]
                i += 1
        else:
            rest.append(a)
        i += 1
    return given, address, rest
