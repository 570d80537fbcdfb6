"""Run the real server app under uvicorn with the scripted engine (tests only).

Same options as ``gotocr serve``; the engine is ``FakeEngine``. Env: FAKE_TOKEN_DELAY (seconds per
character), FAKE_LOAD_DELAY (seconds the "model" takes to load).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_engine import FakeEngine  # noqa: E402
from gotocr_fast.server.app import create_app  # noqa: E402
from gotocr_fast.server.serving import run_server  # noqa: E402
from gotocr_fast.server.settings import settings_from_args  # noqa: E402


def main() -> None:
    settings = settings_from_args(["--model", "fake-model", *sys.argv[1:]])
    token_delay = float(os.environ.get("FAKE_TOKEN_DELAY", "0.002"))
    load_delay = float(os.environ.get("FAKE_LOAD_DELAY", "0"))
    app = create_app(settings, engine_factory=lambda: FakeEngine(token_delay, load_delay, settings.engine_config()))
    run_server(app, settings)


if __name__ == "__main__":
    main()
