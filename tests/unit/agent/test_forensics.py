"""Injection forensics: who sent the reset, the FIN or the DNS answer (pure analysis)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.experiments import forensics as F
from agent.net.rawprobe.records import Packet, Quoted

CLIENT, SERVER, RESOLVER = "198.18.1.2", "198.19.1.5", "198.19.0.53"


def tcp(t: float, flags: str, ttl: int, *, src: str = SERVER, sport: int = 443,
        dport: int = 40000, payload: int = 0, window: int = 0, ip_id: int = 0) -> Packet:
    return Packet(t=t, src=src, dst=CLIENT, proto="tcp", ttl=ttl, ip_id=ip_id, df=True,
                  sport=sport, dport=dport, flags=flags, window=window, payload_len=payload)


def dns(t: float, ttl: int, *, qid: int = 7, port: int = 50000, answers: tuple[str, ...] = ()
        ) -> Packet:
    return Packet(t=t, src=RESOLVER, dst=CLIENT, proto="udp", ttl=ttl, ip_id=0, df=False,
                  sport=53, dport=port, dns_id=qid, dns_rcode="NOERROR", dns_answers=answers)


@pytest.mark.parametrize(
    ("reference", "observed", "spread", "verdict"),
    [
        (60, 60, 0, F.CONSISTENT),  # the server's own reset
        (60, 62, 0, F.INJECTED),  # two hops closer: a censor two routers before the server
        (60, 61, 0, F.INCONCLUSIVE),  # one hop: a path change explains it
        (60, 59, 0, F.INCONCLUSIVE),
        (60, 63, 3, F.INCONCLUSIVE),  # this server's path moves by three hops between flows
        (60, 64, 3, F.INJECTED),
        (52, 250, 0, F.INJECTED),  # another initial TTL: another stack
        (None, 60, 0, F.INCONCLUSIVE),  # nothing to compare with
    ],
)
def test_compare_ttl_table(reference: int | None, observed: int, spread: int,
                           verdict: str) -> None:
    assert F.compare_ttl(reference, observed, spread).verdict == verdict


@pytest.mark.parametrize(("ttl", "hop"), [(64, 1), (62, 3), (60, 5), (255, 1), (250, 6),
                                          (128, 1), (120, 9), (30, 3)])
def test_sender_hop(ttl: int, hop: int) -> None:
    assert F.sender_hop(ttl) == hop


@given(ref=st.integers(1, 255), delta=st.integers(-3, 3), spread=st.integers(0, 5))
def test_never_injected_within_path_slack(ref: int, delta: int, spread: int) -> None:
    observed = min(255, max(1, ref + delta))
    cmp = F.compare_ttl(ref, observed, spread)
    if abs(observed - ref) <= max(F.PATH_SLACK, spread):
        assert cmp.verdict != F.INJECTED
    else:
        assert cmp.verdict == F.INJECTED


@given(ttl=st.integers(1, 255))
def test_server_own_reset_is_never_injected(ttl: int) -> None:
    pkts = [tcp(0.01, "SA", ttl, window=64240), tcp(0.2, "RA", ttl)]
    result = F.tcp_flow(pkts, CLIENT, 40000, SERVER, 443)
    assert result is not None and result.verdict == F.CONSISTENT


@pytest.mark.parametrize(
    ("rows", "verdict", "terminator", "hop"),
    [
        # server 5 hops away, censor at hop 3 forging with 64
        ([tcp(0.01, "SA", 60), tcp(0.05, "RA", 62, window=65535)], F.INJECTED, "rst", 3),
        # a censor with its own stack (255)
        ([tcp(0.01, "SA", 52), tcp(0.05, "R", 247)], F.INJECTED, "rst", 9),
        # the server closes itself
        ([tcp(0.01, "SA", 60), tcp(0.05, "PA", 60, payload=100), tcp(0.06, "FA", 60)],
         F.CONSISTENT, "fin", 5),
        # a forged blockpage with FIN, one hop off, and the real server's data after it
        ([tcp(0.01, "SA", 60), tcp(0.05, "FPA", 61, payload=300),
          tcp(0.09, "PA", 60, payload=1400)], F.INJECTED, "fin", 4),
        # no SYN-ACK captured: nothing to compare
        ([tcp(0.05, "R", 62)], F.INCONCLUSIVE, "rst", 3),
    ],
)
def test_tcp_flow_table(rows: list[Packet], verdict: str, terminator: str, hop: int) -> None:
    noise = [tcp(0.02, "RA", 40, sport=80), tcp(0.03, "RA", 40, dport=40001)]  # other flows
    result = F.tcp_flow(rows + noise, CLIENT, 40000, SERVER, 443)
    assert result is not None
    assert (result.verdict, result.terminator) == (verdict, terminator)
    assert result.to_json()["sender_hop"] == hop
    json.dumps(result.to_json())


def test_only_flows_the_server_side_ended_are_reported() -> None:
    mine = Packet(t=0.30, src=CLIENT, dst=SERVER, proto="tcp", ttl=64, ip_id=1, df=True,
                  sport=40000, dport=443, flags="FA")
    page = [tcp(0.01, "SA", 60), tcp(0.2, "PA", 60, payload=900)]
    after_my_close = F.analyze_capture([*page, mine, tcp(0.31, "R", 60)], [(SERVER, 443)], [])
    assert after_my_close["flows"] == []  # the reset answers the probe's own close
    before = F.analyze_capture([*page, tcp(0.25, "RA", 62), mine], [(SERVER, 443)], [])
    assert [f["verdict"] for f in before["flows"]] == [F.INJECTED]
    assert F.verdict_evidence(before) == "packets.rst_injected.hop3"
    assert F.verdict_evidence(after_my_close) is None


def test_the_first_fin_or_reset_ends_the_flow() -> None:
    # the server closed after its page; its later bare reset only answers stray packets
    pkts = [tcp(0.01, "SA", 60), tcp(0.1, "PA", 60, payload=500), tcp(0.11, "FA", 60),
            tcp(0.2, "R", 60)]
    result = F.tcp_flow(pkts, CLIENT, 40000, SERVER, 443)
    assert result is not None and (result.terminator, result.verdict) == ("fin", F.CONSISTENT)
    assert F.verdict_evidence(F.analyze_capture(pkts, [(SERVER, 443)], [])) is None


def test_a_reset_syn_is_judged_against_another_flow_s_syn_ack() -> None:
    other = tcp(0.01, "SA", 60, dport=40001)
    result = F.tcp_flow([other, tcp(0.05, "RA", 63)], CLIENT, 40000, SERVER, 443)
    assert result is not None and (result.verdict, result.to_json()["sender_hop"]) == (
        F.INJECTED, 2)
    alone = F.tcp_flow([tcp(0.05, "RA", 63)], CLIENT, 40000, SERVER, 443)
    assert alone is not None and alone.verdict == F.INCONCLUSIVE


def test_flow_without_end_is_not_judged() -> None:
    assert F.tcp_flow([tcp(0.01, "SA", 60), tcp(0.1, "PA", 60, payload=5)],
                      CLIENT, 40000, SERVER, 443) is None


def test_path_spread_across_flows_widens_the_slack() -> None:
    pkts = [tcp(0.01, "SA", 60), tcp(0.01, "SA", 62, dport=40001), tcp(0.05, "RA", 62)]
    result = F.tcp_flow(pkts, CLIENT, 40000, SERVER, 443)
    assert result is not None and result.verdict == F.INCONCLUSIVE and result.slack == 2


@pytest.mark.parametrize(
    ("rows", "verdict"),
    [
        # forged answer (censor at hop 3, 64) races the resolver's (hop 6)
        ([dns(0.01, 62, answers=("10.10.34.35",)), dns(0.05, 59, answers=("198.19.1.5",))],
         F.INJECTED),
        # one reply, and the resolver's reply to another query as reference
        ([dns(0.01, 62, answers=("10.10.34.35",)), dns(0.02, 59, qid=8, port=50001)],
         F.INJECTED),
        # benign: the resolver's own replies
        ([dns(0.01, 59, answers=("198.19.1.5",)), dns(0.02, 59, qid=8, port=50001)],
         F.CONSISTENT),
        ([dns(0.01, 59, answers=("198.19.1.5",))], F.INCONCLUSIVE),
        # a resolver that answered twice, identically
        ([dns(0.01, 59), dns(0.03, 59)], F.CONSISTENT),
    ],
)
def test_dns_table(rows: list[Packet], verdict: str) -> None:
    result = F.dns_query(rows, RESOLVER, 53, 50000, 7)
    assert result is not None and result.verdict == verdict
    json.dumps(result.to_json())


def test_dns_without_reply() -> None:
    assert F.dns_query([dns(0.01, 59, qid=9)], RESOLVER, 53, 50000, 7) is None


def test_summarize_picks_the_injected_finding() -> None:
    items = [{"verdict": F.CONSISTENT, "reason": "fine"}, {"verdict": F.INJECTED, "reason": "x"}]
    assert F.summarize(items) == "x"
    assert F.summarize(items[:1]) is None


# ---- the records that cross the capture interface -----------------------------------------
addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
packets = st.builds(
    Packet,
    t=st.floats(0, 3600, allow_nan=False).map(lambda x: round(x, 6)),
    src=addresses, dst=addresses, proto=st.sampled_from(["tcp", "udp", "icmp"]),
    ttl=st.integers(0, 255), ip_id=st.integers(0, 65535), df=st.booleans(),
    sport=st.integers(0, 65535), dport=st.integers(0, 65535),
    flags=st.text(alphabet="FSRPAU", max_size=4), seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1), window=st.integers(0, 65535),
    options=st.lists(st.sampled_from(["MSS", "NOP", "WScale", "SAckOK", "Timestamp"]),
                     max_size=6).map(tuple),
    payload_len=st.integers(0, 65535),
    dns_id=st.none() | st.integers(0, 65535),
    dns_rcode=st.none() | st.just("NOERROR"),
    dns_answers=st.lists(addresses, max_size=4).map(tuple),
    icmp_type=st.none() | st.integers(0, 255), icmp_code=st.none() | st.integers(0, 255),
    quoted=st.none() | st.builds(Quoted, src=addresses, dst=addresses,
                                 proto=st.sampled_from(["tcp", "udp"]),
                                 sport=st.integers(0, 65535), dport=st.integers(0, 65535)),
)


@given(packets)
def test_packet_json_round_trip(p: Packet) -> None:
    wire = json.loads(json.dumps(p.to_json()))
    again = Packet.from_json(wire)
    assert again.to_json() == p.to_json()


@settings(max_examples=200)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=20))
def test_packet_parser_rejects_junk_plainly(junk: Any) -> None:
    try:
        parsed = Packet.from_json(junk)
    except ValueError as exc:
        assert str(exc)
    else:  # only a well-formed object parses, and it survives the round trip
        assert Packet.from_json(parsed.to_json()) == parsed


@pytest.mark.parametrize("bad", [
    {"t": 0, "src": "x", "dst": "1.2.3.4", "proto": "tcp", "ttl": 1, "ip_id": 0, "df": True},
    {"t": 0, "src": "1.2.3.4", "dst": "1.2.3.4", "proto": "tcp", "ttl": 300, "ip_id": 0,
     "df": True},
    {"t": 0, "src": "1.2.3.4", "dst": "1.2.3.4", "proto": "sctp", "ttl": 1, "ip_id": 0,
     "df": True},
    {"t": 0, "src": "1.2.3.4", "dst": "1.2.3.4", "proto": "tcp", "ttl": 1, "ip_id": 0,
     "df": True, "flags": "XYZ"},
])
def test_packet_parser_names_the_problem(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Packet.from_json(bad)
