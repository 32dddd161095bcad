"""web_connectivity, the I/O half: DNS → control → TCP → TLS → HTTP into WebObservations.

For one URL::

    DNS (system resolver, A [+AAAA]; listening on after the first reply)
      │ first reply's addresses
      ├──► control helper (the uncensored view)  ──► TCP [+TLS] to addresses only it knows
      └──► TCP to the system addresses ──► TLS with SNI = host (verified; on failure a second
           handshake with a benign SNI: success proves SNI filtering) ──► HTTP GET pinned to
           the addresses that worked, Host/SNI = host, redirects followed
      └──► when the fetch died on a redirect to another endpoint: TCP [+TLS, +benign SNI] to
           that hop's addresses, so the failure can be placed at the hop's layer
    then the DNS linger window closes and every reply is recorded.

The two branches run concurrently, so the control's latency hides behind our own.  Nothing here
decides anything: ``analyze()`` (pure) reads the observations and the verdict comes from it.
An exception means the experiment could not run at all (bad input); censorship never raises.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent.errors import ControlError, PacketsUnavailable, VigilError
from agent.experiments import forensics
from agent.experiments.slots import release_slot
from agent.experiments.web_connectivity.model import WebObservations
from agent.net import failures
from agent.net import tcp as tcpnet
from agent.net import tls as tlsnet
from agent.net.addr import endpoint, is_ip
from agent.net.dns import PendingQuery, resolve_first, start_query
from agent.net.http import FetchLimits, fetch
from agent.net.observations import DNSQuery, HTTPRequest, TCPConnect, TLSHandshake
from agent.net.rawprobe import client as rawclient
from agent.net.rawprobe.protocol import CaptureRequest
from agent.wire.helper_api import ControlResponse

if TYPE_CHECKING:
    from agent.engine.runner import MeasureContext

log = logging.getLogger("vigil.web_connectivity")
NO_CONTROL = failures.unknown("no control helper configured")
_DEFAULT_PORTS = {"http": 80, "https": 443}
CAPTURE_MAX_S = 90.0  # a capture outliving the measurement ends by itself
CAPTURE_MAX_PACKETS = 800


def packet_settings(ctx: MeasureContext) -> rawclient.PacketSettings | None:
    """The ``[packets]`` section; None (no capture, no record) without an agent config."""
    if ctx.config is None:
        return None
    return rawclient.PacketSettings.from_section(ctx.config.section("packets"))


@dataclass
class _Endpoint:
    """What was learnt about one ip:port."""

    ip: str
    tcp: TCPConnect | None = None
    tls: list[TLSHandshake] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Connected and, for HTTPS, the real handshake verified: a browser would get here."""
        if self.tcp is None or self.tcp.failure is not None:
            return False
        return not self.tls or self.tls[0].failure is None


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    host: str
    port: int
    https: bool


def parse_target(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise VigilError(f"cannot measure {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in _DEFAULT_PORTS or not host:
        raise VigilError(f"cannot measure {url!r}: web_connectivity needs an http(s) URL")
    return _Target(url=url, host=host, port=port or _DEFAULT_PORTS[scheme], https=scheme == "https")


def _usable_family(ip: str, ipv6: bool | None) -> bool:
    try:
        return ipaddress.ip_address(ip).version == 4 or bool(ipv6)
    except ValueError:
        return False


def _first_unique(values: Sequence[str], limit: int) -> list[str]:
    """Distinct addresses in order, at most ``limit`` of each family: a site with eight A
    records still gets its IPv6 addresses measured (both families, as happy eyeballs)."""
    out: list[str] = []
    per_family: dict[bool, int] = {False: 0, True: 0}
    for v in values:
        v6 = ":" in v
        if v in out or per_family[v6] >= limit:
            continue
        out.append(v)
        per_family[v6] += 1
    return out


class Measurement:
    """State of one web_connectivity measurement (one URL)."""

    def __init__(self, url: str, ctx: MeasureContext) -> None:
        self.target = parse_target(url)
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.origin = self.loop.time()
        self.endpoints: dict[str, _Endpoint] = {}
        self.system_addrs: list[str] = []
        self.control: ControlResponse | None = None
        self.control_failure: str | None = None
        self.request: HTTPRequest | None = None
        self.extra: dict[str, Any] = {}
        self.hop_addrs: dict[str, tuple[str, ...]] = {}  # redirect target host -> first answer
        self.hop_tcp: list[TCPConnect] = []
        self.hop_tls: list[TLSHandshake] = []
        self.ipv6 = ctx.ipv6_active
        if ctx.net.ipv6 and not self.ipv6:
            self.extra["ipv6"] = "off: this run found the IPv6 path broken"

    # ---- top level --------------------------------------------------------------------------
    async def run(self) -> WebObservations:
        """The measurement, with a packet capture around it when one is available."""
        settings = packet_settings(self.ctx)
        if settings is None:
            return await self._run()
        try:
            cm = rawclient.capture(settings, CaptureRequest(
                ports=tuple(sorted({self.ctx.resolver.port, self.target.port})),
                seconds=CAPTURE_MAX_S, max_packets=CAPTURE_MAX_PACKETS))
            session = await cm.__aenter__()
        except PacketsUnavailable as exc:
            obs = await self._run()
            return replace(obs, packet_evidence={"status": "not_available", "reason": str(exc)})
        try:
            obs = await self._run()
            try:
                packets = await session.stop(self._evidence_endpoints())
            except PacketsUnavailable as exc:
                evidence: dict[str, Any] = {"status": "not_available", "reason": str(exc)}
            else:
                servers = [(ep.ip, self.target.port) for ep in self.endpoints.values()]
                resolver = [(self.ctx.resolver.ip, self.ctx.resolver.port)]
                evidence = {"status": "ok", "packets": len(packets),
                            "dropped": session.dropped,
                            **forensics.analyze_capture(packets, servers, resolver)}
        finally:
            await cm.__aexit__(None, None, None)
        return replace(obs, packet_evidence=evidence)

    def _evidence_endpoints(self) -> list[str]:
        eps = [endpoint(ip, self.target.port) for ip in self.endpoints]
        return [str(self.ctx.resolver), *eps]

    async def _run(self) -> WebObservations:
        queries = await self._start_dns()
        try:
            await self._first_answers(queries)
            own = asyncio.create_task(self._own_branch())
            ctl = asyncio.create_task(self._control_branch())
            try:
                await asyncio.gather(own, ctl)
            finally:
                for task in (own, ctl):
                    task.cancel()
                await asyncio.gather(own, ctl, return_exceptions=True)
            # Only the DNS linger window is left: listening, not using the network.
            release_slot()
            dns_results = tuple([await q.result() for q in queries])
        finally:
            for q in queries:
                await q.aclose()
        ignored = sum(q.ignored for q in queries)
        if ignored:
            self.extra["dns_ignored_datagrams"] = ignored
        return self._observations(dns_results)

    # ---- DNS ---------------------------------------------------------------------------------
    async def _start_dns(self) -> list[PendingQuery]:
        if is_ip(self.target.host):
            self.system_addrs = [self.target.host.strip("[]")]
            return []
        net = self.ctx.net
        types = ["A", "AAAA"] if self.ipv6 else ["A"]
        queries: list[PendingQuery] = []
        try:
            for qtype in types:
                queries.append(
                    start_query(
                        self.target.host, qtype, self.ctx.resolver, origin=self.origin,
                        timeout=net.dns_timeout, linger=net.dns_linger, retries=net.dns_retries,
                        on_bytes=self.ctx.on_bytes,
                    )
                )
        except Exception as exc:  # dnspython rejects names it cannot encode (bad input)
            for q in queries:
                await q.aclose()
            raise VigilError(f"cannot query DNS for {self.target.host!r}: {exc}") from None
        return queries

    async def _first_answers(self, queries: Sequence[PendingQuery]) -> None:
        if not queries:
            return
        replies = await asyncio.gather(*(q.first() for q in queries))
        addrs: list[str] = []
        for reply in replies:
            if reply is None:
                continue
            addrs.extend(
                a.value for a in reply.answers if a.answer_type in ("A", "AAAA")
            )
        usable = [a for a in addrs if _usable_family(a, self.ipv6)]
        self.system_addrs = _first_unique(usable, self.ctx.net.max_addresses)

    # ---- branch 1: our own view -------------------------------------------------------------
    async def _own_branch(self) -> None:
        """Every address is measured; the page is fetched as soon as one of them is usable, as
        a happy-eyeballs browser does (a dual-stack site does not wait for its slower family,
        nor for a blocked address to time out), pinned to the addresses usable by then."""
        tasks = [asyncio.create_task(self._endpoint(ip, "dns")) for ip in self.system_addrs]
        fetch: asyncio.Task[None] | None = None
        try:
            for done in asyncio.as_completed(tasks):
                await done
                if fetch is None:
                    working = [ip for ip, t in zip(self.system_addrs, tasks, strict=True)
                               if t.done() and self.endpoints[ip].usable]
                    if working:
                        fetch = asyncio.create_task(self._http(working))
            if fetch is not None:
                await fetch
            self._note_ipv6_path()
        finally:
            pending = [t for t in (*tasks, fetch) if t is not None and not t.done()]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _note_ipv6_path(self) -> None:
        """Tell the run whether IPv6 worked here while IPv4 did (a blackholing IPv6 path)."""
        if not self.ipv6:
            return
        conns = [ep.tcp for ep in self.endpoints.values() if ep.tcp is not None]
        v6 = [c for c in conns if ":" in c.ip]
        if not v6:
            return
        v4_ok = any(c.failure is None for c in conns if ":" not in c.ip)
        v6_ok = any(c.failure is None for c in v6)
        timed_out = v4_ok and all(c.failure == failures.GENERIC_TIMEOUT for c in v6)
        if self.ctx.ipv6_path.note(v6_ok, timed_out):
            log.warning("IPv6 connects time out where IPv4 works, site after site: the IPv6 "
                        "path is broken; measuring IPv4 only for the rest of this run")

    async def _http(self, addrs: list[str]) -> None:
        net = self.ctx.net
        resolver = self.ctx.resolver

        async def lookup(host: str) -> tuple[str, ...]:
            addrs = await resolve_first(
                host, resolver, timeout=net.dns_timeout, on_bytes=self.ctx.on_bytes
            )
            self.hop_addrs[host.lower().rstrip(".")] = tuple(addrs)
            return addrs

        fetched = await fetch(
            self.target.url,
            pins={self.target.host: addrs},
            lookup=lookup,
            ssl_context=self.ctx.tls.verify,
            limits=FetchLimits(
                connect_timeout=net.connect_timeout,
                read_timeout=net.read_timeout,
                total_timeout=net.http_timeout,
                max_body_bytes=net.max_body_bytes,
                max_redirects=net.max_redirects,
            ),
            origin=self.origin,
            body_budget=self.ctx.budget.remaining(),
            on_bytes=self.ctx.on_bytes,
        )
        self.request = fetched.request
        if fetched.body_truncated:
            self.extra["body_truncated"] = True
        await self._failed_hop(fetched.request)

    async def _failed_hop(self, request: HTTPRequest) -> None:
        """A fetch that died on a redirect to another endpoint: open that endpoint ourselves.

        The fetch only says "reset" or "timeout"; a TCP connect, a TLS handshake with the hop's
        name and, when that fails, one with a benign name tell at which layer it was stopped.
        """
        if request.failure is None or not request.redirects:
            return
        try:
            parts = urlsplit(request.redirects[-1])
            port = parts.port
        except ValueError:
            return
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").rstrip(".")
        if scheme not in _DEFAULT_PORTS or not host:
            return
        port = port or _DEFAULT_PORTS[scheme]
        t = self.target
        if (scheme == "https", host.lower(), port) == (t.https, t.host.lower(), t.port):
            return  # the measured endpoint itself: already measured above
        addrs = (host.strip("[]"),) if is_ip(host) else self.hop_addrs.get(host.lower(), ())
        usable = _first_unique(
            [a for a in addrs if _usable_family(a, self.ctx.net.ipv6)], self.ctx.net.max_addresses
        )
        await asyncio.gather(*(self._hop_endpoint(ip, port, host, scheme) for ip in usable))

    async def _hop_endpoint(self, ip: str, port: int, host: str, scheme: str) -> None:
        net = self.ctx.net
        conn = await tcpnet.connect(ip, port, timeout=net.connect_timeout, origin=self.origin)
        self.ctx.note_local_address(conn.local_ip)
        self.hop_tcp.append(TCPConnect(ip=ip, port=port, failure=conn.failure, t0=conn.t0,
                                       t=conn.t, origin="redirect"))
        if conn.sock is None or scheme != "https":
            conn.close()
            return
        try:
            hs = await tlsnet.handshake(
                conn.sock, host, self.ctx.tls.verify, timeout=net.tls_timeout,
                origin=self.origin, on_bytes=self.ctx.on_bytes,
            )
        finally:
            conn.close()
        self.hop_tls.append(_hop_record(ip, port, hs, "redirect"))
        if hs.failure is None or failures.is_certificate_failure(hs.failure):
            return
        conn2, benign = await tlsnet.connect_and_handshake(
            ip, port, net.benign_sni, self.ctx.tls.insecure,
            connect_timeout=net.connect_timeout, tls_timeout=net.tls_timeout,
            origin=self.origin, on_bytes=self.ctx.on_bytes,
        )
        self.ctx.note_local_address(conn2.local_ip)
        if benign is None:
            benign = tlsnet.Handshake(net.benign_sni, conn2.failure, None, None, None,
                                      conn2.t0, conn2.t)
        self.hop_tls.append(_hop_record(ip, port, benign, "redirect_benign_sni"))

    # ---- branch 2: the control's view --------------------------------------------------------
    async def _control_branch(self) -> None:
        if self.ctx.control is None:
            self.control_failure = NO_CONTROL
            return
        port = self.target.port
        try:
            self.control = await self.ctx.control.control(
                self.target.url, [endpoint(ip, port) for ip in self.system_addrs],
                body_cap=self.ctx.net.max_body_bytes,
            )
        except ControlError as exc:
            self.control_failure = getattr(exc, "failure", None) or failures.unknown(str(exc))
            return
        self.ctx.observe_client(self.control.client)
        extra = [
            ip for ip in self.control.dns.addrs
            if _usable_family(ip, self.ipv6) and ip not in self.system_addrs
        ]
        extra = _first_unique(extra, self.ctx.net.max_addresses)
        await asyncio.gather(*(self._endpoint(ip, "control") for ip in extra))

    # ---- one address: TCP, then TLS on the same connection ---------------------------------
    async def _endpoint(self, ip: str, origin: str) -> None:
        ep = self.endpoints.setdefault(ip, _Endpoint(ip))
        net = self.ctx.net
        port = self.target.port
        conn = await tcpnet.connect(ip, port, timeout=net.connect_timeout, origin=self.origin)
        self.ctx.note_local_address(conn.local_ip)
        ep.tcp = TCPConnect(ip=ip, port=port, failure=conn.failure, t0=conn.t0, t=conn.t,
                            origin=origin)
        if conn.sock is None or not self.target.https:
            conn.close()
            return
        try:
            hs = await tlsnet.handshake(
                conn.sock, self.target.host, self.ctx.tls.verify, timeout=net.tls_timeout,
                origin=self.origin, on_bytes=self.ctx.on_bytes,
            )
        finally:
            conn.close()
        sha = hs.peer_certificate_sha256
        if failures.is_certificate_failure(hs.failure):
            sha = await tlsnet.leaf_fingerprint(
                ip, port, self.target.host, self.ctx.tls, connect_timeout=net.connect_timeout,
                tls_timeout=net.tls_timeout, on_bytes=self.ctx.on_bytes,
            )
        ep.tls.append(self._handshake_record(ip, hs, "target", sha))
        if hs.failure is not None and not failures.is_certificate_failure(hs.failure):
            await self._benign_retry(ep)

    async def _benign_retry(self, ep: _Endpoint) -> None:
        """Same address, harmless SNI: if this works, the target's name was what got blocked."""
        net = self.ctx.net
        conn, hs = await tlsnet.connect_and_handshake(
            ep.ip, self.target.port, net.benign_sni, self.ctx.tls.insecure,
            connect_timeout=net.connect_timeout, tls_timeout=net.tls_timeout,
            origin=self.origin, on_bytes=self.ctx.on_bytes,
        )
        self.ctx.note_local_address(conn.local_ip)
        if hs is None:  # could not even connect again (residual blocking of the address)
            hs = tlsnet.Handshake(net.benign_sni, conn.failure, None, None, None, conn.t0, conn.t)
        ep.tls.append(self._handshake_record(ep.ip, hs, "benign_sni", hs.peer_certificate_sha256))

    def _handshake_record(
        self, ip: str, hs: tlsnet.Handshake, purpose: str, sha: str | None
    ) -> TLSHandshake:
        if purpose != "target":
            valid: bool | None = None
        elif hs.failure is None:
            valid = True
        elif failures.is_certificate_failure(hs.failure):
            valid = False
        else:
            valid = None  # no certificate was seen: the handshake never got that far
        return TLSHandshake(
            address=endpoint(ip, self.target.port),
            server_name=hs.server_name,
            purpose=purpose,
            failure=hs.failure,
            tls_version=hs.tls_version,
            cipher_suite=hs.cipher_suite,
            peer_certificate_sha256=sha,
            cert_valid_for_host=valid,
            t0=hs.t0,
            t=hs.t,
        )

    # ---- result -------------------------------------------------------------------------------
    def _observations(self, dns: tuple[DNSQuery, ...]) -> WebObservations:
        control_addrs = set(self.control.dns.addrs) if self.control is not None else set()
        tcp: list[TCPConnect] = []
        tls: list[TLSHandshake] = []
        for ep in self.endpoints.values():
            if ep.tcp is not None:
                record = ep.tcp
                if record.origin == "dns" and ep.ip in control_addrs:
                    record = TCPConnect(ip=record.ip, port=record.port, failure=record.failure,
                                        t0=record.t0, t=record.t, origin="both")
                tcp.append(record)
            tls.extend(ep.tls)
        tcp.extend(self.hop_tcp)
        tls.extend(self.hop_tls)
        return WebObservations(
            input=self.target.url,
            hostname=self.target.host,
            dns=dns,
            tcp_connect=tuple(tcp),
            tls_handshakes=tuple(tls),
            requests=() if self.request is None else (self.request,),
            control=self.control,
            control_failure=self.control_failure,
            extra=self.extra,
        )


def _hop_record(ip: str, port: int, hs: tlsnet.Handshake, purpose: str) -> TLSHandshake:
    valid: bool | None = None
    if purpose == "redirect":
        if hs.failure is None:
            valid = True
        elif failures.is_certificate_failure(hs.failure):
            valid = False
    return TLSHandshake(
        address=endpoint(ip, port), server_name=hs.server_name, purpose=purpose,
        failure=hs.failure, tls_version=hs.tls_version, cipher_suite=hs.cipher_suite,
        peer_certificate_sha256=hs.peer_certificate_sha256, cert_valid_for_host=valid,
        t0=hs.t0, t=hs.t,
    )


async def measure(url: str, ctx: MeasureContext) -> WebObservations:
    """Measure one URL (all the I/O of web_connectivity)."""
    return await Measurement(url, ctx).run()
