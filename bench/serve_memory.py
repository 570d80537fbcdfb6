"""Resident memory of ``gotocr serve`` at its defaults, idle after start-up and after serving.

    python bench/serve_memory.py MODEL_DIR [--pages 4] [--max-tokens 32] [--settle 3]

Starts ``gotocr serve --model MODEL_DIR --no-ui`` with nothing else set (4 slots, a context of
8192, the shared KV pool of docs/MEMORY.md), then reads the server's ``VmRSS`` (and its anonymous
and file-backed parts) from ``/proc/PID/status``: idle after start-up, idle after one page, idle
after ``--pages`` pages sent at once, each reading taken ``--settle`` seconds after the last answer.
Pages are rendered reading-task pages, each new, so the embedding cache never answers.
"""

from __future__ import annotations

import argparse
import base64
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import free_port, stop_server, wait_until_healthy

GIB = 2**30


def _status(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon, RssFile of ``pid`` in GiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) * 1024 / GIB
    return out


def _pages(count: int, start: int):
    import numpy as np

    from gotocr_fast import reading

    for i in range(start, start + count):
        page = reading.render_page(np.random.default_rng([0x5E7E, i]), min_lines=4, max_lines=4)
        buf = io.BytesIO()
        page.image.save(buf, "PNG")
        yield "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def main(argv: list[str] | None = None) -> int:
    import httpx

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--pages", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--settle", type=float, default=3.0)
    args = p.parse_args(argv)

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gotocr_fast", "serve", "--model", str(args.model), "--no-ui",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"

    def post(uri: str) -> None:
        r = httpx.post(url + "/v1/ocr", json={"image_file": uri, "max_tokens": args.max_tokens}, timeout=900)
        r.raise_for_status()

    rows = []
    try:
        not_ready = wait_until_healthy(proc, url)
        if not_ready:
            raise SystemExit(not_ready)
        time.sleep(args.settle)
        rows.append(("idle after start-up", _status(proc.pid)))
        post(next(_pages(1, 0)))
        time.sleep(args.settle)
        rows.append(("idle after one page", _status(proc.pid)))
        threads = [threading.Thread(target=post, args=(uri,)) for uri in _pages(args.pages, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(args.settle)
        rows.append((f"idle after {args.pages} concurrent pages", _status(proc.pid)))
    finally:
        stop_server(proc)
    print("| when | resident (GiB) | anonymous | file-backed |")
    print("|---|---:|---:|---:|")
    for when, s in rows:
        print(f"| {when} | {s['VmRSS']:.2f} | {s['RssAnon']:.2f} | {s['RssFile']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
