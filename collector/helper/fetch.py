"""The control helper's outbound operations: DNS, TCP connect, TLS handshake, one HTTP(S) GET.

Every connection the helper makes is opened here and nowhere else, and every one goes through
the ``TargetPolicy`` at the last moment, on the address actually dialled:

- endpoint probes (``probe_endpoint``) dial a vetted IP from a socket this module creates;
- the HTTP fetch uses aiohttp with a *pinned* resolver that answers only with addresses already
  vetted for that host (resolved once with dnspython; never re-resolved, so DNS rebinding has no
  second answer to give) and a socket factory that re-checks the destination of every socket
  aiohttp opens, IP-literal URLs and redirect targets included.  Redirects are followed by hand
  so each hop is resolved and vetted before anything is sent to it.

OS, TLS, DNS and aiohttp errors become OONI failure strings here, at the I/O boundary.  Failure
text never includes an address (``str(OSError)`` often does), only the error's kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import html
import itertools
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address
from pathlib import Path

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.inet
import dns.name
import dns.rdatatype
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from collector.helper.errors import RESPONSE_TOO_LARGE, TARGET_FORBIDDEN, Refusal
from collector.helper.policy import TargetPolicy, port_allowed

TITLE_SCAN_BYTES = 65_536
MAX_TITLE = 256
MAX_HEADERS = 100
MAX_HEADER_VALUE = 2048
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# What a desktop browser sends; the probe sends the same kind, so both see the same page.
BROWSER_HEADERS = {
    "User-Agent": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
    ),
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-US,en;q=0.9",
}


# ---- failure strings ---------------------------------------------------------------------------
_ERRNO_FAILURES = {
    errno.ECONNREFUSED: "connection_refused",
    errno.ECONNRESET: "connection_reset",
    errno.EPIPE: "connection_reset",
    errno.ETIMEDOUT: "generic_timeout_error",
    errno.EHOSTUNREACH: "host_unreachable",
    errno.ENETUNREACH: "network_unreachable",
}

# OpenSSL X509_V_ERR codes: hostname/IP mismatch, and the "who signed this?" family.
_HOSTNAME_MISMATCH = frozenset({62, 64})
_UNKNOWN_AUTHORITY = frozenset({2, 18, 19, 20, 21, 27})


def failure_string(exc: BaseException) -> str:
    """OONI failure string for an exception raised by a network operation."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return failure_string(exc.certificate_error)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return failure_string(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "eof_error"
    if isinstance(exc, aiohttp.ClientPayloadError):
        cause = exc.__cause__
        return failure_string(cause) if cause is not None else "eof_error"
    if isinstance(exc, TimeoutError | dns.exception.Timeout):
        return "generic_timeout_error"
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _HOSTNAME_MISMATCH:
            return "ssl_invalid_hostname"
        if code in _UNKNOWN_AUTHORITY:
            return "ssl_unknown_authority"
        return "ssl_invalid_certificate"
    if isinstance(exc, ssl.SSLEOFError | asyncio.IncompleteReadError | EOFError):
        return "eof_error"
    if isinstance(exc, ssl.SSLError):
        return "ssl_failed_handshake"
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "connection_reset"
    if isinstance(exc, OSError) and exc.errno in _ERRNO_FAILURES:
        return _ERRNO_FAILURES[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return f"unknown_failure: {exc.strerror}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "unknown_failure: invalid HTTP response"
    return f"unknown_failure: {type(exc).__name__}"


def dns_failure_string(exc: BaseException) -> str:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "dns_nxdomain_error"
    if isinstance(exc, dns.resolver.NoAnswer):
        return "dns_no_answer"
    if isinstance(exc, dns.resolver.NoNameservers):
        rcodes = {str(e[3]) for e in exc.kwargs.get("errors", ()) if isinstance(e[3], str)}
        if "SERVFAIL" in rcodes:
            return "dns_servfail_error"
        if "REFUSED" in rcodes:
            return "dns_refused_error"
        return "dns_servfail_error" if rcodes else "unknown_failure: no nameserver answered"
    if isinstance(exc, dns.exception.Timeout):
        return "generic_timeout_error"
    return failure_string(exc)


# ---- DNS ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DNSOutcome:
    failure: str | None
    addrs: tuple[str, ...]


def make_resolver(nameserver: tuple[str, int] | None) -> dns.asyncresolver.Resolver:
    """dnspython resolver: the system's (/etc/resolv.conf) or one explicit server."""
    if nameserver is None:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [nameserver[0]]
        resolver.port = nameserver[1]
    resolver.cache = dns.resolver.LRUCache(20_000)
    return resolver


def parse_dns_name(host: str) -> dns.name.Name:
    """Absolute DNS name of a URL host (already IDNA-encoded by yarl); ValueError if invalid."""
    try:
        return dns.name.from_text(host.rstrip(".") + ".")
    except dns.exception.DNSException as exc:
        raise ValueError(f"not a valid host name ({exc.__class__.__name__})") from None


async def resolve(
    resolver: dns.asyncresolver.Resolver, host: str, timeout: float
) -> DNSOutcome:
    """A and AAAA in parallel, from the helper's vantage; addresses de-duplicated, A first."""
    name = parse_dns_name(host)

    async def one(rdtype: dns.rdatatype.RdataType) -> list[str]:
        answer = await resolver.resolve(name, rdtype, search=False, lifetime=timeout)
        return [rr.to_text() for rr in answer]

    results = await asyncio.gather(
        one(dns.rdatatype.A), one(dns.rdatatype.AAAA), return_exceptions=True
    )
    addrs: dict[str, None] = {}
    errors: list[BaseException] = []
    for result in results:
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            errors.append(result)
        else:
            addrs.update(dict.fromkeys(result))
    if addrs:
        return DNSOutcome(None, tuple(addrs))
    nx = [e for e in errors if isinstance(e, dns.resolver.NXDOMAIN)]
    return DNSOutcome(dns_failure_string(nx[0] if nx else errors[0]), ())


# ---- TCP and TLS to one endpoint ----------------------------------------------------------------
class ForbiddenAddress(OSError):
    """Raised before a socket connects to an address the policy refuses."""


def guarded_socket(policy: TargetPolicy, family: int, ip: str) -> socket.socket:
    """A socket for ``ip``, created only if the policy allows it (the last check)."""
    if not policy.allows(ip):
        raise ForbiddenAddress(errno.EACCES, "destination refused by the target policy")
    return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)


@dataclass(frozen=True, slots=True)
class EndpointOutcome:
    tcp_failure: str | None
    tls_failure: str | None  # meaningful only when tls was attempted
    tls_attempted: bool


async def probe_endpoint(
    policy: TargetPolicy,
    ip: str,
    port: int,
    *,
    server_name: str | None,
    ssl_context: ssl.SSLContext,
    connect_timeout: float,
    tls_timeout: float,
) -> EndpointOutcome:
    """TCP connect to ip:port and, when ``server_name`` is given, a TLS handshake with that SNI
    verified against the helper's trust store.  Nothing is sent after the handshake."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = guarded_socket(policy, family, ip)
    loop = asyncio.get_running_loop()
    transport: asyncio.Transport | None = None
    try:
        sock.setblocking(False)
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.sock_connect(sock, (ip, port))
        except Exception as exc:  # every failure is data here
            return EndpointOutcome(failure_string(exc), None, False)
        if server_name is None:
            return EndpointOutcome(None, None, False)
        transport, protocol = await loop.create_connection(asyncio.Protocol, sock=sock)
        try:
            tls = await loop.start_tls(
                transport,
                protocol,
                ssl_context,
                server_hostname=server_name,
                ssl_handshake_timeout=tls_timeout,
            )
        except Exception as exc:
            return EndpointOutcome(None, failure_string(exc), True)
        if tls is not None:
            transport = tls
        return EndpointOutcome(None, None, True)
    finally:
        # Nothing is sent after the handshake, so no close_notify dance: abort is enough.
        if transport is not None:
            transport.abort()
        else:
            sock.close()


# ---- HTTP ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HTTPOutcome:
    failure: str | None
    status_code: int | None
    body_length: int | None
    title: str
    headers: dict[str, str]
    redirects: tuple[str, ...]


def host_key(host: str) -> str:
    return host.lower().rstrip(".")


class PinnedResolver(AbstractResolver):
    """An aiohttp resolver that knows only the vetted addresses it was given, per host."""

    def __init__(self) -> None:
        self._pins: dict[str, tuple[str, ...]] = {}

    def pin(self, host: str, addrs: Sequence[str]) -> None:
        self._pins[host_key(host)] = tuple(addrs)

    def pinned(self, host: str) -> bool:
        return host_key(host) in self._pins

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addrs = self._pins.get(host_key(host))
        if not addrs:
            raise OSError(errno.EACCES, "host was not resolved and vetted by the helper")
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for a in addrs
        ]

    async def close(self) -> None:
        return None


Resolve = Callable[[str], Awaitable[DNSOutcome]]


@dataclass(frozen=True, slots=True)
class FetchLimits:
    max_redirects: int
    max_body_bytes: int
    connect_timeout: float
    total_timeout: float


def is_ip_literal(host: str) -> bool:
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class Fetcher:
    """One HTTP(S) GET with bounded, hand-followed redirects, every hop vetted."""

    def __init__(
        self,
        policy: TargetPolicy,
        resolve_host: Resolve,
        ssl_context: ssl.SSLContext,
        limits: FetchLimits,
    ) -> None:
        self._policy = policy
        self._resolve = resolve_host
        self._ssl = ssl_context
        self._limits = limits
        self._resolver = PinnedResolver()
        self.forbidden_attempts = 0

    def _socket_factory(
        self, addr_info: tuple[int, int, int, str, tuple[object, ...]]
    ) -> socket.socket:
        family, _type, _proto, _canon, sockaddr = addr_info
        try:
            return guarded_socket(self._policy, family, str(sockaddr[0]))
        except ForbiddenAddress:
            self.forbidden_attempts += 1
            raise

    def _vet_literal(self, host: str) -> None:
        if not self._policy.allows(host.strip("[]")):
            raise Refusal(TARGET_FORBIDDEN, "the URL or a redirect points at a refused address")

    async def _vet_host(self, host: str) -> str | None:
        """Resolve and pin a host name; returns a DNS failure string, raises when forbidden."""
        if is_ip_literal(host):
            self._vet_literal(host)
            return None
        if self._resolver.pinned(host):
            return None
        outcome = await self._resolve(host)
        if outcome.failure is not None:
            return outcome.failure
        self.pin(host, outcome.addrs)
        return None

    def pin(self, host: str, addrs: Sequence[str]) -> None:
        """Give a host its vetted addresses; raise ``target_forbidden`` when none is allowed."""
        allowed = [str(d.address) for d in map(self._policy.check, addrs) if d.allowed]
        if not allowed:
            raise Refusal(TARGET_FORBIDDEN, "every address of a host to fetch is refused")
        self._resolver.pin(host, allowed)

    async def fetch(self, url: URL) -> HTTPOutcome:
        limits = self._limits
        connector = aiohttp.TCPConnector(
            resolver=self._resolver,
            socket_factory=self._socket_factory,
            ssl=self._ssl,
            use_dns_cache=False,
            force_close=True,
            limit=4,
        )
        timeout = aiohttp.ClientTimeout(
            total=limits.total_timeout, sock_connect=limits.connect_timeout
        )
        redirects: list[str] = []
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers=BROWSER_HEADERS,
            trust_env=False,  # never through a proxy from the environment
        ) as session:
            for _hop in range(limits.max_redirects + 1):
                host = url.raw_host or ""
                if url.port is None or not port_allowed(url.port):
                    raise Refusal(TARGET_FORBIDDEN, "a redirect points at a non-web port")
                failure = await self._vet_host(host)
                if failure is not None:
                    return HTTPOutcome(failure, None, None, "", {}, tuple(redirects))
                try:
                    async with session.get(url, allow_redirects=False) as resp:
                        location = resp.headers.get("Location")
                        if resp.status in REDIRECT_STATUSES and location:
                            next_url = _redirect_target(url, location)
                            if isinstance(next_url, str):
                                return HTTPOutcome(
                                    next_url, resp.status, None, "", {}, tuple(redirects)
                                )
                            url = next_url
                            redirects.append(str(url))
                            continue
                        return await self._read(resp, tuple(redirects))
                except Refusal:
                    raise
                except Exception as exc:
                    if self.forbidden_attempts:
                        raise Refusal(
                            TARGET_FORBIDDEN, "a connection to a refused address was attempted"
                        ) from None
                    return HTTPOutcome(failure_string(exc), None, None, "", {}, tuple(redirects))
            return HTTPOutcome(
                "unknown_failure: too many redirects", None, None, "", {}, tuple(redirects)
            )

    async def _read(
        self, resp: aiohttp.ClientResponse, redirects: tuple[str, ...]
    ) -> HTTPOutcome:
        cap = self._limits.max_body_bytes
        headers = _headers_json(resp)
        if resp.content_length is not None and resp.content_length > cap:
            raise Refusal(
                RESPONSE_TOO_LARGE,
                f"the page declares {resp.content_length} bytes; the helper reads at most {cap}",
            )
        head = bytearray()
        total = 0
        try:
            async for chunk in resp.content.iter_chunked(65_536):
                total += len(chunk)
                if total > cap:
                    raise Refusal(
                        RESPONSE_TOO_LARGE, f"the page is over the helper's {cap}-byte limit"
                    )
                if len(head) < TITLE_SCAN_BYTES:
                    head += chunk[: TITLE_SCAN_BYTES - len(head)]
        except Refusal:
            raise
        except Exception as exc:
            return HTTPOutcome(failure_string(exc), resp.status, None, "", headers, redirects)
        title = extract_title(bytes(head), resp.charset)
        return HTTPOutcome(None, resp.status, total, title, headers, redirects)


def _redirect_target(current: URL, location: str) -> URL | str:
    """The next URL, or a failure string when the Location cannot be followed."""
    try:
        target = current.join(URL(location))
    except (ValueError, TypeError):
        return "unknown_failure: invalid redirect location"
    if target.scheme not in ("http", "https") or not target.raw_host:
        return "unknown_failure: redirect to an unsupported URL"
    if target.user is not None or target.password is not None:
        return "unknown_failure: redirect to a URL with credentials"
    return target.with_fragment(None)


def _headers_json(resp: aiohttp.ClientResponse) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in resp.headers.items():
        if len(out) >= MAX_HEADERS:
            break
        out.setdefault(name, value[:MAX_HEADER_VALUE])
    return out


def extract_title(head: bytes, charset: str | None) -> str:
    """The page's <title>, unescaped and whitespace-collapsed, at most 256 characters.

    Untrusted bytes: one forward pass of ``bytes.find`` (linear), never a regular expression
    that backtracks (``<title[^>]*>(.*?)</title>`` is quadratic on a page of repeated
    ``<title>`` without a closing tag).
    """
    lower = head.lower()
    start = lower.find(b"<title")
    while start != -1 and lower[start + 6 : start + 7] not in (b">", b" ", b"\t", b"\n", b"\r",
                                                                b"\f", b"/"):
        start = lower.find(b"<title", start + 6)  # <titlefoo> is another tag
    if start == -1:
        return ""
    opened = lower.find(b">", start + 6)
    if opened == -1:
        return ""
    closed = lower.find(b"</title", opened + 1)
    if closed == -1:
        return ""
    raw = head[opened + 1 : closed]
    try:
        text = raw.decode(charset or "utf-8", errors="replace")
    except LookupError:
        text = raw.decode("utf-8", errors="replace")
    return " ".join(html.unescape(text).split())[:MAX_TITLE]


# ---- the helper's own addresses -----------------------------------------------------------------
def local_addresses(proc: Path = Path("/proc/net")) -> set[str]:
    """Addresses configured on this host's interfaces (Linux /proc; empty elsewhere).

    Only interface addresses can be seen from inside: a public address NATed to the host (cloud
    1:1 NAT) must be configured as a deny range by the operator.
    """
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for line in (proc / "if_inet6").read_text().splitlines():
            hexaddr = line.split()[0] if line.split() else ""
            if len(hexaddr) == 32:
                found.add(str(IPv6Address(int(hexaddr, 16))))
    with contextlib.suppress(OSError):
        lines = (proc / "fib_trie").read_text().splitlines()
        for prev, line in itertools.pairwise(lines):
            if "/32 host LOCAL" in line:
                candidate = prev.strip().removeprefix("|-- ").strip()
                with contextlib.suppress(ValueError):
                    found.add(str(ip_address(candidate)))
    return found
