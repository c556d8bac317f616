"""Outbound HTTP for ``Pay``, safe against server-side request forgery.

Every hop (the first request and each redirect) is resolved by Teller itself;
every resolved address must be public unless an operator allowed the host,
and the connection goes to the address that was checked, so a DNS answer that
changes between check and connect (rebinding) cannot redirect it. HTTPS keeps
the hostname for SNI and certificate checks. Timeouts bound connecting and
each read; bodies stream with a hard size cap, counted after any
content-coding is undone (a decompression bomb is cut off, never inflated).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from teller import content_coding, values
from teller.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable

Resolver = Callable[[str, int], Awaitable[list[str]]]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Cloud metadata endpoints, refused even where a provider makes them look public.
METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
            ipaddress.ip_address("100.100.100.200")}
REDIRECTS = {301, 302, 303, 307, 308}
#: Headers that must not follow a redirect to another origin.
CREDENTIAL_HEADERS = {"authorization", "cookie", "proxy-authorization", "payment-signature", "x-payment",
                      "payment-authorization"}
#: Headers of one connection, or that Teller sets itself: a caller may not send them.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "host", "content-length"}
#: Replaced by Teller's own: it decodes what it asked for and hands bodies on decoded.
TELLER_SETS = {"accept-encoding"}


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class Allow:
    """Operator exceptions to the public-address rule: hostnames (``*.example``
    wildcards) or addresses and networks (``10.1.0.0/16``)."""

    hosts: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[IpNetwork, ...]

    @classmethod
    def parse(cls, entries: Sequence[str]) -> Allow:
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[IpNetwork] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            wildcard = entry.startswith("*.")
            try:
                name = values.host(entry[2:] if wildcard else entry, "outbound_allow")
            except values.NotCanonical:
                name = entry[2:] if wildcard else entry
            if wildcard:
                suffixes.append("." + name)
            else:
                hosts.add(name)
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks))

    def host(self, host: str) -> bool:
        h = host.lower().rstrip(".")
        return h in self.hosts or any(h.endswith(s) for s in self.suffixes)

    def address(self, ip: IpAddress) -> bool:
        return any(ip in n for n in self.networks)


def _public(ip: IpAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast and ip not in METADATA


@dataclass
class Response:
    """A response whose body is handed on decoded (``headers`` then carry no
    Content-Encoding or Content-Length) unless it uses a coding Teller did not
    ask for, which passes through as sent."""

    status: int
    headers: list[tuple[str, str]]
    url: str
    _inner: httpx.Response
    _limit: int
    _codings: list[str] | None = None

    @classmethod
    def of(cls, inner: httpx.Response, url: str, limit: int) -> Response:
        headers = list(inner.headers.multi_items())
        try:
            names = content_coding.codings(headers)
        except content_coding.CodingError as exc:
            raise Unavailable(f"{url} answered with a body Teller cannot read: {exc}",
                              reason="bad_content_encoding") from None
        if names:
            headers = content_coding.decoded_headers(headers)
        return cls(inner.status_code, headers, url, inner, limit, names)

    async def read(self, limit: int) -> bytes:
        """The whole body, refused when larger than ``limit``."""
        out = bytearray()
        async for chunk in self.stream(min(limit, self._limit)):
            out += chunk
        return bytes(out)

    async def stream(self, limit: int | None = None) -> AsyncIterator[bytes]:
        cap = self._limit if limit is None else limit
        decoder = content_coding.Decoder(self._codings) if self._codings else None
        seen = raw = 0
        try:
            async for chunk in self._inner.aiter_raw():
                raw += len(chunk)
                if raw > cap:  # compressed bodies are bounded on the wire as well
                    raise self._too_large(cap)
                for piece in (decoder.feed(chunk) if decoder else (chunk,)):
                    seen += len(piece)
                    if seen > cap:
                        raise self._too_large(cap)
                    yield piece
            for piece in (decoder.finish() if decoder else ()):
                seen += len(piece)
                if seen > cap:
                    raise self._too_large(cap)
                yield piece
        except content_coding.CodingError as exc:
            raise Unavailable(f"reading {self.url} failed: {exc}", reason="bad_content_encoding") from None
        except httpx.TimeoutException:
            raise Unavailable(f"reading {self.url} timed out") from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"reading {self.url} failed: {type(exc).__name__}") from None

    def _too_large(self, cap: int) -> FailedPrecondition:
        return FailedPrecondition(f"response from {self.url} is larger than {cap} bytes: cut off",
                                  reason="response_too_large")


class Fetcher:
    def __init__(
        self, *, allow: Sequence[str] = (), connect_timeout_s: float = 5.0, read_timeout_s: float = 30.0,
        max_response_bytes: int = 10 * 1024 * 1024, max_redirects: int = 3, resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.allow = Allow.parse(allow)
        self.max_response_bytes = max_response_bytes
        self.max_redirects = max_redirects
        self.resolver = resolver or system_resolver
        self._timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s,
                                      pool=connect_timeout_s)
        self._transport = transport
        # One TLS context for every call: building one (loading the CA bundle) costs tens of
        # ms, which each call's own client paid, and a metered stream pays once per voucher.
        self._ssl = httpx.create_ssl_context(trust_env=False)

    async def check(self, url: str) -> tuple[str, str, int, str]:
        """(scheme, host, port, address to connect to) for a URL Teller may fetch."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise InvalidArgument(f"url must be http or https, got {parts.scheme or 'no scheme'!r}")
        if not parts.hostname:
            raise InvalidArgument("url has no host")
        if parts.username or parts.password:
            raise InvalidArgument("url must not carry credentials")
        # The host in the form the policy's host lists compare (teller.values):
        # resolved and connected as it is compared, whatever its spelling.
        try:
            host = values.host(parts.hostname, "url host")
        except values.NotCanonical as exc:
            raise InvalidArgument(str(exc)) from None
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InvalidArgument(f"url has an invalid port: {url[:200]!r}") from None
        try:
            literal: IpAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = await self.resolver(host, port)
            except OSError as exc:
                raise Unavailable(f"cannot resolve {host}: {exc}") from None
            if not addresses:
                raise Unavailable(f"cannot resolve {host}: no addresses")
        host_allowed = self.allow.host(host)
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            if not (host_allowed or self.allow.address(ip) or _public(ip)):
                shown = host if literal is not None else f"{host} (resolves to {ip})"
                raise PermissionDenied(
                    f"refusing to fetch {shown}: loopback, private, link-local and metadata addresses are "
                    "blocked (an operator can allow the host with outbound_allow)",
                    reason="destination_not_allowed", metadata={"host": host, "address": str(ip)})
        return parts.scheme, host, port, addresses[0]

    @contextlib.asynccontextmanager
    async def open(self, method: str, url: str, headers: Sequence[tuple[str, str]],
                   body: bytes) -> AsyncIterator[Response]:
        """The response after at most ``max_redirects`` checked redirects; its body still streaming."""
        async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False, trust_env=False,
                                     transport=self._transport, verify=self._ssl) as client:
            current, current_method, current_body = url, method.upper(), body
            previous = url
            sent = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP | TELLER_SETS]
            sent.append(("Accept-Encoding", content_coding.ACCEPT))
            first = urlsplit(url)
            origin = (first.scheme, first.hostname, first.port)
            for hop in range(self.max_redirects + 1):
                try:
                    scheme, host, port, address = await self.check(current)
                except PermissionDenied as err:
                    if hop:  # the server sent Teller there: Pay tells this apart from a refused URL
                        err.metadata["redirected_from"] = previous[:200]
                    raise
                parts = urlsplit(current)
                netloc = f"[{address}]" if ":" in address else address
                pinned = urlunsplit((scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
                shown = f"[{host}]" if ":" in host else host
                host_header = shown if port in (80, 443) else f"{shown}:{port}"
                request = client.build_request(current_method, pinned, headers=[*sent, ("Host", host_header)],
                                               content=current_body or None,
                                               extensions={"sni_hostname": host} if scheme == "https" else {})
                try:
                    inner = await client.send(request, stream=True)
                except httpx.TimeoutException:
                    raise Unavailable(f"{current} timed out") from None
                except httpx.HTTPError as exc:
                    raise Unavailable(f"{current} failed: {type(exc).__name__}: {str(exc)[:200]}") from None
                try:
                    location = inner.headers.get("location")
                    if inner.status_code in REDIRECTS and location:
                        if hop == self.max_redirects:
                            raise FailedPrecondition(f"{url} redirected more than {self.max_redirects} times",
                                                     reason="too_many_redirects")
                        previous, current = current, urljoin(current, location)
                        if inner.status_code == 303 or (inner.status_code in (301, 302) and current_method == "POST"):
                            current_method, current_body = "GET", b""
                        new = urlsplit(current)
                        if (new.scheme, new.hostname, new.port) != origin:
                            sent = [(k, v) for k, v in sent if k.lower() not in CREDENTIAL_HEADERS]
                        continue
                    yield Response.of(inner, current, self.max_response_bytes)
                    return
                finally:
                    await inner.aclose()
            raise AssertionError("unreachable")


__all__ = ["Allow", "Fetcher", "Response", "system_resolver"]
