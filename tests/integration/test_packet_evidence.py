"""Packet evidence on loopback: the packet process captures a real flow the server resets.

Needs CAP_NET_RAW, scapy and tcpdump (skipped, with the reason, where they are missing); all
traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from agent.config import AgentConfig, NetConfig
from agent.engine.runner import MeasureContext
from agent.experiments import forensics
from agent.experiments.web_connectivity import with_evidence
from agent.experiments.web_connectivity.measure import measure
from agent.net.dns import ResolverAddress
from agent.net.rawprobe.server import availability
from agent.net.tls import make_contexts
from agent.wire.record import Status, Verdict
from tests.support.net import NanoDNS, RawTLSPeer, zone_handler

FAST = NetConfig(dns_timeout=1.0, dns_linger=0.3, connect_timeout=2.0, tls_timeout=2.0,
                 read_timeout=2.0, http_timeout=4.0)
WHY_NOT = availability()
needs_raw = pytest.mark.skipif(WHY_NOT is not None, reason=f"packet capture: {WHY_NOT}")


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def resolver() -> AsyncIterator[NanoDNS]:
    server = await NanoDNS(zone_handler({"blocked.test": ["127.0.0.1"]})).start()
    yield server
    await server.stop()


def _ctx(resolver: NanoDNS, ca_file: Path, packets: dict[str, object]) -> MeasureContext:
    return MeasureContext(net=FAST, tls=make_contexts(ca_file),
                          resolver=ResolverAddress("127.0.0.1", resolver.port), control=None,
                          config=AgentConfig(sections={"packets": packets}))


@needs_raw
async def test_the_server_s_own_reset_is_not_called_injected(
        resolver: NanoDNS, ca: trustme.CA, ca_file: Path) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("blocked.test").configure_cert(server_ctx)
    peer = await RawTLSPeer("reset", only_sni=b"blocked.test", tls_context=server_ctx).start()
    try:
        obs = await measure(f"https://blocked.test:{peer.port}/",
                            _ctx(resolver, ca_file, {"spawn": True}))
    finally:
        await peer.stop()
    ev = obs.packet_evidence
    assert ev is not None and ev["status"] == "ok", ev
    assert ev["flows"], ev  # the reset flow was captured and judged
    assert all(f["verdict"] == forensics.CONSISTENT for f in ev["flows"])
    assert all(f["terminator"] == "rst" and f["ttl_delta"] == 0 for f in ev["flows"])
    assert not ev["injected"]
    [q] = ev["dns"]  # the resolver's reply, with the resolver's TTL
    assert q["replies"][0]["ttl"] == 64
    verdict = with_evidence(Verdict(status=Status.INCONCLUSIVE), ev)
    assert verdict.evidence == "packets.server_ended"
    assert "127.0.0.1:" not in str([f.get("client_port") for f in ev["flows"]])


async def test_without_a_packet_process_the_measurement_says_not_available(
        resolver: NanoDNS, ca_file: Path, tmp_path: Path) -> None:
    peer = await RawTLSPeer("reset").start()
    try:
        obs = await measure(f"https://blocked.test:{peer.port}/", _ctx(
            resolver, ca_file, {"socket": str(tmp_path / "absent.sock")}))
    finally:
        await peer.stop()
    assert obs.packet_evidence == {
        "status": "not_available",
        "reason": "no packet process (the vigil-packets service is not running)"}
    assert obs.tls_handshakes  # the measurement itself is whole
    assert with_evidence(Verdict(status=Status.INCONCLUSIVE), obs.packet_evidence).evidence is None
