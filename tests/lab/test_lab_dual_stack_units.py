"""The pure parts of the lab's dual stack and DNS over TCP: plan, ruleset, packets, rows."""

from __future__ import annotations

import socket
import struct
import tomllib

import dns.message
import pytest

from lab import addressing as A
from lab import packets as P
from lab.lab import DUAL_STACK_SCENARIO_FILE, LAB_DIR, default_scenario_files
from lab.plan import build_plan, render_censor_nft, render_site_nft
from lab.scenarios import ScenarioError, ScenarioSet, load_files, parse_file, validate_set


def test_default_lab_stays_ipv4_only() -> None:
    plan = build_plan(load_files(default_scenario_files()))
    assert not plan.ipv6
    assert "ip6" not in render_censor_nft(plan)
    assert "large-dns.lab.test" in plan.truncate_udp
    assert plan.inject_dns_tcp == [{"name": "tcp-dns-reset.lab.test", "action": "reset"}]


def test_dual_stack_plan_stays_inside_the_benchmarking_prefixes() -> None:
    sset = load_files([LAB_DIR / DUAL_STACK_SCENARIO_FILE])
    plan = build_plan(sset, scale=10)
    assert plan.ipv6
    for addr in plan.inet6_addresses + plan.ip6_drop + plan.ip6_reset + plan.ip6_noroute:
        assert A.in_lab6(addr), addr
    for addr in plan.inet_addresses:
        assert A.in_lab(addr), addr
    by_host = {s.host: s for s in plan.sites}
    assert plan.zone["only.v6.lab.test"]["a"] == []  # IPv6-only: no A record
    dual = plan.zone["dual.v6.lab.test"]
    assert dual["a"] and dual["aaaa"] == [by_host["dual.v6.lab.test"].address6]
    assert "aaaa" not in plan.zone["v4only.v6.lab.test"]
    # family-scoped address rules
    v6drop = by_host["dual-v6drop.v6.lab.test"]
    assert v6drop.address6 in plan.ip6_drop and v6drop.address not in plan.ip_drop
    v4drop = by_host["dual-v4drop.v6.lab.test"]
    assert v4drop.address in plan.ip_drop and v4drop.address6 not in plan.ip6_drop
    both = by_host["dual-drop.v6.lab.test"]
    assert both.address in plan.ip_drop and both.address6 in plan.ip6_drop
    # generated scale sites are dual-stack in a dual-stack lab
    scale = plan.zone[plan.scale_hosts[0]]
    assert scale["aaaa"] and A.in_lab6(scale["aaaa"][0])
    nft = render_censor_nft(plan)
    assert f"ip6 daddr != {A.LAB_RANGE6} reject" in nft
    assert "set flow6_reset" in nft and "@ip6_noroute reject with icmpv6 type no-route" in nft
    assert "down6_drop" in render_site_nft(plan)


def _one(row: str) -> None:
    validate_set(ScenarioSet((parse_file("t.toml", tomllib.loads(row)),)))


@pytest.mark.parametrize(("row", "message"), [
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\nsite={kind="normal",family="v5"}',
     "site.family"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\nsite={kind="v6-dead",family="v4"}',
     "has an IPv6 address"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\ncensor=[{kind="tcp_drop",family="v7"}]',
     "family must be"),
    ('[[scenario]]\nid="a"\nurl="https://x.lab.test/"\ncensor=[{kind="http_reset",family="v6"}]',
     "does not take"),
])
def test_bad_rows(row: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        _one(row)


def test_ipv6_tcp_packet_round_trip_and_checksum() -> None:
    src, dst = "2001:2:0:11::5", "2001:2:0:1::2"
    pkt = P.build_tcp6(src, dst, 443, 40000, 7, 9, P.RST | P.ACK)
    ip = P.parse_ipv6(pkt)
    assert ip is not None and (ip.src, ip.dst, ip.proto) == (src, dst, P.PROTO_TCP)
    tcp = P.parse_tcp(ip.payload)
    assert tcp is not None and (tcp.sport, tcp.dport, tcp.seq, tcp.ack) == (443, 40000, 7, 9)
    pseudo = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
              + struct.pack("!I3xB", len(ip.payload), P.PROTO_TCP))
    assert P.checksum(pseudo + ip.payload) == 0
    assert P.parse_ipv6(b"\x45" + b"\0" * 50) is None  # IPv4 is not IPv6


def test_dns_over_tcp_name() -> None:
    wire = dns.message.make_query("WWW.Tcp-Dns-Reset.lab.test", "A").to_wire()
    assert P.dns_over_tcp_name(struct.pack("!H", len(wire)) + wire) == "www.tcp-dns-reset.lab.test"
    response = dns.message.make_response(dns.message.make_query("x.lab.test", "A")).to_wire()
    assert P.dns_over_tcp_name(struct.pack("!H", len(response)) + response) is None
    assert P.dns_over_tcp_name(b"\x00\x05abc") is None
