"""TLS handshakes driven through memory BIOs on a connected socket.

asyncio's own TLS layer reports a FIN during the handshake as ``ConnectionResetError``, which
would make a censor that closes politely indistinguishable from one that injects a RST.  Driving
``ssl.SSLObject`` ourselves keeps the socket's truth: ``recv() == b""`` is ``eof_error``, a RST is
``connection_reset``, silence is ``generic_timeout_error``.

Certificates are verified against the system trust store plus an optional extra CA file
(private deployments, the lab).  A failed verification leaves no peer certificate behind, so
:func:`leaf_fingerprint` can fetch the leaf with a non-verifying handshake: the hash of the
certificate a man-in-the-middle presented is evidence worth keeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.net import failures
from agent.net.tcp import Connection, connect

ALPN = ["http/1.1"]
_RECV = 16384


@dataclass(frozen=True, slots=True)
class TLSContexts:
    """``verify``: chain + hostname against system trust (+ extra CA); ``insecure``: none."""

    verify: ssl.SSLContext
    insecure: ssl.SSLContext


def make_contexts(ca_file: Path | None = None) -> TLSContexts:
    """Build both contexts once per run (loading the trust store costs ~10 ms on a Pi)."""
    verify = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file is not None:
        verify.load_verify_locations(cafile=str(ca_file))
    verify.set_alpn_protocols(ALPN)
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    insecure.set_alpn_protocols(ALPN)
    return TLSContexts(verify=verify, insecure=insecure)


@dataclass(frozen=True, slots=True)
class Handshake:
    server_name: str
    failure: str | None
    tls_version: str | None
    cipher_suite: str | None
    peer_certificate_sha256: str | None
    t0: float
    t: float


async def handshake(
    sock: socket.socket,
    server_name: str,
    context: ssl.SSLContext,
    *,
    timeout: float,
    origin: float,
    on_bytes: Callable[[int], None] | None = None,
) -> Handshake:
    """Run a client handshake on ``sock`` (left open: the caller owns it)."""
    loop = asyncio.get_running_loop()
    incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    t0 = loop.time()
    try:
        obj = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    except (ssl.SSLError, ValueError) as exc:  # e.g. an SNI that is not a valid name
        now = loop.time()
        return Handshake(server_name, failures.classify(exc), None, None, None,
                         _r(t0 - origin), _r(now - origin))
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await _flush(loop, sock, outgoing, on_bytes)
                    data = await loop.sock_recv(sock, _RECV)
                    if not data:
                        raise EOFError("peer closed the connection during the handshake") from None
                    if on_bytes is not None:
                        on_bytes(len(data))
                    incoming.write(data)
            await _flush(loop, sock, outgoing, on_bytes)
    except (OSError, EOFError, TimeoutError, ssl.SSLError) as exc:
        now = loop.time()
        return Handshake(server_name, failures.classify(exc), None, None, None,
                         _r(t0 - origin), _r(now - origin))
    now = loop.time()
    der = obj.getpeercert(binary_form=True)
    cipher = obj.cipher()
    return Handshake(
        server_name=server_name,
        failure=None,
        tls_version=obj.version(),
        cipher_suite=None if cipher is None else cipher[0],
        peer_certificate_sha256=None if der is None else hashlib.sha256(der).hexdigest(),
        t0=_r(t0 - origin),
        t=_r(now - origin),
    )


async def _flush(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    outgoing: ssl.MemoryBIO,
    on_bytes: Callable[[int], None] | None,
) -> None:
    data = outgoing.read()
    if data:
        await loop.sock_sendall(sock, data)
        if on_bytes is not None:
            on_bytes(len(data))


async def connect_and_handshake(
    ip: str,
    port: int,
    server_name: str,
    context: ssl.SSLContext,
    *,
    connect_timeout: float,
    tls_timeout: float,
    origin: float,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[Connection, Handshake | None]:
    """A fresh connection and a handshake on it; the socket is closed before returning."""
    conn = await connect(ip, port, timeout=connect_timeout, origin=origin)
    try:
        if conn.sock is None:
            return conn, None
        result = await handshake(
            conn.sock, server_name, context, timeout=tls_timeout, origin=origin, on_bytes=on_bytes
        )
        return conn, result
    finally:
        conn.close()


async def leaf_fingerprint(
    ip: str,
    port: int,
    server_name: str,
    contexts: TLSContexts,
    *,
    connect_timeout: float,
    tls_timeout: float,
    on_bytes: Callable[[int], None] | None = None,
) -> str | None:
    """SHA-256 of the leaf certificate presented for ``server_name``, without verifying it."""
    loop = asyncio.get_running_loop()
    _, result = await connect_and_handshake(
        ip, port, server_name, contexts.insecure, connect_timeout=connect_timeout,
        tls_timeout=tls_timeout, origin=loop.time(), on_bytes=on_bytes,
    )
    return None if result is None else result.peer_certificate_sha256


def _r(value: float) -> float:
    return round(value, 6)
