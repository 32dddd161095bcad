"""web_connectivity's measure() end to end against local servers (DNS, TLS, HTTP, control).

Everything listens on 127.0.0.0/8; the 'censor' behaviours are played by the servers
themselves (NXDOMAIN, a racing injected DNS answer, an SNI-triggered reset, a foreign
certificate).  analyze() is not under test here: these tests check the evidence.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import dns.message
import pytest
import trustme
from aiohttp import web

from agent.config import NetConfig
from agent.engine.helper_client import ControlFailed
from agent.engine.runner import MeasureContext
from agent.experiments.web_connectivity import WebConnectivity
from agent.experiments.web_connectivity.measure import NO_CONTROL, measure
from agent.experiments.web_connectivity.model import WebObservations
from agent.net import failures
from agent.net.dns import ResolverAddress
from agent.net.tls import make_contexts
from agent.wire.helper_api import ControlResponse, control_from_json
from agent.wire.record import Status, Target, Verdict
from tests.support.net import NanoDNS, RawTLSPeer, a_record, zone_handler

FAST = NetConfig(dns_timeout=1.0, dns_linger=0.1, connect_timeout=1.0, tls_timeout=1.0,
                 http_timeout=3.0, read_timeout=1.0)


class FakeControl:
    def __init__(self, answer: dict[str, Any] | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[str, list[str]]] = []

    async def control(
        self, url: str, tcp_connect: Sequence[str], body_cap: int | None = None
    ) -> ControlResponse:
        self.calls.append((url, list(tcp_connect)))
        if isinstance(self.answer, Exception):
            raise self.answer
        return control_from_json(self.answer)


def control_json(addrs: list[str], port: int, *, status: int = 200) -> dict[str, Any]:
    return {
        "dns": {"failure": None, "addrs": addrs},
        "tcp_connect": {f"{a}:{port}": {"status": True, "failure": None} for a in addrs},
        "tls_handshake": {},
        "http_request": {"failure": None, "status_code": status, "body_length": 100,
                         "title": "Hello", "headers": {}},
        "client": {"asn": "AS64500", "network_name": "Lab ISP", "cc": "IR"},
    }


@pytest.fixture
async def https_site(ca: trustme.CA) -> AsyncIterator[int]:
    async def index(request: web.Request) -> web.Response:
        return web.Response(text="<title>Hello</title>" + "x" * 80, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("site.test").configure_cert(server_ctx)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()


@pytest.fixture
async def dns_servers() -> AsyncIterator[list[NanoDNS]]:
    servers: list[NanoDNS] = []
    yield servers
    for s in servers:
        await s.stop()


async def _ctx(dns_servers: list[NanoDNS], handler: Any, ca_file: Path,
               control: Any) -> MeasureContext:
    server = await NanoDNS(handler).start()
    dns_servers.append(server)
    return MeasureContext(net=FAST, tls=make_contexts(ca_file),
                          resolver=ResolverAddress("127.0.0.1", server.port), control=control)


async def test_reachable_https_site(dns_servers, https_site, ca_file) -> None:
    control = FakeControl(control_json(["127.0.0.1"], https_site))
    ctx = await _ctx(dns_servers, zone_handler({"site.test": ["127.0.0.1"]}), ca_file, control)
    url = f"https://site.test:{https_site}/"
    obs = await measure(url, ctx)
    assert obs.hostname == "site.test"
    assert obs.dns[0].failure is None and obs.dns[0].addrs == ("127.0.0.1",)
    assert [(c.ip, c.failure, c.origin) for c in obs.tcp_connect] == [("127.0.0.1", None, "both")]
    [hs] = obs.tls_handshakes
    assert (hs.purpose, hs.server_name, hs.failure, hs.cert_valid_for_host) == (
        "target", "site.test", None, True)
    assert hs.peer_certificate_sha256 is not None
    [req] = obs.requests
    assert req.failure is None and req.status_code == 200 and req.title == "Hello"
    assert req.address == f"127.0.0.1:{https_site}"
    assert control.calls == [(url, [f"127.0.0.1:{https_site}"])]
    assert obs.control is not None and obs.control_failure is None
    assert ctx.probe.probe_asn == "AS64500" and ctx.probe.probe_cc == "IR"
    # the OONI-named rendering round-trips (analysis can be re-run on stored data)
    again = WebObservations.from_test_keys(url, obs.to_test_keys())
    assert again == obs


async def test_nxdomain_from_isp_only(dns_servers, https_site, ca_file) -> None:
    control = FakeControl(control_json(["127.0.0.1"], https_site))
    ctx = await _ctx(dns_servers, zone_handler({}), ca_file, control)
    obs = await measure(f"https://site.test:{https_site}/", ctx)
    assert obs.dns[0].failure == failures.DNS_NXDOMAIN
    assert control.calls[0][1] == []  # nothing of ours to check
    # the control's address is tried from here: reachable, so DNS is what was tampered with
    assert [(c.ip, c.failure, c.origin) for c in obs.tcp_connect] == [
        ("127.0.0.1", None, "control")]
    assert obs.tls_handshakes[0].failure is None
    assert obs.requests == ()  # no address of our own to fetch from


async def test_injected_dns_answer_is_visible_and_used(dns_servers, https_site, ca_file) -> None:
    def injected(query: dns.message.Message) -> list[tuple[float, bytes]]:
        return [(0.0, a_record(query, "127.0.0.2")), (0.03, a_record(query, "127.0.0.1"))]

    control = FakeControl(control_json(["127.0.0.1"], https_site))
    ctx = await _ctx(dns_servers, injected, ca_file, control)
    obs = await measure(f"https://site.test:{https_site}/", ctx)
    [q] = obs.dns
    assert [r.answers[0].value for r in q.replies] == ["127.0.0.2", "127.0.0.1"]
    assert q.addrs == ("127.0.0.2",)
    origins = {c.ip: c.origin for c in obs.tcp_connect}
    assert origins == {"127.0.0.2": "dns", "127.0.0.1": "control"}


async def test_sni_reset_with_benign_retry(dns_servers, ca, ca_file) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("blocked.test").configure_cert(server_ctx)
    peer = await RawTLSPeer("reset", only_sni=b"blocked.test", tls_context=server_ctx).start()
    try:
        control = FakeControl(control_json(["127.0.0.1"], peer.port))
        ctx = await _ctx(dns_servers, zone_handler({"blocked.test": ["127.0.0.1"]}), ca_file,
                         control)
        obs = await measure(f"https://blocked.test:{peer.port}/", ctx)
    finally:
        await peer.stop()
    assert obs.tcp_connect[0].failure is None
    target, benign = obs.tls_handshakes
    assert (target.purpose, target.failure, target.cert_valid_for_host) == (
        "target", failures.CONNECTION_RESET, None)
    assert (benign.purpose, benign.server_name, benign.failure) == (
        "benign_sni", "example.com", None)
    assert obs.requests == ()


async def test_foreign_certificate_keeps_its_fingerprint(dns_servers, ca_file) -> None:
    mitm = trustme.CA()
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    mitm.issue_cert("site.test").configure_cert(server_ctx)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        ctx = await _ctx(dns_servers, zone_handler({"site.test": ["127.0.0.1"]}), ca_file,
                         FakeControl(control_json(["127.0.0.1"], port)))
        obs = await measure(f"https://site.test:{port}/", ctx)
    finally:
        await runner.cleanup()
    [hs] = obs.tls_handshakes  # no benign retry: the handshake got as far as a certificate
    assert hs.failure == failures.SSL_UNKNOWN_AUTHORITY
    assert hs.cert_valid_for_host is False
    assert hs.peer_certificate_sha256 is not None and len(hs.peer_certificate_sha256) == 64
    assert obs.requests == ()


async def test_control_failure_is_recorded_not_raised(dns_servers, https_site, ca_file) -> None:
    control = FakeControl(ControlFailed(failures.CONNECTION_REFUSED))
    ctx = await _ctx(dns_servers, zone_handler({"site.test": ["127.0.0.1"]}), ca_file, control)
    obs = await measure(f"https://site.test:{https_site}/", ctx)
    assert obs.control is None
    assert obs.control_failure == failures.CONNECTION_REFUSED
    assert obs.requests[0].status_code == 200  # our own evidence is complete anyway


async def test_no_control_configured(dns_servers, https_site, ca_file) -> None:
    ctx = await _ctx(dns_servers, zone_handler({"site.test": ["127.0.0.1"]}), ca_file, None)
    obs = await measure(f"https://site.test:{https_site}/", ctx)
    assert obs.control_failure == NO_CONTROL


async def test_ip_literal_url_skips_dns(dns_servers, https_site, ca_file) -> None:
    ctx = await _ctx(dns_servers, zone_handler({}), ca_file, None)
    obs = await measure(f"http://127.0.0.1:{https_site}/", ctx)
    assert obs.dns == ()
    assert obs.tcp_connect[0].ip == "127.0.0.1" and obs.tcp_connect[0].failure is None
    assert dns_servers[0].queries == []


async def test_experiment_uses_injected_analyzer(dns_servers, https_site, ca_file) -> None:
    seen: list[WebObservations] = []

    def analyzer(obs: WebObservations, fingerprints: Any) -> Verdict:
        seen.append(obs)
        return Verdict(Status.OK, reason="test.ok")

    ctx = await _ctx(dns_servers, zone_handler({"site.test": ["127.0.0.1"]}), ca_file,
                     FakeControl(control_json(["127.0.0.1"], https_site)))
    exp = WebConnectivity(analyzer=analyzer, fingerprints=object())  # type: ignore[arg-type]
    outcome = await exp.run(Target(f"https://site.test:{https_site}/", "NEWS"), ctx)
    assert outcome.verdict.reason == "test.ok"
    assert outcome.test_keys["hostname"] == "site.test"
    assert len(seen) == 1


async def test_non_http_input_cannot_run(ca_file) -> None:
    from agent.errors import VigilError

    ctx = MeasureContext(net=FAST, tls=make_contexts(ca_file),
                         resolver=ResolverAddress("127.0.0.1", 9), control=None)
    with pytest.raises(VigilError):
        await measure("ftp://site.test/", ctx)


async def test_failed_redirect_hop_is_opened_at_each_layer(dns_servers, ca, ca_file) -> None:
    """A shortener redirects to a name whose SNI is reset: the hop's own TCP and TLS events
    (and the benign-SNI retry) are recorded, so the verdict can name the TLS layer (the
    analysis of these events is table-tested in test_analyze.py)."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("short.test", "blocked.test").configure_cert(server_ctx)
    peer = await RawTLSPeer("reset", only_sni=b"blocked.test", tls_context=server_ctx).start()
    target = f"https://blocked.test:{peer.port}/landing"

    async def hop(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(target)

    app = web.Application()
    app.router.add_get("/x", hop)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        control = FakeControl(control_json(["127.0.0.1"], port))
        zone = zone_handler({"short.test": ["127.0.0.1"], "blocked.test": ["127.0.0.1"]})
        ctx = await _ctx(dns_servers, zone, ca_file, control)
        url = f"https://short.test:{port}/x"
        obs = await measure(url, ctx)
    finally:
        await runner.cleanup()
        await peer.stop()
    [req] = obs.requests
    assert req.failure == failures.CONNECTION_RESET
    assert req.redirects == (target,)
    hop_tcp = [c for c in obs.tcp_connect if c.origin == "redirect"]
    assert [(c.port, c.failure) for c in hop_tcp] == [(peer.port, None)]
    hop_tls = [(h.purpose, h.server_name, h.failure) for h in obs.tls_handshakes
               if h.purpose.startswith("redirect")]
    assert hop_tls == [("redirect", "blocked.test", failures.CONNECTION_RESET),
                       ("redirect_benign_sni", "example.com", None)]
    again = WebObservations.from_test_keys(url, obs.to_test_keys())
    assert again == obs
