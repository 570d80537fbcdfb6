"""``gotocr serve``: run the HTTP service with uvicorn.

Without ``--model`` (or ``GOTOCR_MODEL``) it serves the bundled demo model (a small model trained
on printed text lines, converted on first use). The model loads in the background: the port opens at once, ``/health`` answers 503 until the
model is ready. SIGINT/SIGTERM stop accepting connections, let in-flight requests finish for up
to ``--shutdown-timeout`` seconds, then close the engine.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from .settings import SettingsError, settings_from_args

__all__ = ["main"]


DEMO_MODEL_NAME = "gotocr-demo"
"""Model name the server reports when it serves the bundled demo model."""


def startup_checks_pass(settings) -> bool:
    """The file-system checks before serving (errors printed), and the open-port warning."""
    if not os.path.exists(settings.model):
        print(f"error: model not found: {settings.model}", file=sys.stderr)
        return False
    if settings.allowed_root is not None and not os.path.isdir(settings.allowed_root):
        print(f"error: --allowed-root is not a folder: {settings.allowed_root}", file=sys.stderr)
        return False
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        print(f"warning: listening on {settings.host} without --api-key", file=sys.stderr)
    return True


def _model_given(args: list[str]) -> bool:
    """Whether a model comes from the command line or GOTOCR_MODEL (or only help is asked for)."""
    if any(a in ("-h", "--help") for a in args) or os.environ.get("GOTOCR_MODEL"):
        return True
    return any(a == "--model" or a.startswith("--model=") for a in args)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--ray" or a.startswith("--ray=") or a == "--ray-help" for a in args):
        # engine replicas in a Ray cluster (the optional `ray` extra): gotocr_fast/ray/serve.py
        from gotocr_fast.ray.serve import main as ray_main

        return ray_main(args)
    if not _model_given(args):
        from gotocr_fast.demo_model import NOTICE, has_bundle, model_dir

        if not has_bundle():
            print("error: --model (or GOTOCR_MODEL) is required: this installation has no bundled demo model",
                  file=sys.stderr)
            return 2
        print(f"note: {NOTICE}", file=sys.stderr)
        args = [*args, "--model", str(model_dir())]
        if not any(a == "--model-name" or a.startswith("--model-name=") for a in args):
            args += ["--model-name", DEMO_MODEL_NAME]
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not startup_checks_pass(settings):
        return 2

    from .app import create_app
    from .memory import limit_malloc_arenas
    from .serving import run_server

    limit_malloc_arenas()  # before the engine's and uvicorn's threads start allocating
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(create_app(settings), settings)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
