"""One control measurement: what a URL looks like from the helper's uncensored vantage.

Input (``POST /api/v1/control``, docs/control-protocol.md)::

    {"url": "https://example.org/", "tcp_connect": ["198.18.10.5:443", "[2001:db8::1]:443"]}

Steps: resolve the name (A and AAAA) with the helper's resolver; vet every address with the
target policy; TCP connect (and, for https, a TLS handshake with SNI = host, verified with the
helper's trust store) to the vetted resolved addresses *and* to the vetted addresses the probe
saw; one GET with bounded redirects, connecting only to vetted addresses.  The endpoint probes
and the GET run concurrently.

Refused (``target_forbidden``): a URL whose host is a refused IP literal, a name whose every
address is refused, a redirect to refused space.  Addresses the *probe* supplies that are
refused (a censor's bogon answer such as 10.10.34.34 is common and perfectly legitimate input)
are not contacted and are listed under ``skipped`` instead of failing the whole control.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

import dns.asyncresolver
from yarl import URL

from agent.net.addr import endpoint, parse_endpoint
from collector.helper.errors import BAD_REQUEST, TARGET_FORBIDDEN, Refusal
from collector.helper.fetch import (
    DNSOutcome,
    EndpointOutcome,
    Fetcher,
    FetchLimits,
    HTTPOutcome,
    is_ip_literal,
    parse_dns_name,
    probe_endpoint,
    resolve,
)
from collector.helper.policy import TargetPolicy, port_allowed

MAX_URL_LENGTH = 2048
MIN_BODY_CAP = 1024  # a probe's cap below this could not tell one page from another
EXTRA_PROBE_PORTS = frozenset({80, 443})  # the probe may report both for an http->https site


@dataclass(frozen=True, slots=True)
class ControlLimits:
    dns_timeout: float = 5.0
    connect_timeout: float = 5.0
    tls_timeout: float = 5.0
    http_timeout: float = 15.0
    max_redirects: int = 10
    max_body_bytes: int = 8 * 1024 * 1024
    max_addresses: int = 16


@dataclass(frozen=True, slots=True)
class ControlRequest:
    url: URL
    host: str  # IDNA-encoded host, or the IP literal without brackets
    port: int
    tcp_connect: tuple[tuple[str, str, int], ...]  # (key as echoed, ip, port)
    body_cap: int | None = None  # the probe reads at most this many body bytes: so do we


def _bad(detail: str) -> Refusal:
    return Refusal(BAD_REQUEST, detail)


def parse_control_request(obj: Any, *, max_addresses: int) -> ControlRequest:
    """Validate the request body (already JSON-decoded); raises ``bad_request``."""
    if not isinstance(obj, dict):
        raise _bad("body must be a JSON object")
    # Other fields are ignored (a newer probe must still get answers from an older helper);
    # nothing else in the body can influence what the helper sends.
    url, host, port = _target_url(obj.get("url"))
    endpoints = _endpoints(obj.get("tcp_connect", []), port, max_addresses)
    body_cap = obj.get("body_cap")
    if body_cap is not None and (
        isinstance(body_cap, bool) or not isinstance(body_cap, int) or body_cap < MIN_BODY_CAP
    ):
        raise _bad(f"body_cap must be an integer of at least {MIN_BODY_CAP}")
    return ControlRequest(url.with_fragment(None), host, port, endpoints, body_cap)


def _target_url(raw_url: object) -> tuple[URL, str, int]:
    """The URL to measure, its host and port; refuses what the helper never fetches."""
    if not isinstance(raw_url, str) or not raw_url:
        raise _bad("url must be a non-empty string")
    if len(raw_url) > MAX_URL_LENGTH:
        raise _bad(f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        url = URL(raw_url)
    except (ValueError, TypeError):
        raise _bad("url does not parse") from None
    if url.scheme not in ("http", "https"):
        raise _bad("only http and https URLs are measured")
    if url.user is not None or url.password is not None:
        raise _bad("URLs with credentials are not fetched")
    host = url.raw_host
    if not host:
        raise _bad("url has no host")
    try:
        port = url.port
    except ValueError:
        raise _bad("url has an invalid port") from None
    if port is None or not 0 < port < 65536:
        raise _bad("url has an invalid port")
    if not is_ip_literal(host):
        try:
            parse_dns_name(host)
        except ValueError as exc:
            raise _bad(f"url host: {exc}") from None
    return url, host, port


def _endpoints(raw: object, port: int, max_addresses: int) -> tuple[tuple[str, str, int], ...]:
    """The probe's ``tcp_connect`` list: (key as echoed, ip, port), de-duplicated."""
    if not isinstance(raw, list) or not all(isinstance(e, str) for e in raw):
        raise _bad("tcp_connect must be a list of \"ip:port\" strings")
    if len(raw) > max_addresses:
        raise _bad(f"tcp_connect lists more than {max_addresses} endpoints")
    endpoints: dict[str, tuple[str, str, int]] = {}
    allowed_ports = EXTRA_PROBE_PORTS | {port}
    for text in raw:
        try:
            ip, ep_port = parse_endpoint(text)
        except ValueError as exc:
            raise _bad(f"tcp_connect entry {text[:60]!r}: {exc}") from None
        if ep_port not in allowed_ports:
            raise _bad(f"tcp_connect port {ep_port} is neither the URL's port nor 80/443")
        key = endpoint(ip, ep_port)
        endpoints.setdefault(key, (key, ip, ep_port))
    return tuple(endpoints.values())


class ControlRunner:
    """Runs controls with shared, read-only resources (policy, resolver, TLS trust)."""

    def __init__(
        self,
        policy: TargetPolicy,
        resolver: dns.asyncresolver.Resolver,
        ssl_context: ssl.SSLContext,
        limits: ControlLimits,
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        self._ssl = ssl_context
        self.limits = limits

    async def resolve(self, host: str) -> DNSOutcome:
        return await resolve(self._resolver, host, self.limits.dns_timeout)

    async def run(self, req: ControlRequest) -> dict[str, Any]:
        """The control answer without ``client`` (the caller's network is added by the app)."""
        limits = self.limits
        if not port_allowed(req.port):
            raise Refusal(TARGET_FORBIDDEN, f"port {req.port} is not a web port the helper uses")
        if is_ip_literal(req.host):
            decision = self.policy.check(req.host)
            if not decision.allowed:
                raise Refusal(TARGET_FORBIDDEN, "the URL's address is in a refused range")
            dns = DNSOutcome(None, (str(ip_address(req.host)),))
            allowed = [str(decision.address)]
        else:
            dns = await self.resolve(req.host)
            allowed = [str(d.address) for d in map(self.policy.check, dns.addrs) if d.allowed]
            if dns.addrs and not allowed:
                # The name's own answer is unroutable (127.0.0.1, a private range).  When the
                # probe got that very answer too, confirming it is evidence (the site's DNS is
                # broken for everyone) and reveals nothing the probe does not know; connect to
                # nothing either way, and otherwise refuse as before (no internal-DNS oracle).
                seen = {str(ip_address(ip)) for _key, ip, _port in req.tcp_connect}
                confirmed = tuple(a for a in dns.addrs if str(ip_address(a)) in seen)
                if not confirmed:
                    raise Refusal(
                        TARGET_FORBIDDEN,
                        "every address the name resolves to is in a refused range",
                    )
                return _render(
                    req, DNSOutcome(None, confirmed), [],
                    HTTPOutcome(f"unknown_failure: {TARGET_FORBIDDEN}", None, None, "", {}, ()),
                    {key: TARGET_FORBIDDEN for key, _ip, _port in req.tcp_connect},
                )

        targets: dict[str, tuple[str, int]] = {}
        for ip in allowed:
            targets.setdefault(endpoint(ip, req.port), (ip, req.port))
        skipped: dict[str, str] = {}
        for key, ip, port in req.tcp_connect:
            decision = self.policy.check(ip)
            if decision.allowed:
                targets.setdefault(key, (str(decision.address), port))
            else:
                skipped[key] = TARGET_FORBIDDEN
        chosen = list(targets.items())[: limits.max_addresses]
        for key, _ in list(targets.items())[limits.max_addresses :]:
            skipped[key] = "too_many_addresses"

        https = req.url.scheme == "https"
        fetcher = Fetcher(
            self.policy,
            self.resolve,
            self._ssl,
            FetchLimits(
                max_redirects=limits.max_redirects,
                max_body_bytes=min(limits.max_body_bytes, req.body_cap or limits.max_body_bytes),
                connect_timeout=limits.connect_timeout,
                total_timeout=limits.http_timeout,
            ),
        )

        async def check_endpoint(ip: str, port: int) -> EndpointOutcome:
            return await probe_endpoint(
                self.policy,
                ip,
                port,
                server_name=req.host if https else None,
                ssl_context=self._ssl,
                connect_timeout=limits.connect_timeout,
                tls_timeout=limits.tls_timeout,
            )

        async def http() -> HTTPOutcome:
            if dns.failure is not None:
                return HTTPOutcome(dns.failure, None, None, "", {}, ())
            if not is_ip_literal(req.host):
                fetcher.pin(req.host, allowed)  # the answer above: never resolved twice
            return await fetcher.fetch(req.url)

        try:
            async with asyncio.TaskGroup() as group:
                endpoint_tasks = [
                    (key, group.create_task(check_endpoint(ip, port))) for key, (ip, port) in chosen
                ]
                http_task = group.create_task(http())
        except BaseExceptionGroup as eg:
            raise _first_refusal(eg) from None

        return _render(req, dns, [(k, t.result()) for k, t in endpoint_tasks],
                       http_task.result(), skipped)


def _first_refusal(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """A refusal inside a task group is the answer; anything else propagates unchanged."""
    for exc in eg.exceptions:
        if isinstance(exc, Refusal):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            inner = _first_refusal(exc)
            if isinstance(inner, Refusal):
                return inner
    return eg


def _render(
    req: ControlRequest,
    dns: DNSOutcome,
    endpoints: list[tuple[str, EndpointOutcome]],
    http: HTTPOutcome,
    skipped: dict[str, str],
) -> dict[str, Any]:
    tcp = {
        key: {"status": o.tcp_failure is None, "failure": o.tcp_failure} for key, o in endpoints
    }
    tls = {
        key: {"server_name": req.host, "status": o.tls_failure is None, "failure": o.tls_failure}
        for key, o in endpoints
        if o.tls_attempted
    }
    return {
        "dns": {"failure": dns.failure, "addrs": list(dns.addrs)},
        "tcp_connect": tcp,
        "tls_handshake": tls,
        "http_request": {
            "failure": http.failure,
            "status_code": http.status_code,
            "body_length": http.body_length,
            "title": http.title,
            "headers": http.headers,
            "redirects": list(http.redirects),
            "body_truncated": http.body_truncated,
        },
        "skipped": skipped,
    }
