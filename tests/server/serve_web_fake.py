"""The scripted-engine server of ``serve_fake.py``, answering format requests with a fixed text.

The random-weight test model cannot write LaTeX, so the web page's rendering of format output is
driven by a hand-written GOT-style answer (env FAKE_FORMAT_ANSWER: a file path). Plain requests
keep the scripted engine's description of the pages and options (``fake_engine.describe``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import fake_engine  # noqa: E402
import serve_fake  # noqa: E402

_describe = fake_engine.describe
_FORMAT_ANSWER = Path(os.environ["FAKE_FORMAT_ANSWER"]).read_text(encoding="utf-8")


def describe(pages, options):
    return _FORMAT_ANSWER if options.get("type") == "format" else _describe(pages, options)


fake_engine.describe = describe

if __name__ == "__main__":
    serve_fake.main()
