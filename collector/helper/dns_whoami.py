"""DNS "whoami": which resolver egress address does a probe's DNS really leave from?

A probe knows its resolver only as what ``/etc/resolv.conf`` says, typically the home router
(192.168.1.1) that forwards to the ISP, or a public resolver whose queries leave from one of
many addresses.  Like OONI (``whoami.v4.powerdns.org``), the helper answers for a zone the
operator delegates to it, and the source address of each query it receives *is* the querying
resolver's egress, as seen from outside:

1. the probe resolves ``<nonce>.<zone>`` through its own resolver (a fresh random label, so no
   cache anywhere can answer it);
2. the resolver, after any chain of forwarders, asks this server, which notes
   ``nonce -> source address`` (bounded in size and time) and answers A/AAAA/TXT with that
   address, as powerdns's whoami names do;
3. the probe asks the helper over its authenticated HTTPS API what it saw for the nonce
   (``POST /api/v1/resolver``) and gets the address with its network (ASN, name, country) from
   the helper's IP database.

When the helper never saw the nonce but the probe got an answer, something between the probe
and the authoritative server answered on its own: that is recorded too (``seen: false``).

Only names inside the zone are answered (REFUSED otherwise: this is no open resolver), every
answer is authoritative with TTL 0, answers are a few bytes larger than the query (no useful
amplification), and TCP connections are capped in number, messages and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

NONCE_RE: Final = re.compile(r"^[0-9a-z]{16,48}$")
MAX_SIGHTINGS: Final = 65_536
SIGHTING_TTL_S: Final = 120.0
MAX_TCP_CONNECTIONS: Final = 256
MAX_TCP_MESSAGES: Final = 16  # per connection
TCP_IDLE_S: Final = 10.0
SOA_SERIAL: Final = 1


def canonical_address(text: str) -> str | None:
    """Text form of a socket peer address, IPv4-mapped IPv6 unwrapped; None if not an IP."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class SightingLog:
    """``nonce -> resolver address`` for the last ``ttl`` seconds, at most ``max_entries``.

    The first sighting of a nonce is kept (a resolver that retries from another egress address
    does not overwrite it); the oldest entries go first when full.
    """

    def __init__(
        self,
        max_entries: int = MAX_SIGHTINGS,
        ttl: float = SIGHTING_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, nonce: str, address: str) -> None:
        now = self._clock()
        self._expire(now)
        if nonce in self._entries:
            return
        self._entries[nonce] = (address, now)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def lookup(self, nonce: str) -> str | None:
        self._expire(self._clock())
        entry = self._entries.get(nonce.lower())
        return None if entry is None else entry[0]

    def _expire(self, now: float) -> None:
        while self._entries:
            _, (_, seen) = next(iter(self._entries.items()))
            if now - seen <= self._ttl:
                break
            self._entries.popitem(last=False)


@dataclass(frozen=True, slots=True)
class WhoamiZone:
    """The authoritative logic for one zone (pure apart from noting sightings)."""

    zone: dns.name.Name
    sightings: SightingLog
    nameserver: dns.name.Name  # the NS/SOA name (the helper's own host name)

    @classmethod
    def create(
        cls, zone: str, sightings: SightingLog, nameserver: str | None = None
    ) -> WhoamiZone:
        """Raises ValueError for a zone that is not a domain name with at least two labels."""
        try:
            name = dns.name.from_text(zone.strip().rstrip(".") + ".")
        except dns.exception.DNSException as exc:
            raise ValueError(f"the whoami zone {zone!r} is not a domain name: {exc}") from None
        if len(name.labels) < 3 or any(not label for label in name.labels[:-1]):
            raise ValueError(f"the whoami zone must be a delegated domain name, not {zone!r}")
        ns = dns.name.from_text((nameserver or f"ns.{name.to_text()}").rstrip(".") + ".")
        return cls(zone=name, sightings=sightings, nameserver=ns)

    @property
    def zone_text(self) -> str:
        return self.zone.to_text(omit_final_dot=True).lower()

    def respond(self, wire: bytes, source: str) -> bytes | None:
        """The answer to one query from ``source``; None to stay silent (not a query at all)."""
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, UnicodeError, IndexError):
            return None
        if query.flags & dns.flags.QR:
            return None  # a response: never answer those (reflection loops)
        response = dns.message.make_response(query)
        response.flags &= ~dns.flags.RA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response.to_wire()
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        q = query.question[0]
        qname = q.name
        if q.rdclass != dns.rdataclass.IN or not qname.is_subdomain(self.zone):
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        response.flags |= dns.flags.AA
        relative = qname.relativize(self.zone).labels
        address = canonical_address(source)
        if len(relative) == 0:  # the zone apex
            self._apex(response, q.rdtype)
        elif len(relative) == 1 and NONCE_RE.match(relative[0].decode("ascii", "replace").lower()):
            nonce = relative[0].decode("ascii").lower()
            if address is not None:
                self.sightings.record(nonce, address)
            self._whoami(response, qname, q.rdtype, address)
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa())
        return response.to_wire()

    def _apex(self, response: dns.message.Message, rdtype: int) -> None:
        if rdtype == dns.rdatatype.SOA:
            response.answer.append(self._soa())
        elif rdtype == dns.rdatatype.NS:
            response.answer.append(
                dns.rrset.from_text(self.zone, 0, "IN", "NS", self.nameserver.to_text())
            )
        else:
            response.authority.append(self._soa())

    def _whoami(
        self, response: dns.message.Message, qname: dns.name.Name, rdtype: int, address: str | None
    ) -> None:
        if address is not None:
            v6 = ":" in address
            if rdtype == dns.rdatatype.TXT:
                response.answer.append(dns.rrset.from_text(qname, 0, "IN", "TXT", f'"{address}"'))
                return
            if (rdtype == dns.rdatatype.A and not v6) or (rdtype == dns.rdatatype.AAAA and v6):
                kind = "AAAA" if v6 else "A"
                response.answer.append(dns.rrset.from_text(qname, 0, "IN", kind, address))
                return
        response.authority.append(self._soa())  # NODATA

    def _soa(self) -> dns.rrset.RRset:
        text = (
            f"{self.nameserver.to_text()} hostmaster.{self.zone.to_text()} "
            f"{SOA_SERIAL} 3600 600 86400 0"
        )
        return dns.rrset.from_text(self.zone, 0, "IN", "SOA", text)


# ---- transport ------------------------------------------------------------------------------
class _UDP(asyncio.DatagramProtocol):
    def __init__(self, zone: WhoamiZone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.zone.respond(data, str(addr[0]))
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


class WhoamiServer:
    """UDP and TCP listeners for a :class:`WhoamiZone` on the given addresses."""

    def __init__(self, zone: WhoamiZone, listen: Sequence[tuple[str, int]]) -> None:
        self.zone = zone
        self.listen = tuple(listen)
        self._transports: list[asyncio.DatagramTransport] = []
        self._servers: list[asyncio.Server] = []
        self._connections = 0
        self.bound: list[tuple[str, int]] = []  # actual (host, port), port 0 resolved

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for host, port in self.listen:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UDP(self.zone), local_addr=(host, port)
                )
                self._transports.append(transport)
                bound_port = int(transport.get_extra_info("sockname")[1])
                server = await asyncio.start_server(self._tcp_client, host, bound_port)
                self._servers.append(server)
                self.bound.append((host, bound_port))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        for t in self._transports:
            t.close()
        for s in self._servers:
            s.close()
        for s in self._servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()
        self._transports.clear()
        self._servers.clear()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        if self._connections >= MAX_TCP_CONNECTIONS:
            writer.close()
            return
        self._connections += 1
        try:
            for _ in range(MAX_TCP_MESSAGES):
                async with asyncio.timeout(TCP_IDLE_S):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    wire = await reader.readexactly(length)
                reply = self.zone.respond(wire, str(peer[0]))
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections -= 1
            writer.close()
