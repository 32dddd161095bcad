"""DNS over UDP with our own receive loop, so that on-path injection is visible.

A stub resolver returns the first datagram that answers the query and drops the rest; an
on-path injector exploits exactly that by racing the real resolver.  Here dnspython is only the
codec: we send the query ourselves and keep the socket open for ``linger`` seconds after the
first valid reply, recording every reply (rcode, answers, TTLs, arrival time).  Two replies to
one query are the signature of injection; the first one is what an application would have used.

Datagrams that do not parse, or that answer another query, are counted but not recorded as
replies (they are not answers to *this* query).

A first reply with the TC bit set (the answer did not fit in UDP) is what a stub resolver
answers by asking again over TCP (RFC 7766), and so do we, on a fresh connection to the same
resolver within what is left of the timeout, while still listening on UDP: the truncated
datagram, any injected ones and the TCP reply are all recorded (``DNSReply.truncated`` and
``transport``), and the TCP reply is the one used.  When the TCP retry fails, its failure
(``connection_reset``, ``generic_timeout_error``...) is the query's failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from agent.net import failures
from agent.net.addr import endpoint, parse_endpoint
from agent.net.observations import DNSAnswer, DNSQuery, DNSReply, used_reply

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 value: avoids fragmentation, rarely truncates
MAX_REPLIES = 16  # bound the memory a flood of forged replies can take
MIN_TCP_TIMEOUT = 1.0  # the TCP retry gets at least this long, even late in the timeout
MAX_TCP_MESSAGE = 65535


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
        self._tcp_failure: str | None = None
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
        self._replies.append(self._reply(msg, now, source, "udp"))
        self._wakeup.set()

    def _reply(
        self, msg: dns.message.Message, now: float, source: str, transport: str
    ) -> DNSReply:
        return DNSReply(
            t=round(now - self._sent_at, 6),
            rcode=dns.rcode.to_text(msg.rcode()),
            answers=_answers(msg),
            source=source,
            truncated=bool(msg.flags & dns.flags.TC),
            transport=transport,
        )

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
            if self._replies and self._replies[0].truncated:
                remaining = deadline - self._loop.time()
                await self._retry_over_tcp(max(MIN_TCP_TIMEOUT, remaining))
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

    async def _retry_over_tcp(self, timeout: float) -> None:
        """Ask the same question over TCP (the UDP answer was truncated); record the reply or
        the failure.  UDP datagrams keep being recorded meanwhile."""
        source = str(self.resolver)
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    self.resolver.ip, self.resolver.port
                )
                writer.write(struct.pack("!H", len(self._wire)) + self._wire)
                await writer.drain()
                if self._on_bytes is not None:
                    self._on_bytes(len(self._wire) + 2)
                for _ in range(MAX_REPLIES):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(length)
                    if self._on_bytes is not None:
                        self._on_bytes(length + 2)
                    try:
                        msg = dns.message.from_wire(data)
                    except (dns.exception.DNSException, ValueError, UnicodeError, IndexError):
                        self.ignored += 1
                        continue
                    if not self._query.is_response(msg):
                        self.ignored += 1
                        continue
                    self._replies.append(self._reply(msg, self._loop.time(), source, "tcp"))
                    return
                self._tcp_failure = failures.unknown("no answer over TCP")
        except TimeoutError:
            self._tcp_failure = failures.GENERIC_TIMEOUT
        except asyncio.IncompleteReadError:
            self._tcp_failure = failures.EOF_ERROR
        except OSError as exc:
            self._tcp_failure = failures.classify(exc)
        finally:
            if writer is not None:
                writer.close()

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
        replies = tuple(self._replies)
        used = used_reply(replies)
        if used is not None:
            wanted = {"A"} if self.query_type == "A" else {"AAAA"}
            has_addr = any(a.answer_type in wanted for a in used.answers)
            failure = failures.from_dns_rcode(used.rcode, has_addr)
            ended_at = self._sent_at + used.t
        elif replies:  # truncated over UDP, and the TCP retry got nothing
            failure = self._tcp_failure or failures.GENERIC_TIMEOUT
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
            replies=replies,
            t0=round(self._sent_at - self._origin, 6),
            t=round(ended_at - self._origin, 6),
        )

    # ---- public ------------------------------------------------------------------------------
    async def first(self) -> DNSReply | None:
        """Wait for the first reply (or the failure); returns it, or None on failure."""
        await asyncio.shield(self._first)
        return used_reply(tuple(self._replies))

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
