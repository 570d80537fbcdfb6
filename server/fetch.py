"""Safe fetching of image URLs (server-side request forgery defences).

* Only ``http``/``https``; no credentials in the URL; no proxies from the environment.
* The host is resolved once per hop, *every* resolved address must be public (not loopback,
  private, link-local, multicast, reserved, unspecified, shared/CGNAT, or a cloud metadata
  address, also when embedded in IPv4-mapped / 6to4 / Teredo / NAT64 IPv6 addresses), and the
  connection goes to that checked address — the name is never resolved again (no DNS
  rebinding). TLS still verifies the certificate against the host name (SNI).
* Redirects are followed by hand, each one checked like the first request, at most N of them.
* One deadline covers the whole fetch; the body is streamed and cut at ``max_bytes``.

The resolver and the address policy are injectable: tests serve files from 127.0.0.1 by passing a
policy that admits loopback, and the server itself has no switch for that.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Union

import anyio
import httpx

from .errors import ApiError

__all__ = ["UrlFetcher", "is_public_address", "system_resolver"]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Resolver = Callable[[str, int], Awaitable[list[str]]]

_METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS/GCP/Azure/OpenStack metadata
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud metadata
    ipaddress.ip_address("fd00:ec2::254"),  # AWS metadata over IPv6
}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def is_public_address(address: str | IPAddress) -> bool:
    """True only for a globally routable unicast address that is not a metadata endpoint."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: list[IPAddress] = []
        if ip.ipv4_mapped is not None:
            embedded.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _NAT64_LOCAL:
            return False
        if embedded and not all(is_public_address(e) for e in embedded):
            return False
        if ip.ipv4_mapped is not None or ip in _NAT64:
            return True  # judged by the IPv4 address it carries (64:ff9b::/96 lies in reserved ::/8)
    if ip in _METADATA or (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED):
        return False
    return bool(
        ip.is_global
        and not ip.is_private
        and not ip.is_loopback
        and not ip.is_link_local
        and not ip.is_multicast
        and not ip.is_reserved
        and not ip.is_unspecified
        and not (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
    )


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host (getaddrinfo runs in a worker thread)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = str(sockaddr[0])
        if addr not in seen:
            seen.append(addr)
    return seen


class UrlFetcher:
    def __init__(
        self,
        *,
        max_bytes: int,
        timeout: float,
        max_redirects: int = 3,
        resolver: Resolver = system_resolver,
        address_allowed: Callable[[str], bool] = is_public_address,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self._resolve = resolver
        self._allowed = address_allowed
        self._transport = transport

    async def fetch(self, url: str) -> bytes:
        """The body of ``url`` (status 200), or an ApiError (403 blocked, 413 too large, 400 else)."""
        try:
            with anyio.fail_after(self.timeout):
                return await self._fetch(url)
        except TimeoutError:
            raise ApiError(400, f"fetching {_short(url)} took longer than {self.timeout:g} s", "url_timeout") from None

    async def _fetch(self, url: str) -> bytes:
        # A fresh client per fetch: no cookies or pooled connections shared between requests.
        async with httpx.AsyncClient(
            transport=self._transport,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(self.timeout),
        ) as client:
            current = _parse(url)
            for hop in range(self.max_redirects + 1):
                request = await self._pinned_request(client, current)
                try:
                    response = await client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise ApiError(400, f"cannot fetch {_short(str(current))}: {type(exc).__name__}",
                                   "url_fetch_failed") from None
                try:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        if hop == self.max_redirects:
                            raise ApiError(400, f"too many redirects (limit {self.max_redirects})",
                                           "too_many_redirects")
                        try:
                            current = _parse(str(current.join(location)))
                        except httpx.InvalidURL:
                            raise ApiError(400, "redirect to an invalid URL", "invalid_url") from None
                        continue
                    if response.status_code != 200:
                        raise ApiError(400, f"fetching {_short(str(current))} returned HTTP {response.status_code}",
                                       "url_fetch_failed")
                    return await self._read_limited(response)
                finally:
                    await response.aclose()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pinned_request(self, client: httpx.AsyncClient, url: httpx.URL) -> httpx.Request:
        host = url.raw_host.decode("ascii")  # IDNA-encoded: what DNS, Host and SNI need
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await self._resolve(host, port)
        except OSError:
            raise ApiError(400, f"cannot resolve host {host!r}", "url_unresolvable") from None
        if not addresses:
            raise ApiError(400, f"cannot resolve host {host!r}", "url_unresolvable")
        for addr in addresses:
            if not self._allowed(addr):
                raise ApiError(403, f"URL host {host!r} resolves to a non-public address", "url_blocked")
        ip = addresses[0].split("%", 1)[0]
        pinned = url.copy_with(host=ip)  # connect to the address we checked, not a re-resolved name
        host_header = f"[{host}]" if ":" in host else host
        if url.port is not None:
            host_header += f":{url.port}"
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        return client.build_request(
            "GET",
            pinned,
            headers={"Host": host_header, "Accept": "image/*, application/pdf;q=0.9, */*;q=0.1",
                     "Accept-Encoding": "identity", "User-Agent": "gotocr_fast"},
            extensions=extensions,
        )

    async def _read_limited(self, response: httpx.Response) -> bytes:
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise ApiError(413, f"remote file is larger than {self.max_bytes} bytes", "url_too_large")
        chunks: list[bytes] = []
        total = 0
        try:
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > self.max_bytes:
                    raise ApiError(413, f"remote file is larger than {self.max_bytes} bytes", "url_too_large")
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise ApiError(400, f"fetch failed while reading: {type(exc).__name__}", "url_fetch_failed") from None
        return b"".join(chunks)


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ApiError(400, "invalid URL", "invalid_url") from None
    if parsed.scheme not in ("http", "https"):
        raise ApiError(403, f"URL scheme {parsed.scheme!r} is not allowed (http and https only)", "url_blocked")
    if not parsed.host:
        raise ApiError(400, "URL has no host", "invalid_url")
    if parsed.userinfo:
        raise ApiError(400, "URLs with credentials are not accepted", "invalid_url")
    return parsed


def _short(url: str, n: int = 80) -> str:
    return url if len(url) <= n else url[: n - 1] + "…"
