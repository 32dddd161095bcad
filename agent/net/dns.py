"""DNS over UDP with our own receive loop, so that on-path injection is visible.

A stub resolver returns the first datagram that answers the query and drops the rest; an
on-path injector exploits exactly that by racing the real resolver.  Here dnspython is only the
codec: we send the query ourselves and keep the socket open for ``linger`` seconds after the
first valid reply, recording every reply (rcode, answers, TTLs, arrival time).  Two replies to
one query are the signature of injection; the first one is what an application would have used.

Datagrams that do not parse, or that answer another query, are counted but not recorded as
replies (they are not answers to *this* query).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from agent.net import failures
from agent.net.addr import endpoint, parse_endpoint
from agent.net.observations import DNSAnswer, DNSQuery, DNSReply

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 value: avoids fragmentation, rarely truncates
MAX_REPLIES = 16  # bound the memory a flood of forged replies can take


@dataclass(frozen=True, slots=True)
class ResolverAddress:
    ip: str
    port: int = 53

    def __str__(self) -> str:
        return endpoint(self.ip, self.port)


def system_resolver(path: Path = Path("/etc/resolv.conf")) -> ResolverAddress | None:
    """The first ``nameserver`` of resolv.conf (the ISP's resolver, as applications use it)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            candidate = fields[1].split("%", 1)[0]  # drop an IPv6 zone index
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                continue
            return ResolverAddress(candidate)
    return None


def parse_resolver(text: str) -> ResolverAddress:
    """``ip`` or ``ip:port`` or ``[ipv6]:port``; raises ValueError."""
    ip, port = parse_endpoint(text, default_port=53)
    return ResolverAddress(ip, port)


def _answers(msg: dns.message.Message) -> tuple[DNSAnswer, ...]:
    out: list[DNSAnswer] = []
    for rrset in msg.answer:
        kind = dns.rdatatype.to_text(rrset.rdtype)
        for rdata in rrset:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                value = str(rdata.address)
            elif rrset.rdtype == dns.rdatatype.CNAME:
                value = rdata.target.to_text(omit_final_dot=True)
            else:
                value = rdata.to_text()
            out.append(DNSAnswer(answer_type=kind, value=value, ttl=int(rrset.ttl)))
    return tuple(out)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: PendingQuery) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._owner._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._owner._errored(exc)


class PendingQuery:
    """One query in flight.  ``await first()`` to proceed early, ``await result()`` for all."""

    def __init__(
        self,
        hostname: str,
        query_type: str,
        resolver: ResolverAddress,
        *,
        origin: float,
        timeout: float,
        linger: float,
        retries: int,
        on_bytes: Callable[[int], None] | None,
    ) -> None:
        self.hostname = hostname
        self.query_type = query_type
        self.resolver = resolver
        self.ignored = 0  # datagrams that were not a reply to this query
        self._origin = origin
        self._timeout = timeout
        self._linger = linger
        self._retries = retries
        self._on_bytes = on_bytes
        self._loop = asyncio.get_running_loop()
        self._query = dns.message.make_query(
            dns.name.from_text(hostname), query_type, use_edns=0, payload=EDNS_PAYLOAD
        )
        self._wire = self._query.to_wire()
        self._replies: list[DNSReply] = []
        self._error: BaseException | None = None
        self._wakeup = asyncio.Event()
        self._first: asyncio.Future[None] = self._loop.create_future()
        self._sent_at = self._loop.time()
        self._transport: asyncio.DatagramTransport | None = None
        self._task = asyncio.create_task(self._drive(), name=f"dns {hostname} {query_type}")

    # ---- protocol callbacks ------------------------------------------------------------------
    def _received(self, data: bytes, addr: Any) -> None:
        now = self._loop.time()
        if self._on_bytes is not None:
            self._on_bytes(len(data))
        if len(self._replies) >= MAX_REPLIES:
            self.ignored += 1
            return
        try:
            msg = dns.message.from_wire(data)
        except (dns.exception.DNSException, ValueError, UnicodeError, IndexError):
            self.ignored += 1  # garbage is hostile input: count it, never crash on it
            return
        if not self._query.is_response(msg):
            self.ignored += 1
            return
        source = endpoint(str(addr[0]), int(addr[1]))
        self._replies.append(
            DNSReply(
                t=round(now - self._sent_at, 6),
                rcode=dns.rcode.to_text(msg.rcode()),
                answers=_answers(msg),
                source=source,
            )
        )
        self._wakeup.set()

    def _errored(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wakeup.set()

    # ---- driver ----------------------------------------------------------------------------
    async def _drive(self) -> DNSQuery:
        family = socket.AF_INET6 if ":" in self.resolver.ip else socket.AF_INET
        ended_at: float | None = None
        try:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _Datagrams(self),
                remote_addr=(self.resolver.ip, self.resolver.port),
                family=family,
            )
            self._transport = transport
            deadline = self._sent_at + self._timeout
            attempts = self._retries + 1
            interval = self._timeout / attempts
            for attempt in range(attempts):
                self._send()
                wait_until = min(deadline, self._sent_at + interval * (attempt + 1))
                await self._wait_for_event(wait_until)
                if self._replies or self._error is not None:
                    break
            ended_at = self._loop.time()
            self._mark_first()
            if self._replies:
                linger_end = self._loop.time() + self._linger
                while len(self._replies) < MAX_REPLIES and self._loop.time() < linger_end:
                    await self._wait_for_event(linger_end)
        except OSError as exc:  # e.g. network unreachable at connect()
            self._errored(exc)
            ended_at = self._loop.time()
            self._mark_first()
        finally:
            if self._transport is not None:
                self._transport.close()
            self._mark_first()
        return self._build(ended_at if ended_at is not None else self._loop.time())

    def _send(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._transport.sendto(self._wire)
        if self._on_bytes is not None:
            self._on_bytes(len(self._wire))

    async def _wait_for_event(self, until: float) -> None:
        """Sleep until a datagram/error arrives or ``until``; callers re-check their condition."""
        delay = until - self._loop.time()
        if delay <= 0:
            return
        self._wakeup.clear()  # no await since the caller's check: nothing can be missed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wakeup.wait()

    def _mark_first(self) -> None:
        if not self._first.done():
            self._first.set_result(None)

    def _build(self, ended_at: float) -> DNSQuery:
        if self._replies:
            first = self._replies[0]
            wanted = {"A"} if self.query_type == "A" else {"AAAA"}
            has_addr = any(a.answer_type in wanted for a in first.answers)
            failure = failures.from_dns_rcode(first.rcode, has_addr)
            ended_at = self._sent_at + first.t
        elif self._error is not None:
            failure = failures.classify(self._error)
        else:
            failure = failures.GENERIC_TIMEOUT
        return DNSQuery(
            hostname=self.hostname,
            query_type=self.query_type,
            resolver_address=str(self.resolver),
            engine="udp",
            failure=failure,
            replies=tuple(self._replies),
            t0=round(self._sent_at - self._origin, 6),
            t=round(ended_at - self._origin, 6),
        )

    # ---- public ------------------------------------------------------------------------------
    async def first(self) -> DNSReply | None:
        """Wait for the first reply (or the failure); returns it, or None on failure."""
        await asyncio.shield(self._first)
        return self._replies[0] if self._replies else None

    async def result(self) -> DNSQuery:
        """Wait until the linger window closed; every reply received is in the result."""
        return await asyncio.shield(self._task)

    async def aclose(self) -> None:
        """Stop listening now (used when the measurement is abandoned)."""
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def start_query(
    hostname: str,
    query_type: str,
    resolver: ResolverAddress,
    *,
    origin: float,
    timeout: float = 5.0,
    linger: float = 0.5,
    retries: int = 1,
    on_bytes: Callable[[int], None] | None = None,
) -> PendingQuery:
    """Send a query now; ``origin`` is the loop time the measurement started (for t0/t).

    Raises ValueError for a name that cannot be encoded (empty label, label over 63 bytes).
    """
    return PendingQuery(
        hostname,
        query_type,
        resolver,
        origin=origin,
        timeout=timeout,
        linger=linger,
        retries=retries,
        on_bytes=on_bytes,
    )


async def resolve_first(
    hostname: str,
    resolver: ResolverAddress,
    *,
    query_type: str = "A",
    timeout: float = 5.0,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[str, ...]:
    """Addresses from the first reply only (for redirect targets); empty on any failure."""
    loop = asyncio.get_running_loop()
    try:
        pending = start_query(
            hostname, query_type, resolver, origin=loop.time(), timeout=timeout, linger=0.0,
            on_bytes=on_bytes,
        )
    except (ValueError, dns.exception.DNSException):
        return ()
    query = await pending.result()
    return query.addrs if query.failure is None else ()
