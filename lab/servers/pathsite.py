"""The far end of the path lab: a web site (HTTPS and HTTP) and a DNS resolver, one process.

Names in ``reset_names`` are refused by the server itself (a reset right after the
ClientHello or the request: the benign "the server resets" rows); every other name gets a real
handshake and a small page.  The site answers after ``delay_ms`` so an on-path injector wins
the race, as a distant server would let it.  The DNS server answers A queries from ``zone``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import sys
import threading
import time
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from lab import packets as P
from lab.servers.common import Lifetime, load_config, mark_ready

PAGE = b"<html><head><title>Path lab</title></head><body>ok</body></html>"


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class Site:
    """Blocking sockets, a thread per connection: the first segment is peeked (not consumed),
    so the name can be read before the TLS handshake starts on the same bytes."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.delay = cfg.get("delay_ms", 50) / 1000
        self.reset_names = {n.lower() for n in cfg.get("reset_names", [])}
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(cfg["cert_file"], cfg["key_file"])

    def listen(self, address: str, port: int, https: bool) -> socket.socket:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((address, port))
        srv.listen(64)
        srv.settimeout(0.5)
        threading.Thread(target=self._accept, args=(srv, https), daemon=True).start()
        return srv

    def _accept(self, srv: socket.socket, https: bool) -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn, https), daemon=True).start()

    def _handle(self, conn: socket.socket, https: bool) -> None:
        conn.settimeout(10)
        try:
            first = conn.recv(4096, socket.MSG_PEEK)
            name = P.tls_sni(first) if https else P.http_host(first)
            time.sleep(self.delay)
            if name in self.reset_names:
                _reset(conn)
                return
            stream: socket.socket = (self.tls.wrap_socket(conn, server_side=True) if https
                                     else conn)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = stream.recv(4096)
                if not chunk:
                    return
                data += chunk
            stream.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
                           + str(len(PAGE)).encode() + b"\r\nConnection: close\r\n\r\n"
                           + PAGE)
            stream.close()
        except (OSError, ssl.SSLError):
            conn.close()


class Resolver(asyncio.DatagramProtocol):
    def __init__(self, zone: dict[str, list[str]], delay: float) -> None:
        self.zone = {k.lower(): v for k, v in zone.items()}
        self.delay = delay
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        if not query.question or query.flags & dns.flags.QR:
            return
        q = query.question[0]
        name = q.name.to_text().lower().rstrip(".")
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if q.rdtype == dns.rdatatype.A and name in self.zone:
            response.answer.append(dns.rrset.from_text_list(q.name, 60, "IN", "A",
                                                            self.zone[name]))
        elif name not in self.zone:
            response.set_rcode(dns.rcode.NXDOMAIN)
        wire = response.to_wire()
        asyncio.get_running_loop().call_later(self.delay, self._send, wire, addr)

    def _send(self, wire: bytes, addr: Any) -> None:
        if self.transport is not None:
            self.transport.sendto(wire, addr)


async def main(cfg: dict[str, Any]) -> None:
    life = Lifetime(cfg)
    site = Site(cfg)
    servers = [site.listen(cfg["site"], 443, True), site.listen(cfg["site"], 80, False)]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: Resolver(cfg["zone"], cfg.get("dns_delay_ms", 30) / 1000),
        local_addr=(cfg["resolver"], 53))
    mark_ready(cfg)
    try:
        await life.wait()
    finally:
        transport.close()
        for s in servers:
            s.close()


if __name__ == "__main__":
    asyncio.run(main(load_config(sys.argv)))
