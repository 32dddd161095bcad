"""HTTP(S) GET pinned to the addresses the system resolver gave, with browser-like headers.

A censor may answer DNS with a blockpage address; what matters is what a browser on this
network would get, so the fetch must connect to *the system resolver's answer* (not whatever a
second lookup returns) while sending the right ``Host`` header and TLS SNI.  aiohttp does the
HTTP; a :class:`PinnedResolver` hands its connector the pinned addresses for the measured host
and resolves redirect targets through our own DNS code (first reply, system resolver).

One ``ClientSession`` per fetch with ``force_close``: measurements never share connections,
cookies or DNS caches.  The body is read up to a byte limit (the data budget's share), hashed,
and its head and ``<title>`` kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import inspect
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver
from multidict import CIMultiDictProxy

if TYPE_CHECKING:  # a TypedDict since aiohttp 3.10; Debian 12's 3.8 takes the same plain dict
    from aiohttp.abc import ResolveResult

from agent.net import failures
from agent.net.addr import endpoint
from agent.net.observations import HTTPRequest

# The body kept in the record, in characters: blockpages and most error pages fit whole (the
# OONI export marks longer ones body_is_truncated).  Length and SHA-256 cover the whole body.
BODY_HEAD_CHARS = 16384
TITLE_MAX = 256
_TITLE_SCAN_BYTES = 65536
_TITLE_OPEN = re.compile(rb"<title(?=[\s>/])", re.IGNORECASE)
_TITLE_CLOSE = re.compile(rb"</title\s*>", re.IGNORECASE)
_CHARSET_RE = re.compile(r"charset=[\"']?([A-Za-z0-9_.:-]+)", re.IGNORECASE)
_CHUNK = 65536


def _accept_encoding() -> str:
    try:  # aiohttp decodes brotli only when a brotli module is installed
        import brotli  # noqa: F401
    except ImportError:
        return "gzip, deflate"
    return "gzip, deflate, br"


BROWSER_HEADERS: Mapping[str, str] = {
    "User-Agent": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
    ),
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-US,en;q=0.9",
    "Accept-Encoding": _accept_encoding(),
    "Upgrade-Insecure-Requests": "1",
}


class ResolutionFailed(OSError):
    """A redirect target did not resolve; carries the DNS failure string."""

    def __init__(self, host: str, failure: str) -> None:
        super().__init__(f"cannot resolve {host}: {failure}")
        self.ooni_failure = failure


Lookup = Callable[[str], Awaitable[Sequence[str]]]


class PinnedResolver(AbstractResolver):
    """Pinned addresses for known hosts; ``lookup`` (our DNS code) for the others."""

    def __init__(self, pins: Mapping[str, Sequence[str]], lookup: Lookup | None) -> None:
        self._pins = {host.lower().rstrip("."): tuple(addrs) for host, addrs in pins.items()}
        self._lookup = lookup

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        key = host.lower().rstrip(".")
        addrs: Sequence[str] = self._pins.get(key, ())
        if not addrs and self._lookup is not None:
            addrs = tuple(await self._lookup(key))
            self._pins[key] = tuple(addrs)
        if not addrs:
            raise ResolutionFailed(host, failures.DNS_NO_ANSWER)
        results: list[ResolveResult] = [
            {
                "hostname": host,
                "host": ip,
                "port": port,
                "family": socket.AF_INET6 if ":" in ip else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for ip in addrs
        ]
        return results

    async def close(self) -> None:
        """Nothing to release: lookups are one-shot sockets."""


@dataclass(frozen=True, slots=True)
class FetchLimits:
    connect_timeout: float = 10.0
    read_timeout: float = 10.0
    total_timeout: float = 20.0
    max_body_bytes: int = 1_048_576
    max_redirects: int = 10


def extract_title(body: bytes, charset: str | None) -> str:
    """The document's ``<title>``, entity-decoded, whitespace collapsed, bounded.

    Linear in the scanned prefix whatever the page holds (a page of ten thousand ``<title>``
    openings costs one pass, not one pass per opening): find the first opening tag, the end of
    that tag, then the first closing tag after it.  Probe and control helper both use this, so
    their titles compare.
    """
    head = body[:_TITLE_SCAN_BYTES]
    opening = _TITLE_OPEN.search(head)
    if opening is None:
        return ""
    tag_end = head.find(b">", opening.end())
    if tag_end < 0:
        return ""
    closing = _TITLE_CLOSE.search(head, tag_end + 1)
    if closing is None:
        return ""
    text = _decode(head[tag_end + 1 : closing.start()], charset or "utf-8")
    return " ".join(html.unescape(text[: TITLE_MAX * 8]).split())[:TITLE_MAX]


def _decode(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset, errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


def charset_of(headers: Mapping[str, str]) -> str:
    content_type = headers.get("Content-Type", "") or headers.get("content-type", "")
    match = _CHARSET_RE.search(content_type)
    return match.group(1) if match else "utf-8"


def flatten_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """Repeated headers joined with ", " (Set-Cookie included), original capitalisation."""
    out: dict[str, str] = {}
    lower: dict[str, str] = {}
    for name, value in headers.items():
        key = lower.setdefault(name.lower(), name)
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


class _SocketTracker:
    """Learns which address each connection reached (and from which local address).

    aiohttp releases a connection as soon as a small response is read, so the response cannot
    be asked for its peer afterwards; instead the connector creates its sockets through
    :meth:`factory` and, once a connection is up, :meth:`on_connected` reads the peer of the
    socket that won (happy-eyeballs losers are closed by then).
    """

    def __init__(self, on_local: Callable[[str], None] | None) -> None:
        self.peer: str | None = None
        self._socks: list[socket.socket] = []
        self._on_local = on_local
        self.hops: list[tuple[str, str | None]] = []  # (URL that answered 3xx, its Location)

    def factory(self, addr_info: Any) -> socket.socket:
        family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
        sock = socket.socket(family=family, type=type_, proto=proto)
        self._socks.append(sock)
        return sock

    async def on_connected(self, session: Any, trace_ctx: Any, params: Any) -> None:
        for sock in reversed(self._socks):
            try:
                peer = sock.getpeername()
                local = sock.getsockname()
            except OSError:
                continue
            self.peer = endpoint(str(peer[0]), int(peer[1]))
            if self._on_local is not None:
                self._on_local(str(local[0]))
            break
        self._socks.clear()

    async def on_redirect(self, session: Any, trace_ctx: Any, params: Any) -> None:
        response = params.response
        self.hops.append((str(response.url), response.headers.get("Location")))
        self.peer = None  # the next hop connects anew; do not blame it on this one's peer

    def chain(self) -> tuple[str, ...]:
        """The redirect targets followed before a failure, the one being fetched last."""
        urls = [url for url, _ in self.hops[1:]]
        if self.hops:
            last, location = self.hops[-1]
            target = _join(last, location)
            if target is not None and target != last:
                urls.append(target)
        return tuple(urls)

    def trace(self) -> aiohttp.TraceConfig:
        config = aiohttp.TraceConfig()
        config.on_connection_create_end.append(self.on_connected)
        config.on_request_redirect.append(self.on_redirect)
        return config

    def note_transport(self, transport: Any) -> None:
        """Both ends of a connection that is up (the path without a socket factory)."""
        if transport is None:
            return
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if peer:
            self.peer = endpoint(str(peer[0]), int(peer[1]))
        if local and self._on_local is not None:
            self._on_local(str(local[0]))


# aiohttp >= 3.12 lets the connector create sockets through a factory; older ones (Debian 12
# ships 3.8) do not, and _EndsConnector reads each new connection's transport instead.
SOCKET_FACTORY = "socket_factory" in inspect.signature(aiohttp.TCPConnector.__init__).parameters


class _EndsConnector(aiohttp.TCPConnector):
    """A connector that tells the tracker both ends of every connection it makes."""

    def __init__(self, *args: Any, tracker: _SocketTracker, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tracker = tracker

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        protocol = await super()._create_connection(*args, **kwargs)
        self._tracker.note_transport(getattr(protocol, "transport", None))
        return protocol


def _join(base: str, location: str | None) -> str | None:
    """Where a Location header points, as an absolute http(s) URL; None when it does not."""
    if not location:
        return None
    try:
        target = yarl.URL(base).join(yarl.URL(location))
    except (ValueError, TypeError):
        return None
    if target.scheme not in ("http", "https") or not target.raw_host:
        return None
    return str(target.with_fragment(None))


async def fetch(
    url: str,
    *,
    pins: Mapping[str, Sequence[str]],
    lookup: Lookup | None,
    ssl_context: ssl.SSLContext,
    limits: FetchLimits,
    origin: float,
    body_budget: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_local_address: Callable[[str], None] | None = None,
    headers: Mapping[str, str] = BROWSER_HEADERS,
) -> Fetched:
    """GET ``url`` following up to ``limits.max_redirects`` redirects; never raises for I/O.

    ``body_budget`` caps the bytes read further (what is left of the run's data budget);
    ``on_local_address`` hears the local end of every connection (for scrubbing).
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    cap = limits.max_body_bytes if body_budget is None else max(0, min(
        limits.max_body_bytes, body_budget))
    tracker = _SocketTracker(on_local_address)
    options: dict[str, Any] = {
        "resolver": PinnedResolver(pins, lookup), "ssl": ssl_context, "force_close": True,
        "use_dns_cache": False, "limit": 4,
    }
    connector = (
        aiohttp.TCPConnector(socket_factory=tracker.factory, **options) if SOCKET_FACTORY
        else _EndsConnector(tracker=tracker, **options)
    )
    timeout = aiohttp.ClientTimeout(
        total=limits.total_timeout,
        sock_connect=limits.connect_timeout,
        sock_read=limits.read_timeout,
    )
    state = _Partial()
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=dict(headers),
            trace_configs=[tracker.trace()],
        ) as session, session.get(
            url, allow_redirects=True, max_redirects=limits.max_redirects
        ) as resp:
            state.response(resp, tracker.peer)
            await state.read_body(resp, cap, on_bytes)
    except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError, ValueError) as exc:
        if isinstance(exc, aiohttp.TooManyRedirects):
            state.redirects = tuple(str(r.url) for r in exc.history[1:])
        elif tracker.hops and state.status is None:
            state.redirects = tracker.chain()
        state.failure = failures.classify(exc)
        state.address = state.address or tracker.peer
    now = loop.time()
    request = state.build(url, round(t0 - origin, 6), round(now - origin, 6))
    return Fetched(request=request, body_truncated=state.truncated)


@dataclass(frozen=True, slots=True)
class Fetched:
    request: HTTPRequest
    body_truncated: bool  # the body was longer than the byte limit; length and hash are partial


class _Partial:
    """What was learnt so far, so a reset mid-body still yields status, headers and body head."""

    def __init__(self) -> None:
        self.failure: str | None = None
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.address: str | None = None
        self.redirects: tuple[str, ...] = ()
        self.body: bytearray = bytearray()
        self.body_length: int | None = None
        self.digest = hashlib.sha256()
        self.charset = "utf-8"
        self.truncated = False

    def response(self, resp: aiohttp.ClientResponse, peer: str | None) -> None:
        self.status = resp.status
        self.headers = flatten_headers(resp.headers)
        self.charset = charset_of(self.headers)
        self.address = peer
        if resp.history:
            self.redirects = tuple(str(r.url) for r in (*resp.history[1:], resp))

    async def read_body(
        self,
        resp: aiohttp.ClientResponse,
        cap: int,
        on_bytes: Callable[[int], None] | None,
    ) -> None:
        self.body_length = 0
        while self.body_length < cap:
            chunk = await resp.content.read(min(_CHUNK, cap - self.body_length))
            if not chunk:
                return
            self.body_length += len(chunk)
            self.digest.update(chunk)
            if len(self.body) < _TITLE_SCAN_BYTES:
                self.body += chunk[: _TITLE_SCAN_BYTES - len(self.body)]
            if on_bytes is not None:
                on_bytes(len(chunk))
        self.truncated = not resp.content.at_eof()

    def build(self, url: str, t0: float, t: float) -> HTTPRequest:
        body = bytes(self.body)
        has_body = self.body_length is not None
        return HTTPRequest(
            url=url,
            method="GET",
            address=self.address,
            failure=self.failure,
            status_code=self.status,
            headers=self.headers,
            body_length=self.body_length,
            body_sha256=self.digest.hexdigest() if has_body else None,
            body_head=_decode(body, self.charset)[:BODY_HEAD_CHARS] if has_body else "",
            title=extract_title(body, self.charset) if has_body else "",
            redirects=self.redirects,
            t0=t0,
            t=t,
        )
