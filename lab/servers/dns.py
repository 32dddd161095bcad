"""A small DNS server for the lab: authoritative for the lab's names, or a forwarding resolver.

authoritative: answers from the zone; names under a lab zone that are not listed are
    NXDOMAIN.  A zone entry may carry a different answer for queries from the ISP's range
    (``isp``): a CDN that hands each network its nearest edge, so the ISP's resolver and
    the control's resolver legitimately disagree.
resolver: forwards to the authoritative server, except for names the censor overrides
    (NXDOMAIN, SERVFAIL, or a forged answer such as a bogon or the blockpage server).

Every answer waits ``delay_ms`` first: a real resolver is some distance away, and the on-path
injector must be able to win the race as it does in the wild.

Zone entries may carry ``aaaa`` (dual-stack and IPv6-only sites) and ``tc`` (an answer too big
for UDP: over UDP the reply is truncated, TC set and no records; over TCP it is whole).  A
resolver truncates the names in ``truncate_udp`` the same way (it asks upstream over TCP when
told to) and forwards the zones in ``delegations`` to their own servers (the control helper's
DNS whoami zone), as a recursive resolver follows an NS delegation.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
import sys
from typing import Any, cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from lab.packets import name_matches
from lab.servers.common import Lifetime, load_config, mark_ready

MAX_TCP_MESSAGES = 50  # per connection


class DNSLogic:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.role = cfg["role"]
        self.delay = float(cfg.get("delay_ms", 0)) / 1000.0
        self.ttl = int(cfg.get("ttl", 60))
        self.zone: dict[str, dict[str, list[str]]] = {
            k.lower().rstrip("."): v for k, v in cfg.get("zone", {}).items()
        }
        self.zone_suffixes = [s.lower() for s in cfg.get("zone_suffixes", ["test"])]
        self.isp_sources = [ipaddress.IPv4Network(n) for n in cfg.get("isp_sources", [])]
        overrides = cfg.get("overrides", {})
        # longest pattern first, so a rule for a subdomain beats one for its parent
        self.overrides = sorted(overrides.items(), key=lambda kv: -len(kv[0]))
        self.upstream = str(cfg.get("upstream", ""))
        self.source = cfg.get("source")
        self.timeout = float(cfg.get("upstream_timeout", 2.0))
        self.truncate_udp = [n.lower().rstrip(".") for n in cfg.get("truncate_udp", [])]
        self.delegations: list[tuple[str, str, int]] = sorted(
            ((z.lower().rstrip("."), str(ip), int(port))
             for z, (ip, port) in cfg.get("delegations", {}).items()),
            key=lambda d: -len(d[0]),
        )

    async def answer(self, wire: bytes, client: str, tcp: bool = False) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # garbage: real servers drop it too
        if not query.question:
            return None
        response: dns.message.Message | None
        if self.role == "authoritative":
            response = self._authoritative(query, client)
        else:
            response = await self._resolve(query)
        if response is not None and not tcp and self._too_big(query):
            response.answer = []
            response.flags |= dns.flags.TC
        if self.delay:
            await asyncio.sleep(self.delay)
        return response.to_wire() if response is not None else None

    def _too_big(self, query: dns.message.Message) -> bool:
        """Does this name's answer not fit in UDP (a zone entry with ``tc``, or listed)?"""
        name = query.question[0].name.to_text().lower().rstrip(".")
        entry = self.zone.get(name)
        return bool(entry and entry.get("tc")) or name in self.truncate_udp

    def _authoritative(self, query: dns.message.Message, client: str) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        q = query.question[0]
        name = q.name.to_text().lower().rstrip(".")
        entry = self.zone.get(name)
        if entry is None:
            in_zone = any(name_matches(name, z) for z in self.zone_suffixes)
            response.set_rcode(dns.rcode.NXDOMAIN if in_zone else dns.rcode.REFUSED)
            return response
        if q.rdtype == dns.rdatatype.A and q.rdclass == dns.rdataclass.IN and entry["a"]:
            addrs = entry["a"]
            if "isp" in entry and self._from_isp(client):
                addrs = entry["isp"]
            if addrs:  # a name without addresses answers NOERROR, no records (NODATA)
                response.answer.append(
                    dns.rrset.from_text_list(q.name, self.ttl, "IN", "A", addrs))
        elif q.rdtype == dns.rdatatype.AAAA and entry.get("aaaa"):
            response.answer.append(
                dns.rrset.from_text_list(q.name, self.ttl, "IN", "AAAA", entry["aaaa"]))
        return response  # other types: NOERROR without answers (NODATA)

    def _from_isp(self, client: str) -> bool:
        try:
            addr = ipaddress.IPv4Address(client)
        except ValueError:
            return False
        return any(addr in n for n in self.isp_sources)

    async def _resolve(self, query: dns.message.Message) -> dns.message.Message | None:
        q = query.question[0]
        name = q.name.to_text().lower().rstrip(".")
        for pattern, rule in self.overrides:
            if name_matches(name, pattern):
                return self._forged(query, rule)
        forward = dns.message.make_query(q.name, q.rdtype, q.rdclass)
        server, port = self.upstream, 53
        for zone, ip, zone_port in self.delegations:
            if name_matches(name, zone):
                server, port = ip, zone_port
                break
        try:
            upstream, _ = await dns.asyncquery.udp_with_fallback(
                forward, server, timeout=self.timeout, port=port, source=self.source
            )
        except (dns.exception.DNSException, OSError):
            response = dns.message.make_response(query)
            response.flags |= dns.flags.RA
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        response.set_rcode(upstream.rcode())
        response.answer = list(upstream.answer)
        return response

    def _forged(self, query: dns.message.Message, rule: dict[str, Any]) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        action = rule["action"]
        q = query.question[0]
        if action == "nxdomain":
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif action == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif action == "nodata":
            pass  # NOERROR without records: a resolver hiding the name's addresses
        elif action == "answer" and q.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text_list(q.name, self.ttl, "IN", "A",
                                                            rule["a"]))
        return response


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, logic: DNSLogic) -> None:
        self.logic = logic
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = await self.logic.answer(data, str(addr[0]))
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


async def _tcp_client(logic: DNSLogic, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername") or ("", 0)
    try:
        for _ in range(MAX_TCP_MESSAGES):
            head = await asyncio.wait_for(reader.readexactly(2), 10)
            (length,) = struct.unpack("!H", head)
            wire = await asyncio.wait_for(reader.readexactly(length), 10)
            reply = await logic.answer(wire, str(peer[0]), tcp=True)
            if reply is None:
                break
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(cfg: dict[str, Any]) -> None:
    logic = DNSLogic(cfg)
    life = Lifetime(cfg)
    loop = asyncio.get_running_loop()
    port = int(cfg.get("port", 53))
    transports = []
    servers = []
    for addr in cfg["listen"]:
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(logic),
                                                           local_addr=(addr, port))
        transports.append(transport)
        servers.append(await asyncio.start_server(
            lambda r, w: _tcp_client(logic, r, w), addr, port))
    mark_ready(cfg)
    try:
        await life.wait()
    finally:
        for t in transports:
            t.close()
        for s in servers:
            s.close()
            await s.wait_closed()


if __name__ == "__main__":
    asyncio.run(main(load_config(sys.argv)))
