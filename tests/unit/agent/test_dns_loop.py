"""Our own DNS receive loop against a tiny in-process DNS server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from agent.net import failures
from agent.net.dns import (
    MAX_REPLIES,
    ResolverAddress,
    parse_resolver,
    resolve_first,
    start_query,
    system_resolver,
)
from tests.support.net import Handler, NanoDNS, a_record, answer, closed_port

Start = Callable[[Handler], "asyncio.Future[NanoDNS]"]


@pytest.fixture
async def nameserver() -> AsyncIterator[Callable[[Handler], object]]:
    servers: list[NanoDNS] = []

    async def start(handler: Handler) -> NanoDNS:
        server = await NanoDNS(handler).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        await s.stop()


def _resolver(server: NanoDNS) -> ResolverAddress:
    return ResolverAddress("127.0.0.1", server.port)


async def _query(server: NanoDNS, name: str = "example.test", **kw: object):
    loop = asyncio.get_running_loop()
    params: dict[str, object] = {"timeout": 1.0, "linger": 0.2}
    params.update(kw)
    pending = start_query(name, "A", _resolver(server), origin=loop.time(), **params)  # type: ignore[arg-type]
    return pending, await pending.result()


async def test_answer_recorded_with_ttl_rcode_and_timing(nameserver) -> None:
    server = await nameserver(lambda q: [(0.0, a_record(q, "198.18.0.10", ttl=123))])
    _, q = await _query(server)
    assert q.failure is None
    assert q.engine == "udp"
    assert q.resolver_address == f"127.0.0.1:{server.port}"
    assert len(q.replies) == 1
    reply = q.replies[0]
    assert reply.rcode == "NOERROR"
    assert [(a.answer_type, a.value, a.ttl) for a in reply.answers] == [("A", "198.18.0.10", 123)]
    assert reply.source == f"127.0.0.1:{server.port}"
    assert 0 <= reply.t < 1.0
    assert q.addrs == ("198.18.0.10",)
    assert q.t0 >= 0 and q.t >= q.t0


async def test_two_answers_injection_both_kept_first_wins(nameserver) -> None:
    def injected(query: dns.message.Message):
        return [(0.0, a_record(query, "10.10.34.35")), (0.05, a_record(query, "198.18.0.10"))]

    server = await nameserver(injected)
    _, q = await _query(server, linger=0.4)
    assert [r.answers[0].value for r in q.replies] == ["10.10.34.35", "198.18.0.10"]
    assert q.replies[0].t < q.replies[1].t
    assert q.addrs == ("10.10.34.35",)  # what an application would have used
    assert q.all_addrs == ("10.10.34.35", "198.18.0.10")
    assert q.failure is None


async def test_first_returns_before_linger_ends(nameserver) -> None:
    server = await nameserver(lambda q: [(0.0, a_record(q, "198.18.0.10"))])
    loop = asyncio.get_running_loop()
    begin = loop.time()
    pending = start_query("example.test", "A", _resolver(server), origin=begin, timeout=1.0,
                          linger=0.5)
    first = await pending.first()
    early = loop.time() - begin
    result = await pending.result()
    late = loop.time() - begin
    assert first is not None and first.answers[0].value == "198.18.0.10"
    assert early < 0.3
    assert late >= 0.5  # the socket stayed open for the linger window
    assert len(result.replies) == 1


async def test_reply_after_linger_window_not_recorded(nameserver) -> None:
    def late(query: dns.message.Message):
        return [(0.0, a_record(query, "198.18.0.10")), (0.5, a_record(query, "198.18.0.11"))]

    server = await nameserver(late)
    _, q = await _query(server, linger=0.1)
    assert [r.answers[0].value for r in q.replies] == ["198.18.0.10"]


async def test_drop_is_a_timeout_after_retransmission(nameserver) -> None:
    server = await nameserver(lambda q: [])
    loop = asyncio.get_running_loop()
    begin = loop.time()
    _, q = await _query(server, timeout=0.4, retries=1)
    elapsed = loop.time() - begin
    assert q.failure == failures.GENERIC_TIMEOUT
    assert q.replies == ()
    assert len(server.queries) == 2  # the query was sent again half-way
    assert server.queries[0] == server.queries[1]  # same id: a retransmission, not a new query
    assert 0.35 <= elapsed < 1.0


async def test_garbage_is_ignored_and_counted(nameserver) -> None:
    def garbage_then_answer(query: dns.message.Message):
        return [(0.0, b"\x00\x01garbage"), (0.02, a_record(query, "198.18.0.10"))]

    server = await nameserver(garbage_then_answer)
    pending, q = await _query(server)
    assert pending.ignored == 1
    assert [r.answers[0].value for r in q.replies] == ["198.18.0.10"]
    assert q.failure is None


async def test_only_garbage_times_out(nameserver) -> None:
    server = await nameserver(lambda q: [(0.0, b"\xff" * 40)])
    pending, q = await _query(server, timeout=0.3, retries=0)
    assert q.failure == failures.GENERIC_TIMEOUT
    assert pending.ignored == 1


async def test_answer_to_another_query_id_ignored(nameserver) -> None:
    def wrong_id(query: dns.message.Message):
        other = dns.message.make_query("example.test", "A")
        other.id = (query.id + 1) % 65536
        return [(0.0, a_record(other, "6.6.6.6")), (0.02, a_record(query, "198.18.0.10"))]

    server = await nameserver(wrong_id)
    pending, q = await _query(server)
    assert pending.ignored == 1
    assert q.addrs == ("198.18.0.10",)


@pytest.mark.parametrize(
    ("rcode", "expected"),
    [
        (dns.rcode.NXDOMAIN, failures.DNS_NXDOMAIN),
        (dns.rcode.SERVFAIL, failures.DNS_SERVFAIL),
        (dns.rcode.REFUSED, failures.DNS_REFUSED),
        (dns.rcode.NOERROR, failures.DNS_NO_ANSWER),
        (dns.rcode.NOTIMP, "unknown_failure: dns rcode NOTIMP"),
    ],
)
async def test_rcodes_map_to_failure_strings(nameserver, rcode: int, expected: str) -> None:
    server = await nameserver(lambda q: [(0.0, answer(q, rcode=rcode))])
    _, q = await _query(server)
    assert q.failure == expected
    assert q.replies[0].rcode == dns.rcode.to_text(dns.rcode.Rcode.make(rcode))


async def test_cname_chain_recorded(nameserver) -> None:
    def cname(query: dns.message.Message):
        return [(0.0, answer(query, ("example.test.", "CNAME", "cdn.example.net."),
                             ("cdn.example.net.", "A", "198.18.0.20")))]

    server = await nameserver(cname)
    _, q = await _query(server)
    kinds = [(a.answer_type, a.value) for a in q.replies[0].answers]
    assert kinds == [("CNAME", "cdn.example.net"), ("A", "198.18.0.20")]
    assert q.addrs == ("198.18.0.20",)
    assert q.failure is None


async def test_flood_of_replies_is_bounded(nameserver) -> None:
    server = await nameserver(lambda q: [(0.0, a_record(q, f"198.18.1.{i}")) for i in range(40)])
    pending, q = await _query(server, linger=0.3)
    assert len(q.replies) == MAX_REPLIES
    assert pending.ignored <= 40 - MAX_REPLIES  # the socket closes once the bound is hit


async def test_closed_port_is_connection_refused_quickly() -> None:
    loop = asyncio.get_running_loop()
    begin = loop.time()
    pending = start_query("example.test", "A", ResolverAddress("127.0.0.1", closed_port()),
                          origin=begin, timeout=2.0, linger=0.2)
    q = await pending.result()
    assert q.failure == failures.CONNECTION_REFUSED
    assert loop.time() - begin < 1.5


async def test_budget_callback_counts_both_directions(nameserver) -> None:
    server = await nameserver(lambda q: [(0.0, a_record(q, "198.18.0.10"))])
    counted: list[int] = []
    _, q = await _query(server, on_bytes=counted.append)
    assert q.failure is None
    assert len(counted) == 2 and all(n > 12 for n in counted)


async def test_resolve_first_for_redirect_targets(nameserver) -> None:
    server = await nameserver(lambda q: [(0.0, a_record(q, "198.18.0.30", "198.18.0.31"))])
    addrs = await resolve_first("other.test", _resolver(server), timeout=1.0)
    assert addrs == ("198.18.0.30", "198.18.0.31")
    nx = await nameserver(lambda q: [(0.0, answer(q, rcode=dns.rcode.NXDOMAIN))])
    assert await resolve_first("other.test", _resolver(nx), timeout=1.0) == ()


async def test_abandoned_query_closes_cleanly(nameserver) -> None:
    server = await nameserver(lambda q: [])
    loop = asyncio.get_running_loop()
    pending = start_query("example.test", "A", _resolver(server), origin=loop.time(),
                          timeout=5.0, linger=0.5)
    await asyncio.sleep(0.05)
    await pending.aclose()
    assert len(server.queries) == 1


def test_invalid_name_rejected_before_sending() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        start_query("a" * 64 + ".test", "A", ResolverAddress("127.0.0.1", 9), origin=loop.time())

    with pytest.raises(Exception, match="label"):
        asyncio.run(go())


def test_system_resolver_reads_first_valid_nameserver(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch lan\nnameserver bogus\nnameserver fe80::1%eth0\n"
                    "nameserver 10.0.0.1\n")
    assert system_resolver(conf) == ResolverAddress("fe80::1", 53)
    conf.write_text("options edns0\n")
    assert system_resolver(conf) is None
    assert system_resolver(tmp_path / "missing") is None


def test_parse_resolver_forms() -> None:
    assert parse_resolver("10.0.0.1") == ResolverAddress("10.0.0.1", 53)
    assert parse_resolver("10.0.0.1:5353") == ResolverAddress("10.0.0.1", 5353)
    assert parse_resolver("[2001:db8::1]:53") == ResolverAddress("2001:db8::1", 53)
    assert parse_resolver("2001:db8::1") == ResolverAddress("2001:db8::1", 53)
    assert str(ResolverAddress("2001:db8::1", 53)) == "[2001:db8::1]:53"
    with pytest.raises(ValueError):
        parse_resolver("resolver.example")
