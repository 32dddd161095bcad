"""The helper's DNS whoami zone: answers from the querying resolver's address, notes nonces."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.helper.dns_whoami import SightingLog, WhoamiZone, canonical_address

ZONE = "whoami.helper.example"
NONCE = "0123456789abcdef01234567"


def zone() -> WhoamiZone:
    return WhoamiZone.create(ZONE, SightingLog())


def ask(z: WhoamiZone, name: str, rdtype: str, source: str) -> dns.message.Message:
    wire = z.respond(dns.message.make_query(name, rdtype).to_wire(), source)
    assert wire is not None
    return dns.message.from_wire(wire)


def records(msg: dns.message.Message) -> list[tuple[str, str]]:
    return [(dns.rdatatype.to_text(rr.rdtype), rd.to_text()) for rr in msg.answer for rd in rr]


@pytest.mark.parametrize(
    ("qname", "rdtype", "source", "rcode", "answer"),
    [
        (f"{NONCE}.{ZONE}", "A", "198.18.0.1", "NOERROR", [("A", "198.18.0.1")]),
        (f"{NONCE}.{ZONE}", "AAAA", "2001:2:0:2::1", "NOERROR", [("AAAA", "2001:2:0:2::1")]),
        (f"{NONCE}.{ZONE}", "TXT", "198.18.0.1", "NOERROR", [("TXT", '"198.18.0.1"')]),
        (f"{NONCE}.{ZONE}", "TXT", "2001:2::5", "NOERROR", [("TXT", '"2001:2::5"')]),
        (f"{NONCE}.{ZONE}", "A", "2001:2:0:2::1", "NOERROR", []),  # NODATA: other family
        (f"{NONCE}.{ZONE}", "AAAA", "198.18.0.1", "NOERROR", []),
        (f"{NONCE}.{ZONE}", "MX", "198.18.0.1", "NOERROR", []),
        (f"{NONCE.upper()}.{ZONE.upper()}", "A", "198.18.0.1", "NOERROR", [("A", "198.18.0.1")]),
        (f"{NONCE}.{ZONE}", "A", "::ffff:198.18.0.1", "NOERROR", [("A", "198.18.0.1")]),
        (ZONE, "NS", "198.18.0.1", "NOERROR", [("NS", f"ns.{ZONE}.")]),
        (ZONE, "A", "198.18.0.1", "NOERROR", []),
        (f"short.{ZONE}", "A", "198.18.0.1", "NXDOMAIN", []),
        (f"a.{NONCE}.{ZONE}", "A", "198.18.0.1", "NXDOMAIN", []),
        ("www.example.org", "A", "198.18.0.1", "REFUSED", []),  # no open resolver
        ("helper.example", "A", "198.18.0.1", "REFUSED", []),  # the parent is not ours
    ],
    ids=["a-v4", "aaaa-v6", "txt-v4", "txt-v6", "a-from-v6", "aaaa-from-v4", "other-type",
         "0x20-case", "v4-mapped", "apex-ns", "apex-a", "not-a-nonce", "below-a-nonce",
         "outside", "parent"],
)
def test_answers(qname: str, rdtype: str, source: str, rcode: str,
                 answer: list[tuple[str, str]]) -> None:
    msg = ask(zone(), qname, rdtype, source)
    assert dns.rcode.to_text(msg.rcode()) == rcode
    assert records(msg) == answer
    assert all(rr.ttl == 0 for rr in msg.answer)
    if rcode != "REFUSED":
        assert msg.flags & dns.flags.AA
        if not answer:
            assert [dns.rdatatype.to_text(rr.rdtype) for rr in msg.authority] == ["SOA"]
    assert not msg.flags & dns.flags.RA


def test_sighting_is_noted_per_nonce_first_source_wins() -> None:
    z = zone()
    ask(z, f"{NONCE}.{ZONE}", "A", "198.18.0.1")
    ask(z, f"{NONCE}.{ZONE}", "TXT", "198.18.0.9")  # a retry from another egress
    assert z.sightings.lookup(NONCE) == "198.18.0.1"
    assert z.sightings.lookup("f" * 24) is None
    ask(z, "www.example.org", "A", "198.18.0.2")
    assert len(z.sightings) == 1


def test_responses_opcodes_and_garbage() -> None:
    z = zone()
    query = dns.message.make_query(f"{NONCE}.{ZONE}", "A")
    response = dns.message.make_response(query)
    assert z.respond(response.to_wire(), "198.18.0.1") is None  # never answer a response
    assert z.respond(b"\x00\x01garbage", "198.18.0.1") is None
    query.set_opcode(dns.opcode.NOTIFY)
    wire = z.respond(query.to_wire(), "198.18.0.1")
    assert wire is not None and dns.message.from_wire(wire).rcode() == dns.rcode.NOTIMP
    assert len(z.sightings) == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_datagram_gets_a_bounded_answer_or_silence(data: bytes) -> None:
    wire = zone().respond(data, "198.18.0.1")
    assert wire is None or len(wire) <= len(data) + 200


def test_sighting_log_bounds_and_expiry() -> None:
    now = [0.0]
    log = SightingLog(max_entries=3, ttl=10.0, clock=lambda: now[0])
    for i in range(5):
        log.record(f"nonce{i:016d}", f"198.18.0.{i}")
    assert len(log) == 3
    assert log.lookup("nonce0000000000000000") is None  # evicted, oldest first
    assert log.lookup("nonce0000000000000004") == "198.18.0.4"
    now[0] = 11.0
    assert log.lookup("nonce0000000000000004") is None
    assert len(log) == 0


@pytest.mark.parametrize("bad", ["", "com", "x..y", "."])
def test_zone_must_be_a_delegated_name(bad: str) -> None:
    with pytest.raises(ValueError):
        WhoamiZone.create(bad, SightingLog())


def test_canonical_address() -> None:
    assert canonical_address("::ffff:192.0.2.1") == "192.0.2.1"
    assert canonical_address("fe80::1%eth0") == "fe80::1"
    assert canonical_address("not an ip") is None
