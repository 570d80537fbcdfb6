"""URL fetching: the address policy, pinning, redirects and limits, against a real loopback server.

The server's default policy refuses loopback, so these tests inject a resolver (test names →
127.0.0.1 or forbidden addresses) and a policy that admits 127.0.0.1 only — the server itself
has no switch for that.
"""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gotocr_fast.server.errors import ApiError
from gotocr_fast.server.fetch import UrlFetcher, is_public_address


@pytest.mark.parametrize(
    "addr, public",
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("127.5.6.7", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("169.254.1.1", False),
        ("fd00:ec2::254", False),  # AWS metadata over IPv6
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("224.0.0.1", False),
        ("ff02::1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("255.255.255.255", False),
        ("240.0.0.1", False),
        ("100.64.0.1", False),  # shared / CGNAT
        ("100.100.100.200", False),  # Alibaba metadata
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:8.8.8.8", True),
        ("2002:7f00:0001::1", False),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("not-an-ip", False),
    ],
)
def test_address_policy(addr, public):
    assert is_public_address(addr) is public


class _Handler(BaseHTTPRequestHandler):
    routes: dict = {}
    seen_hosts: list = []

    def do_GET(self):  # noqa: N802
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher hung up on purpose (size / time limit)

    def _get(self):
        self.seen_hosts.append(self.headers.get("Host"))
        route = self.routes.get(self.path)
        if route is None:
            self.send_response(404)
            self.end_headers()
            return
        kind, value = route
        if kind == "body":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(value)))
            self.end_headers()
            self.wfile.write(value)
        elif kind == "chunked-big":  # no Content-Length: the limit must bite while streaming
            self.send_response(200)
            self.end_headers()
            for _ in range(value):
                self.wfile.write(b"x" * 1024)
        elif kind == "redirect":
            self.send_response(302)
            self.send_header("Location", value)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "slow":
            time.sleep(value)
            self.send_response(200)
            self.send_header("Content-Length", "1")
            self.end_headers()
            self.wfile.write(b"x")

    def log_message(self, *args):
        pass


@pytest.fixture
def origin():
    _Handler.routes = {}
    _Handler.seen_hosts = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield httpd.server_address[1], _Handler
    httpd.shutdown()
    httpd.server_close()


NAMES = {
    "files.test": ["127.0.0.1"],
    "private.test": ["10.0.0.7"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": ["127.0.0.1", "192.168.0.1"],
}


async def fake_resolver(host: str, port: int) -> list[str]:
    if host in NAMES:
        return NAMES[host]
    if host[0].isdigit() or ":" in host:
        return [host]
    raise OSError("unknown host")


def loopback_ok(addr: str) -> bool:
    return addr == "127.0.0.1" or is_public_address(addr)


def fetcher(**kw) -> UrlFetcher:
    args = dict(max_bytes=10_000, timeout=2.0, max_redirects=2, resolver=fake_resolver, address_allowed=loopback_ok)
    args.update(kw)
    return UrlFetcher(**args)


def run(coro):
    return asyncio.run(coro)


def expect_error(coro, status: int, code: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        run(coro)
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    return info.value


def test_default_policy_blocks_loopback(origin):
    port, h = origin
    h.routes["/a.png"] = ("body", b"PNGDATA")
    plain = UrlFetcher(max_bytes=10_000, timeout=2.0)  # system resolver, default policy
    expect_error(plain.fetch(f"http://127.0.0.1:{port}/a.png"), 403, "url_blocked")
    expect_error(plain.fetch(f"http://localhost:{port}/a.png"), 403, "url_blocked")
    expect_error(plain.fetch(f"http://[::1]:{port}/a.png"), 403, "url_blocked")
    assert h.seen_hosts == []  # never connected


def test_fetch_through_injected_policy_and_pinned_host(origin):
    port, h = origin
    h.routes["/a.png"] = ("body", b"PNGDATA")
    assert run(fetcher().fetch(f"http://files.test:{port}/a.png")) == b"PNGDATA"
    # connected to the checked address, Host header still names the original host
    assert h.seen_hosts == [f"files.test:{port}"]


@pytest.mark.parametrize("host", ["private.test", "metadata.test", "mixed.test", "169.254.169.254", "10.0.0.1"])
def test_blocked_first_hop(origin, host):
    port, h = origin
    expect_error(fetcher().fetch(f"http://{host}:{port}/a.png"), 403, "url_blocked")
    assert h.seen_hosts == []


@pytest.mark.parametrize("target", ["http://private.test/x", "http://169.254.169.254/latest/meta-data/",
                                    "http://metadata.test/", "http://[fd00:ec2::254]/"])
def test_every_redirect_is_checked(origin, target):
    port, h = origin
    h.routes["/r"] = ("redirect", target)
    expect_error(fetcher().fetch(f"http://files.test:{port}/r"), 403, "url_blocked")
    assert len(h.seen_hosts) == 1  # only the first hop was fetched


def test_redirect_followed_and_limited(origin):
    port, h = origin
    h.routes["/a.png"] = ("body", b"IMG")
    h.routes["/r1"] = ("redirect", "/a.png")
    h.routes["/r2"] = ("redirect", f"http://files.test:{port}/r1")
    assert run(fetcher().fetch(f"http://files.test:{port}/r2")) == b"IMG"
    h.routes["/loop"] = ("redirect", "/loop")
    expect_error(fetcher().fetch(f"http://files.test:{port}/loop"), 400, "too_many_redirects")
    h.routes["/ftp"] = ("redirect", "ftp://files.test/x")
    expect_error(fetcher().fetch(f"http://files.test:{port}/ftp"), 403, "url_blocked")


def test_size_and_time_limits(origin):
    port, h = origin
    h.routes["/big"] = ("body", b"x" * 20_000)
    expect_error(fetcher().fetch(f"http://files.test:{port}/big"), 413, "url_too_large")
    h.routes["/stream"] = ("chunked-big", 50)
    expect_error(fetcher().fetch(f"http://files.test:{port}/stream"), 413, "url_too_large")
    h.routes["/slow"] = ("slow", 3.0)
    t0 = time.monotonic()
    expect_error(fetcher(timeout=0.5).fetch(f"http://files.test:{port}/slow"), 400, "url_timeout")
    assert time.monotonic() - t0 < 2.5


def test_bad_urls(origin):
    port, _ = origin
    f = fetcher()
    expect_error(f.fetch("file:///etc/passwd"), 403, "url_blocked")
    expect_error(f.fetch("gopher://files.test/"), 403, "url_blocked")
    expect_error(f.fetch(f"http://user:pw@files.test:{port}/a.png"), 400, "invalid_url")
    expect_error(f.fetch(f"http://nowhere.test:{port}/a.png"), 400, "url_unresolvable")
    expect_error(f.fetch(f"http://files.test:{port}/missing"), 400, "url_fetch_failed")
