"""TCP connect and TLS handshakes against local servers with a trustme CA."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from agent.net import failures
from agent.net.tcp import connect
from agent.net.tls import (
    TLSContexts,
    connect_and_handshake,
    handshake,
    leaf_fingerprint,
    make_contexts,
)
from tests.support.net import RawTLSPeer, closed_port


@pytest.fixture
def contexts(ca_file: Path) -> TLSContexts:
    return make_contexts(ca_file)


Serve = Callable[[trustme.LeafCert], Awaitable[int]]


@pytest.fixture
async def tls_site() -> AsyncIterator[Serve]:
    """Start a TLS server presenting ``cert``; returns its port."""
    servers: list[asyncio.Server] = []

    async def start(cert: trustme.LeafCert) -> int:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await reader.read(1)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


async def _handshake(port: int, sni: str, ctx: ssl.SSLContext, timeout: float = 2.0):
    loop = asyncio.get_running_loop()
    conn, hs = await connect_and_handshake(
        "127.0.0.1", port, sni, ctx, connect_timeout=2.0, tls_timeout=timeout,
        origin=loop.time(),
    )
    return conn, hs


async def test_connect_ok_reports_local_address_and_timing(tls_site, ca) -> None:
    port = await tls_site(ca.issue_cert("good.test"))
    loop = asyncio.get_running_loop()
    conn = await connect("127.0.0.1", port, timeout=2.0, origin=loop.time())
    try:
        assert conn.failure is None
        assert conn.sock is not None
        assert conn.local_ip == "127.0.0.1"
        assert 0 <= conn.t0 <= conn.t
    finally:
        conn.close()
    assert conn.sock is None


async def test_connect_refused() -> None:
    loop = asyncio.get_running_loop()
    conn = await connect("127.0.0.1", closed_port(), timeout=2.0, origin=loop.time())
    assert conn.failure == failures.CONNECTION_REFUSED
    assert conn.sock is None


async def test_connect_timeout_when_syns_go_unanswered() -> None:
    loop = asyncio.get_running_loop()
    # A loopback listener whose accept queue is full drops further SYNs: a local black hole
    # (never an outside address: tests must not send packets off this machine).
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                fillers.append(s)
            await asyncio.sleep(0.05)
            conn = await connect("127.0.0.1", port, timeout=0.3, origin=loop.time())
        finally:
            for s in fillers:
                s.close()
    assert conn.failure == failures.GENERIC_TIMEOUT
    assert conn.sock is None
    assert conn.t - conn.t0 >= 0.29


async def test_handshake_success_records_version_cipher_leaf(tls_site, ca, contexts) -> None:
    cert = ca.issue_cert("good.test")
    port = await tls_site(cert)
    _, hs = await _handshake(port, "good.test", contexts.verify)
    assert hs is not None and hs.failure is None
    assert hs.tls_version in ("TLSv1.2", "TLSv1.3")
    assert hs.cipher_suite
    der = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).public_bytes(
        encoding=__import__("cryptography.hazmat.primitives.serialization",
                            fromlist=["Encoding"]).Encoding.DER
    )
    assert hs.peer_certificate_sha256 == hashlib.sha256(der).hexdigest()
    assert hs.server_name == "good.test"
    assert 0 <= hs.t0 <= hs.t


async def test_wrong_name_is_invalid_hostname(tls_site, ca, contexts) -> None:
    port = await tls_site(ca.issue_cert("other.test"))
    _, hs = await _handshake(port, "good.test", contexts.verify)
    assert hs is not None and hs.failure == failures.SSL_INVALID_HOSTNAME


async def test_unknown_ca_is_unknown_authority(tls_site, contexts) -> None:
    stranger = trustme.CA()
    port = await tls_site(stranger.issue_cert("good.test"))
    _, hs = await _handshake(port, "good.test", contexts.verify)
    assert hs is not None and hs.failure == failures.SSL_UNKNOWN_AUTHORITY


async def test_expired_certificate_is_invalid_certificate(tls_site, ca, contexts) -> None:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = ca.issue_cert("good.test", not_before=past, not_after=past + datetime.timedelta(days=1))
    port = await tls_site(cert)
    _, hs = await _handshake(port, "good.test", contexts.verify)
    assert hs is not None and hs.failure == failures.SSL_INVALID_CERTIFICATE


async def test_leaf_fingerprint_of_an_untrusted_certificate(tls_site, contexts) -> None:
    stranger = trustme.CA()
    port = await tls_site(stranger.issue_cert("mitm.test"))
    sha = await leaf_fingerprint("127.0.0.1", port, "good.test", contexts, connect_timeout=2.0,
                                 tls_timeout=2.0)
    assert sha is not None and len(sha) == 64


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("reset", failures.CONNECTION_RESET),
        ("close", failures.EOF_ERROR),
        ("silent", failures.GENERIC_TIMEOUT),
    ],
)
async def test_censor_behaviours_during_handshake(mode: str, expected: str, contexts) -> None:
    peer = await RawTLSPeer(mode).start()
    try:
        conn, hs = await _handshake(peer.port, "blocked.test", contexts.verify, timeout=0.3)
    finally:
        await peer.stop()
    assert conn.failure is None  # TCP worked: the failure is the handshake's
    assert hs is not None and hs.failure == expected
    assert hs.tls_version is None and hs.peer_certificate_sha256 is None
    assert b"blocked.test" in peer.hellos[0]  # the SNI really was sent in clear


async def test_sni_filter_lets_a_benign_name_through(ca, contexts) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("blocked.test").configure_cert(server_ctx)
    peer = await RawTLSPeer("reset", only_sni=b"blocked.test", tls_context=server_ctx).start()
    try:
        _, blocked = await _handshake(peer.port, "blocked.test", contexts.verify)
        _, benign = await _handshake(peer.port, "example.com", contexts.insecure)
    finally:
        await peer.stop()
    assert blocked is not None and blocked.failure == failures.CONNECTION_RESET
    assert benign is not None and benign.failure is None


async def test_handshake_on_refused_port_has_no_handshake() -> None:
    contexts = make_contexts(None)
    conn, hs = await _handshake(closed_port(), "good.test", contexts.verify)
    assert conn.failure == failures.CONNECTION_REFUSED
    assert hs is None


async def test_budget_callback_sees_handshake_bytes(tls_site, ca, contexts) -> None:
    port = await tls_site(ca.issue_cert("good.test"))
    loop = asyncio.get_running_loop()
    conn = await connect("127.0.0.1", port, timeout=2.0, origin=loop.time())
    seen: list[int] = []
    try:
        assert conn.sock is not None
        hs = await handshake(conn.sock, "good.test", contexts.verify, timeout=2.0,
                             origin=loop.time(), on_bytes=seen.append)
    finally:
        conn.close()
    assert hs.failure is None
    assert sum(seen) > 500  # ClientHello + server flight


def test_bad_ca_file_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        make_contexts(bad)
