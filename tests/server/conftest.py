"""Server test fixtures: real server processes on free loopback ports, and test images.

``start_server(*args, fake=True/False, env=...)`` starts ``python tests/server/serve_fake.py`` (the
real app and uvicorn with the scripted engine of ``fake_engine.py``) or ``python -m gotocr_fast
serve`` (the real engine), waits until the port answers and stops it (SIGTERM) at teardown.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str], env: dict[str, str] | None, fake: bool, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable]
        cmd += [str(HERE / "serve_fake.py")] if fake else ["-m", "gotocr_fast", "serve"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", *args]
        full_env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                httpx.get(self.url + "/version", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not listen within {timeout} s:\n{self.log()}")

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = httpx.get(self.url + "/health", timeout=5.0)
            if r.status_code == 200:
                return
            if r.json().get("status") == "failed":
                raise RuntimeError(f"model failed to load: {r.text}\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"model not ready within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def _server_factory(log_dir: Path) -> tuple[Callable[..., ServerProcess], list[ServerProcess]]:
    servers: list[ServerProcess] = []

    def start(*args: str, fake: bool = True, env: dict[str, str] | None = None, ready: bool = True,
              timeout: float = 120.0) -> ServerProcess:
        server = ServerProcess(list(args), env, fake, log_dir / f"server-{len(servers)}.log")
        servers.append(server)
        server.wait_listening(timeout)
        if ready:
            server.wait_ready(timeout)
        return server

    return start, servers


@pytest.fixture
def start_server(tmp_path) -> Iterator[Callable[..., ServerProcess]]:
    start, servers = _server_factory(tmp_path)
    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory) -> Iterator[Callable[..., ServerProcess]]:
    """Like start_server, for one server shared by a module's tests."""
    start, servers = _server_factory(tmp_path_factory.mktemp("server-logs"))
    yield start
    for s in servers:
        s.stop()


def png_bytes(size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (10, 20, 30), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def pdf_bytes(pages: list[tuple[tuple[int, int], tuple[int, int, int]]]) -> bytes:
    """A PDF with one solid-colour page per (size in points at 72 dpi, colour)."""
    images = [Image.new("RGB", size, color) for size, color in pages]
    buf = io.BytesIO()
    images[0].save(buf, "PDF", save_all=True, append_images=images[1:], resolution=72.0)
    return buf.getvalue()


@pytest.fixture
def image_root(tmp_path) -> Path:
    return make_image_root(tmp_path)


@pytest.fixture(scope="module")
def module_image_root(tmp_path_factory) -> Path:
    return make_image_root(tmp_path_factory.mktemp("images"))


def make_image_root(tmp_path: Path) -> Path:
    """An allowed root: a.png (40x30), sub/b.jpg (20x10), pages/ (p1, p2, p10 .png), doc.pdf (2 pages),
    and outside it secret.png."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "pages").mkdir()
    (root / "a.png").write_bytes(png_bytes((40, 30), (10, 20, 30)))
    (root / "sub" / "b.jpg").write_bytes(png_bytes((20, 10), (200, 0, 0), "JPEG"))
    for i, n in enumerate((10, 2, 1)):
        (root / "pages" / f"p{n}.png").write_bytes(png_bytes((10 + n, 10), (n, n, n)))
    (root / "pages" / "notes.txt").write_text("not an image")
    (root / "doc.pdf").write_bytes(pdf_bytes([((50, 40), (255, 255, 255)), ((40, 50), (0, 0, 0))]))
    (tmp_path / "secret.png").write_bytes(png_bytes((5, 5), (1, 1, 1)))
    return root
