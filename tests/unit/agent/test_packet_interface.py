"""The agent's side of packet evidence: the request contract, settings, records and export."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import ConfigError
from agent.export.ooni import to_ooni
from agent.net.rawprobe import protocol as P
from agent.net.rawprobe import triggers
from agent.net.rawprobe.client import PacketSettings
from agent.wire import envelope as wire
from agent.wire.record import Blocking, Status, Verdict
from lab.records import make_record

TRACE = {"op": "trace", "protocol": "tls", "address": "198.19.1.5", "port": 443,
         "name": "blocked.lab.test", "twin": "example.com"}


def test_trace_request_defaults_and_round_trip() -> None:
    req = P.parse_trace(TRACE)
    assert (req.max_hops, req.probes_per_hop, req.timeout) == (16, 1, 1.0)
    assert P.parse_trace(req.to_json()) == req


@pytest.mark.parametrize(("change", "needle"), [
    ({"protocol": "quic"}, "protocol"),
    ({"address": "2001:db8::1"}, "IPv4"),
    ({"address": "not-an-ip"}, "address"),
    ({"name": "bad name!"}, "domain"),
    ({"max_hops": 64}, "max_hops"),
    ({"probes_per_hop": 0}, "probes_per_hop"),
    ({"timeout": 30}, "timeout"),
    ({"budget_s": 10_000}, "budget_s"),
    ({"port": True}, "port"),
])
def test_trace_request_bounds(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(P.ProtocolError, match=needle):
        P.parse_trace({**TRACE, **change})


@pytest.mark.parametrize(("data", "ok"), [
    ({"ports": [53, 443], "seconds": 5, "max_packets": 100}, True),
    ({"ports": [], "seconds": 5, "max_packets": 100}, False),
    ({"ports": [70000], "seconds": 5, "max_packets": 100}, False),
    ({"ports": [53], "seconds": 500, "max_packets": 100}, False),
    ({"ports": [53], "seconds": 5, "max_packets": 10**6}, False),
])
def test_capture_request_bounds(data: dict[str, Any], ok: bool) -> None:
    if ok:
        assert P.parse_capture(data).ports == (53, 443)
    else:
        with pytest.raises(P.ProtocolError):
            P.parse_capture(data)


def test_endpoints() -> None:
    assert P.parse_endpoints({"endpoints": ["198.19.1.5:443", "[2001:2::1]:53"]}) == {
        ("198.19.1.5", 443), ("2001:2::1", 53)}
    for bad in (["198.19.1.5"], ["x:1"], "198.19.1.5:443", [1]):
        with pytest.raises(P.ProtocolError):
            P.parse_endpoints({"endpoints": bad})


def test_settings() -> None:
    assert PacketSettings.from_section({}) == PacketSettings()
    assert PacketSettings.from_section({"spawn": True}).spawn
    for bad in ({"spawn": "yes"}, {"socket": ""}, {"sockets": "/x"}):
        with pytest.raises(ConfigError):
            PacketSettings.from_section(bad)


def test_triggers_carry_the_name() -> None:
    from lab.packets import http_host, tls_sni

    assert tls_sni(triggers.payload("tls", "blocked.lab.test")) == "blocked.lab.test"
    assert http_host(triggers.payload("http", "blocked.lab.test")) == "blocked.lab.test"
    assert b"\x07blocked\x03lab\x04test\x00" in triggers.payload("dns", "blocked.lab.test", 7)
    with pytest.raises(ValueError):
        triggers.payload("ftp", "x")


def test_verdict_evidence_is_optional_on_the_wire() -> None:
    v = Verdict(Status.BLOCKED, Blocking.TLS, "tls.sni_reset", evidence="packets.rst_injected.hop3")
    assert Verdict.from_json(v.to_json()) == v
    assert "evidence" not in Verdict(Status.OK).to_json()
    record = make_record("a" * 26, 1, verdict=v)
    wire.validate_record(record.to_json())


def test_ooni_export_carries_packet_evidence_as_an_extension_key() -> None:
    evidence = {"status": "ok", "flows": [], "dns": [], "injected": False}
    record = make_record("a" * 26, 1, test_keys={"hostname": "a.test", "packet_evidence": evidence},
                         verdict=Verdict(Status.OK, evidence="packets.server_reset"))
    out = to_ooni(record.to_json())
    assert out["test_keys"]["x_vigil_packet_evidence"] == evidence
    assert "packet_evidence" not in out["test_keys"]
    assert out["test_keys"]["x_vigil_verdict"]["evidence"] == "packets.server_reset"
