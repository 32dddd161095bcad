"""The connectivity state machine: one row per state, outages opened and closed."""

from __future__ import annotations

import pytest

from agent.experiments.connectivity.analyze import (
    CONTROL,
    DNS,
    INTERNATIONAL,
    OFFLINE,
    ONLINE,
    Assessment,
    Check,
    TrackerState,
    advance,
    assess,
    verdict,
)
from agent.wire.record import Status


def c(kind: str, ok: bool, scope: str = "international", target: str = "") -> Check:
    return Check(kind, target or f"{kind}-{scope}", None if ok else "generic_timeout_error",
                 0.0, 0.1, scope)


STATE_CASES = [
    ("all-ok", [c("control", True), c("anchor", True), c("dns", True)], ONLINE),
    ("one-anchor-down", [c("control", True), c("anchor", True, target="a"),
                         c("anchor", False, target="b"), c("dns", True)], ONLINE),
    ("nothing", [c("control", False), c("anchor", False), c("dns", False)], OFFLINE),
    ("no-checks", [], OFFLINE),
    ("only-dns", [c("control", False), c("anchor", False), c("dns", True)], OFFLINE),
    ("border-cut", [c("control", False), c("anchor", False),
                    c("anchor", True, "domestic"), c("dns", True, "domestic")], INTERNATIONAL),
    ("dns-cut", [c("control", True), c("anchor", True), c("dns", False)], DNS),
    ("helper-blocked", [c("control", False), c("anchor", True), c("dns", True)], CONTROL),
]


@pytest.mark.parametrize(("case", "checks", "state"), STATE_CASES)
def test_assess(case: str, checks: list[Check], state: str) -> None:
    assert assess(checks).state == state, case


VERDICTS = [
    (ONLINE, Status.OK, ""),
    (OFFLINE, Status.DOWN, "connectivity.offline"),
    (INTERNATIONAL, Status.DOWN, "connectivity.international"),
    (DNS, Status.DOWN, "connectivity.dns"),
    (CONTROL, Status.INCONCLUSIVE, "control.failed"),
]


@pytest.mark.parametrize(("state", "status", "reason"), VERDICTS)
def test_verdict(state: str, status: Status, reason: str) -> None:
    v = verdict(Assessment(state, ()))
    assert (v.status, v.reason, v.blocking) == (status, reason, None)


def test_outage_opens_grows_and_closes() -> None:
    s = TrackerState()
    s, closed = advance(s, Assessment(ONLINE, ()), "2024-01-01T00:00:00Z")
    assert closed is None and s.last_ok == "2024-01-01T00:00:00Z"
    s, closed = advance(s, Assessment(OFFLINE, ("anchor:a",)), "2024-01-01T00:01:00Z")
    assert closed is None and s.open_outage is not None
    assert s.open_outage.start == "2024-01-01T00:01:00Z"
    assert s.open_outage.last_ok == "2024-01-01T00:00:00Z"
    s, _ = advance(s, Assessment(INTERNATIONAL, ("anchor:b",)), "2024-01-01T00:02:00Z")
    assert s.open_outage is not None and s.open_outage.checks == 2
    assert s.open_outage.states == (OFFLINE, INTERNATIONAL)
    assert s.open_outage.failed == ("anchor:a", "anchor:b")
    s, closed = advance(s, Assessment(ONLINE, ()), "2024-01-01T00:03:00Z")
    assert closed is not None and closed.end == "2024-01-01T00:03:00Z"
    assert closed.start == "2024-01-01T00:01:00Z" and s.open_outage is None
    assert s.history == (closed,)


def test_control_only_failure_is_not_an_outage() -> None:
    s, closed = advance(TrackerState(), Assessment(CONTROL, ("control:x",)), "t1")
    assert s.open_outage is None and closed is None


def test_state_round_trips_through_json() -> None:
    s = TrackerState()
    s, _ = advance(s, Assessment(OFFLINE, ("dns:x",)), "t1")
    assert TrackerState.from_json(s.to_json()) == s
    assert Check.from_json(c("anchor", False).to_json()) == c("anchor", False)


def test_history_is_bounded() -> None:
    s = TrackerState()
    for i in range(50):
        s, _ = advance(s, Assessment(OFFLINE, ()), f"a{i}")
        s, _ = advance(s, Assessment(ONLINE, ()), f"b{i}")
    assert len(s.history) == 20
