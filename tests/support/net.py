"""In-process servers for the net-layer tests, all on 127.0.0.1 (never the internet).

* :class:`NanoDNS`: a UDP DNS server whose handler decides, per query, what goes back: an
  answer, nothing (drop), garbage bytes, or several datagrams (an injected answer racing the
  real one), each after its own delay.  The idea follows dnspython's tests/nanonameserver.py.
* :class:`RawTLSPeer`: a TCP server that misbehaves during the TLS handshake the way censors
  do: RST on the ClientHello, a polite close (FIN), or silence.
* :func:`tls_server`: an aiohttp HTTPS/HTTP site with a trustme certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import dns.message
import dns.rcode
import dns.rrset

Reply = tuple[float, bytes]  # (delay in seconds, datagram)
Handler = Callable[[dns.message.Message], Iterable[Reply]]


def answer(query: dns.message.Message, *records: tuple[str, str, str], rcode: int = 0,
           ttl: int = 300) -> bytes:
    """A response to ``query`` with (name, type, value) records."""
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.Rcode.make(rcode))
    for name, rdtype, value in records:
        response.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, value))
    return response.to_wire()


def a_record(query: dns.message.Message, *ips: str, ttl: int = 300) -> bytes:
    name = query.question[0].name.to_text()
    return answer(query, *((name, "A", ip) for ip in ips), ttl=ttl)


class _DNSProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: NanoDNS) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server.queries.append(data)
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        for delay, payload in self.server.handler(query):
            task = asyncio.get_running_loop().call_later(delay, self._send, payload, addr)
            self.server.pending.append(task)

    def _send(self, payload: bytes, addr: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(payload, addr)


TCPHandler = Callable[[dns.message.Message], "bytes | None"]
"""DNS over TCP: the answer to send, ``b""`` to stay silent, or None to reset the connection."""


@dataclass
class NanoDNS:
    handler: Handler
    tcp_handler: TCPHandler | None = None  # also listen on TCP, same port, when given
    queries: list[bytes] = field(default_factory=list)
    tcp_queries: list[bytes] = field(default_factory=list)
    pending: list[asyncio.TimerHandle] = field(default_factory=list)
    port: int = 0
    _transport: asyncio.DatagramTransport | None = None
    _tcp: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> NanoDNS:
        loop = asyncio.get_running_loop()
        for _ in range(10):  # the TCP port of the same number may be taken: try another
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _DNSProtocol(self), local_addr=("127.0.0.1", 0)
            )
            port = transport.get_extra_info("sockname")[1]
            if self.tcp_handler is None:
                break
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, "127.0.0.1", port)
            except OSError:
                transport.close()
                continue
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        self._transport = transport
        self.port = port
        return self

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        assert self.tcp_handler is not None
        try:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            wire = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.tcp_queries.append(wire)
        reply = self.tcp_handler(dns.message.from_wire(wire))
        if reply is None:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if reply:
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
            writer.close()
            return
        with contextlib.suppress(ConnectionError):
            await reader.read()  # silent: hold the connection until the client gives up

    async def stop(self) -> None:
        for handle in self.pending:
            handle.cancel()
        if self._transport is not None:
            self._transport.close()
        for writer in self._writers:
            writer.transport.abort()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        await asyncio.sleep(0)


def zone_handler(zone: dict[str, list[str]], *, delay: float = 0.0) -> Handler:
    """Answer A queries from ``zone`` (name -> addresses); NXDOMAIN for the rest."""

    def handle(query: dns.message.Message) -> list[Reply]:
        name = query.question[0].name.to_text(omit_final_dot=True).lower()
        rdtype = query.question[0].rdtype
        if name not in zone:
            return [(delay, answer(query, rcode=dns.rcode.NXDOMAIN))]
        if rdtype != 1:  # only A records in these zones
            return [(delay, answer(query))]
        return [(delay, a_record(query, *zone[name]))]

    return handle


# ---- misbehaving TLS peers -----------------------------------------------------------------
class RawTLSPeer:
    """Accepts TCP, reads the ClientHello, then ``mode``: "reset", "close" or "silent"."""

    def __init__(self, mode: str, *, only_sni: bytes | None = None,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.mode = mode
        self.only_sni = only_sni  # misbehave only when the hello carries this name
        self.tls_context = tls_context  # otherwise complete a real handshake with this
        self.hellos: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> RawTLSPeer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            hello = await reader.read(4096)
        except ConnectionError:
            writer.close()
            return
        self.hellos.append(hello)
        if self.only_sni is not None and self.only_sni not in hello:
            if self.tls_context is not None:
                await self._complete(reader, writer, hello)
            else:
                writer.close()
            return
        sock = writer.get_extra_info("socket")
        if self.mode == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif self.mode == "close":
            writer.close()
        else:  # silent: hold the connection until the server stops
            await asyncio.sleep(30)
            writer.close()

    async def _complete(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        hello: bytes) -> None:
        """Finish a genuine handshake for an innocent SNI (benign-SNI retry succeeds)."""
        assert self.tls_context is not None
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.tls_context.wrap_bio(incoming, outgoing, server_side=True)
        incoming.write(hello)
        for _ in range(20):
            try:
                obj.do_handshake()
                writer.write(outgoing.read())
                await writer.drain()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                await writer.drain()
                data = await reader.read(4096)
                if not data:
                    break
                incoming.write(data)
            except (ssl.SSLError, ConnectionError):
                break
        writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in self._writers:
                w.transport.abort()
            await self._server.wait_closed()


def closed_port() -> int:
    """A localhost TCP/UDP port with nobody listening (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
