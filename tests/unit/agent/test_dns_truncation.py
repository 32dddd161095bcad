"""A truncated UDP answer (TC bit) is asked again over TCP, like a stub resolver does.

Against NanoDNS on 127.0.0.1 listening on UDP and TCP (same port): every reply is recorded,
the truncated datagram and any injected one included, and the TCP answer is the one used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import dns.flags
import dns.message
import pytest

from agent.net import failures
from agent.net.dns import ResolverAddress, resolve_first, start_query
from agent.net.observations import DNSQuery
from tests.support.net import Handler, NanoDNS, TCPHandler, a_record

Start = Callable[..., "asyncio.Future[NanoDNS]"]


def truncated(query: dns.message.Message) -> bytes:
    """What a server sends when the answer does not fit: TC set, no records."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.TC
    return response.to_wire()


@pytest.fixture
async def nameserver() -> AsyncIterator[Callable[..., object]]:
    servers: list[NanoDNS] = []

    async def start(handler: Handler, tcp: TCPHandler | None = None) -> NanoDNS:
        server = await NanoDNS(handler, tcp_handler=tcp).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        await s.stop()


async def _query(server: NanoDNS, timeout: float = 2.0, linger: float = 0.1) -> DNSQuery:
    loop = asyncio.get_running_loop()
    pending = start_query(
        "big.example.test", "A", ResolverAddress("127.0.0.1", server.port),
        origin=loop.time(), timeout=timeout, linger=linger,
    )
    first = await pending.first()
    result = await pending.result()
    assert (first is None) == (result.failure is not None or not result.addrs)
    return result


async def test_truncated_answer_is_retried_over_tcp_and_tcp_answer_used(nameserver) -> None:
    server = await nameserver(
        lambda q: [(0.0, truncated(q))],
        lambda q: a_record(q, "198.19.1.10", "198.19.1.11"),
    )
    q = await _query(server)
    assert q.failure is None
    assert q.addrs == ("198.19.1.10", "198.19.1.11")
    assert [(r.transport, r.truncated) for r in q.replies] == [("udp", True), ("tcp", False)]
    assert q.retried_over_tcp
    assert len(server.tcp_queries) == 1
    # the same question went over TCP
    assert dns.message.from_wire(server.tcp_queries[0]).question == \
        dns.message.from_wire(server.queries[0]).question


async def test_untruncated_answer_never_uses_tcp(nameserver) -> None:
    server = await nameserver(lambda q: [(0.0, a_record(q, "198.19.1.10"))],
                              lambda q: a_record(q, "198.19.1.99"))
    q = await _query(server)
    assert q.addrs == ("198.19.1.10",)
    assert not q.retried_over_tcp
    assert server.tcp_queries == []


async def test_injected_reply_during_tcp_retry_is_recorded_but_not_used(nameserver) -> None:
    def udp(q: dns.message.Message) -> list[tuple[float, bytes]]:
        return [(0.0, truncated(q)), (0.05, a_record(q, "198.19.254.1"))]

    def tcp(q: dns.message.Message) -> bytes | None:
        return a_record(q, "198.19.1.10")

    server = await nameserver(udp, tcp)
    q = await _query(server, linger=0.3)
    assert q.addrs == ("198.19.1.10",)
    assert {r.transport for r in q.replies} == {"udp", "tcp"}
    assert "198.19.254.1" in q.all_addrs


@pytest.mark.parametrize(
    ("tcp", "expected"),
    [
        (lambda q: None, failures.CONNECTION_RESET),
        (lambda q: b"", failures.GENERIC_TIMEOUT),
    ],
    ids=["reset", "silent"],
)
async def test_failed_tcp_retry_is_the_query_failure(nameserver, tcp, expected) -> None:
    server = await nameserver(lambda q: [(0.0, truncated(q))], tcp)
    q = await _query(server, timeout=1.0)
    assert q.failure == expected
    assert q.addrs == ()
    assert [r.truncated for r in q.replies] == [True]  # the truncated datagram is kept


async def test_resolver_without_tcp_is_connection_refused(nameserver) -> None:
    server = await nameserver(lambda q: [(0.0, truncated(q))])  # nothing listens on TCP
    q = await _query(server, timeout=1.0)
    assert q.failure == failures.CONNECTION_REFUSED


async def test_resolve_first_follows_truncation(nameserver) -> None:
    server = await nameserver(lambda q: [(0.0, truncated(q))],
                              lambda q: a_record(q, "198.19.1.12"))
    addrs = await resolve_first("big.example.test", ResolverAddress("127.0.0.1", server.port),
                                timeout=1.0)
    assert addrs == ("198.19.1.12",)


async def test_tcp_bytes_are_charged_to_the_budget(nameserver) -> None:
    server = await nameserver(lambda q: [(0.0, truncated(q))],
                              lambda q: a_record(q, "198.19.1.10"))
    used: list[int] = []
    loop = asyncio.get_running_loop()
    pending = start_query("big.example.test", "A", ResolverAddress("127.0.0.1", server.port),
                          origin=loop.time(), timeout=1.0, linger=0.0, on_bytes=used.append)
    await pending.result()
    assert len(used) == 4  # UDP query, UDP reply, TCP query, TCP reply
