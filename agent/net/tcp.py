"""TCP connect on a raw non-blocking socket, timed, with the failure as a string.

A raw socket (not an asyncio transport) keeps the kernel's verdict intact: ECONNREFUSED,
EHOSTUNREACH and a silent drop (our timeout) stay distinguishable, and the connected socket can
be handed to :mod:`agent.net.tls` so the TLS handshake runs on the very connection measured.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from agent.net import failures


@dataclass(slots=True)
class Connection:
    """Outcome of one connect.  ``sock`` is open on success and owned by the caller."""

    ip: str
    port: int
    failure: str | None
    t0: float
    t: float
    local_ip: str | None = None
    sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


async def connect(ip: str, port: int, *, timeout: float, origin: float) -> Connection:
    """Connect to ``ip:port``; ``origin`` is the loop time the measurement started."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    t0 = loop.time()
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:  # e.g. no IPv6 support on this host
        now = loop.time()
        return Connection(ip, port, failures.classify(exc), t0 - origin, now - origin)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (ip, port))
    except (OSError, TimeoutError) as exc:
        sock.close()
        now = loop.time()
        return Connection(ip, port, failures.classify(exc), _r(t0 - origin), _r(now - origin))
    except BaseException:
        sock.close()  # cancelled: never leak the descriptor
        raise
    now = loop.time()
    try:
        local_ip = str(sock.getsockname()[0])
    except OSError:
        local_ip = None
    return Connection(ip, port, None, _r(t0 - origin), _r(now - origin), local_ip, sock)


def _r(value: float) -> float:
    return round(value, 6)
