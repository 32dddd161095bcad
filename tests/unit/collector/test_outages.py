"""The collector's outage detector on synthetic presence series."""

from __future__ import annotations

import pytest

from collector.outages.detector import (
    AgentOutage,
    DetectorConfig,
    OutageEvent,
    Presence,
    Probe,
    Sighting,
    confirm,
    detect,
    signal_series,
)

HB = 60.0
CFG = DetectorConfig(heartbeat_interval=HB, baseline_window=3600.0)


def probes(n: int, asn: str = "AS64500", cc: str = "IR", prefix: str = "p") -> list[Probe]:
    return [Probe(f"{prefix}{i}", asn, cc, enrolled_at=0.0) for i in range(n)]


def heartbeats(
    ps: list[Probe], start: float, end: float, gaps: dict[str, tuple[float, float]] | None = None,
    phase: float = 7.0,
) -> list[Sighting]:
    """Each probe heartbeats every HB seconds (staggered), silent during its gap."""
    out = []
    for i, p in enumerate(ps):
        t = start + (i * phase) % HB
        while t < end:
            gap = (gaps or {}).get(p.probe_id)
            if gap is None or not gap[0] <= t < gap[1]:
                out.append(Sighting(p.probe_id, t, "heartbeat"))
            t += HB
    return out


def run(ps: list[Probe], sightings: list[Sighting], end: float) -> list[OutageEvent]:
    series = signal_series(ps, sightings, 0.0, end, CFG)
    return detect(series, Presence(sightings), CFG)


def test_no_outage_on_steady_presence() -> None:
    ps = probes(10)
    assert run(ps, heartbeats(ps, 0, 7200), 7200) == []


def test_one_volunteer_unplugging_is_not_a_shutdown() -> None:
    ps = probes(10)
    s = heartbeats(ps, 0, 7200, gaps={"p3": (3000.0, 9999.0)})
    assert run(ps, s, 7200) == []


def test_network_shutdown_detected_within_two_heartbeats_and_closed() -> None:
    ps = probes(8)
    cut, back = 3600.0, 4500.0
    gaps = {p.probe_id: (cut, back) for p in ps[:6]}
    s = heartbeats(ps, 0, 7200, gaps)
    events = [e for e in run(ps, s, 7200) if e.group == "asn:AS64500"]
    assert len(events) == 1
    e = events[0]
    assert e.detected_at - cut <= 2 * HB
    assert cut - HB <= e.start <= cut
    assert e.start_upper >= e.start
    assert e.end is not None and back <= e.end <= back + HB
    assert set(e.affected) == {p.probe_id for p in ps[:6]}
    assert e.baseline_share == pytest.approx(1.0)
    assert e.min_share == pytest.approx(2 / 8)
    assert set(e.evidence["last_heard"]) == set(e.affected)
    # the country signal sees the same cut
    assert any(ev.group == "cc:IR" for ev in run(ps, s, 7200))


def test_last_will_speeds_up_detection() -> None:
    ps = probes(4)
    cut = 3605.0
    s = heartbeats(ps, 0, 7200, {p.probe_id: (cut, 9999.0) for p in ps})
    s += [Sighting(p.probe_id, cut + 1.0, "offline") for p in ps]
    (e,) = [e for e in run(ps, s, 5000) if e.group == "asn:AS64500"]
    assert e.detected_at - cut <= CFG.step + 1.0
    assert e.ongoing
    assert set(e.evidence["last_will"]) == {p.probe_id for p in ps}


def test_other_network_unaffected() -> None:
    a = probes(5, asn="AS1", prefix="a")
    b = probes(5, asn="AS2", prefix="b")
    s = heartbeats(a, 0, 7200, {p.probe_id: (3600.0, 4000.0) for p in a}) + heartbeats(b, 0, 7200)
    groups = {e.group for e in run(a + b, s, 7200)}
    assert "asn:AS1" in groups and "asn:AS2" not in groups
    assert "cc:IR" not in groups  # half the country: 0.5 of baseline is not under 0.5


def test_no_alert_without_history() -> None:
    ps = probes(3)
    s = heartbeats(ps, 0, 7200, {p.probe_id: (60.0, 9999.0) for p in ps})
    assert run(ps, s, 600) == []


def test_probe_enrolled_later_is_not_missing_before() -> None:
    ps = [*probes(4), Probe("late", "AS64500", "IR", enrolled_at=5000.0)]
    s = heartbeats(ps[:4], 0, 7200) + heartbeats([ps[4]], 5000.0, 7200)
    assert run(ps, s, 7200) == []


def test_agents_own_records_confirm_the_event() -> None:
    ps = probes(4)
    s = heartbeats(ps, 0, 7200, {p.probe_id: (3600.0, 4200.0) for p in ps})
    (e,) = [e for e in run(ps, s, 7200) if e.group == "asn:AS64500"]
    records = [AgentOutage("p0", 3610.0, 4190.0, "offline"),
               AgentOutage("p1", 100.0, 200.0, "offline"),  # another day: no
               AgentOutage("zz", 3610.0, 4190.0, "offline")]  # not affected: no
    confirmed = confirm(e, records)
    assert confirmed.confirmed_by == ("p0",)
    assert confirmed.evidence["agent_outages"]["p0"] == [[3610.0, 4190.0]]
    assert OutageEvent.from_json(confirmed.to_json()) == confirmed


def test_presence_queries() -> None:
    pr = Presence([Sighting("a", 10.0, "heartbeat"), Sighting("a", 70.0, "measurement"),
                   Sighting("a", 80.0, "offline")])
    assert pr.online("a", 75.0, 90.0)
    assert not pr.online("a", 85.0, 90.0)
    assert pr.last_alive("a", 100.0) == 70.0
    assert pr.last_will("a", 100.0) == 80.0
    assert pr.first_alive_after("a", 20.0) == 70.0
    assert not pr.online("nobody", 10.0, 90.0)
