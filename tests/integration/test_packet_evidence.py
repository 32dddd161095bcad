"""Packet evidence on loopback: the packet process captures a real flow the server resets.

Needs CAP_NET_RAW, scapy and tcpdump (skipped, with the reason, where they are missing); all
traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import struct
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from agent.config import AgentConfig, NetConfig
from agent.engine.runner import MeasureContext
from agent.errors import PacketsUnavailable
from agent.experiments import forensics
from agent.experiments.web_connectivity import with_evidence
from agent.experiments.web_connectivity.measure import measure
from agent.net.dns import ResolverAddress
from agent.net.rawprobe.client import PacketSettings, capture
from agent.net.rawprobe.protocol import CaptureRequest
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
    assert verdict.evidence == "packets.server_reset"
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


async def _serve(argv: list[str], sock: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
    for _ in range(200):  # bounded: up to 10 s for the socket to appear
        if sock.exists() or proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()  # our own child, by its handle
        await asyncio.wait_for(proc.wait(), 10)


@needs_raw
async def test_the_service_mode_captures_over_its_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "packets.sock"
    proc = await _serve([sys.executable, "-m", "agent.net.rawprobe.server", "--socket",
                         str(sock)], sock)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        settings = PacketSettings(socket=str(sock))
        async with capture(settings, CaptureRequest((port,), 10, 100)) as session:
            client = socket.create_connection(("127.0.0.1", port))
            conn, _ = server.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            client.close()
            # the process lets the capture settle before it answers: no sleep needed here
            packets = await session.stop([f"127.0.0.1:{port}"])
    finally:
        server.close()
        await _stop(proc)
    flags = [p.flags for p in packets if p.sport == port]
    assert "SA" in flags and any("R" in f for f in flags), flags
    assert all(p.src == "127.0.0.1" for p in packets)


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(SETPRIV is None or os.geteuid() != 0,
                    reason="needs root and setpriv to start the process without privilege")
async def test_without_the_capability_the_process_says_why() -> None:
    with tempfile.TemporaryDirectory(prefix="vigil-packets-") as tmp:
        os.chmod(tmp, 0o777)  # the unprivileged process makes its socket here
        await _unprivileged(Path(tmp) / "packets.sock")


async def _unprivileged(sock: Path) -> None:
    assert SETPRIV is not None
    proc = await _serve([SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups",
                         "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m",
                         "agent.net.rawprobe.server", "--socket", str(sock)], sock)
    try:
        with pytest.raises(PacketsUnavailable, match="CAP_NET_RAW"):
            async with capture(PacketSettings(socket=str(sock)),
                               CaptureRequest((443,), 1, 10)):
                pass
    finally:
        await _stop(proc)
