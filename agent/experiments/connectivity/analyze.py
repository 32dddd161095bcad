"""Connectivity decisions: pure functions from a minute's checks to a state and an outage record.

Every minute the agent checks three independent things (``agent.experiments.connectivity``
does the I/O): the control helper, several anchors (TCP connects to well-known addresses, some
inside the country and some outside) and DNS through the system resolver.  Independence is the
point: one dead anchor is a dead anchor, all of them at once is the network.

States:

* ``online``: at least one international check works and DNS works;
* ``offline``: nothing works (a total shutdown, or the volunteer's own router is down: the
  collector tells the two apart by how many probes of the same network go silent together);
* ``international``: only domestic anchors answer (Iran, November 2019: the national
  network stayed up while the border was cut);
* ``dns``: addresses answer but the resolver does not (a DNS-level shutdown);
* ``control``: everything works except the control helper (possibly the helper is blocked):
  not an outage, but the web verdicts of the period will be inconclusive.

An outage is a maximal run of checks in a non-online, non-control state.  ``advance`` is the
state machine that opens it at the first failing check (``start``, with ``last_ok`` the last
good check before it, so the true cut lies in between) and closes it at the first good check
(``end``), carrying what failed.  The record with the closed outage is produced while the
network is back, but every minute's record during the outage is kept in the outbox until it can
be uploaded, so the collector eventually receives the whole story.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.wire.record import Status, Verdict

ONLINE = "online"
OFFLINE = "offline"
INTERNATIONAL = "international"
DNS = "dns"
CONTROL = "control"
OUTAGE_STATES = frozenset({OFFLINE, INTERNATIONAL, DNS})

CHECK_KINDS = ("control", "anchor", "dns")


@dataclass(frozen=True, slots=True)
class Check:
    kind: str  # "control" | "anchor" | "dns"
    target: str  # "ip:port" for anchors, a URL for the control, a name for DNS
    failure: str | None
    t0: float
    t: float
    scope: str = "international"  # "domestic" | "international" (anchors; control and DNS too)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "scope": self.scope,
            "failure": self.failure,
            "t0": self.t0,
            "t": self.t,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Check:
        return cls(
            kind=str(d["kind"]),
            target=str(d["target"]),
            failure=d.get("failure"),
            t0=float(d.get("t0", 0.0)),
            t=float(d.get("t", 0.0)),
            scope=str(d.get("scope", "international")),
        )


@dataclass(frozen=True, slots=True)
class Assessment:
    state: str
    failed: tuple[str, ...]  # "kind:target" of every failed check


def assess(checks: Sequence[Check]) -> Assessment:
    """The state one minute's checks show (see the module docstring)."""
    failed = tuple(f"{c.kind}:{c.target}" for c in checks if not c.ok)
    if not checks or all(not c.ok for c in checks):
        return Assessment(OFFLINE, failed)
    reach = [c for c in checks if c.kind in ("anchor", "control")]
    dns = [c for c in checks if c.kind == "dns"]
    intl_ok = any(c.ok for c in reach if c.scope == "international")
    dom_ok = any(c.ok for c in reach if c.scope == "domestic")
    dns_ok = any(c.ok for c in dns) if dns else True
    if not intl_ok and not dom_ok:
        # only DNS answered: a resolver inside the ISP that still works, routing that does not
        return Assessment(OFFLINE, failed)
    if not intl_ok:
        return Assessment(INTERNATIONAL, failed)
    if not dns_ok:
        return Assessment(DNS, failed)
    control = [c for c in checks if c.kind == "control"]
    if control and not any(c.ok for c in control):
        return Assessment(CONTROL, failed)
    return Assessment(ONLINE, failed)


@dataclass(frozen=True, slots=True)
class Outage:
    start: str  # RFC 3339 UTC of the first failing check
    last_ok: str | None  # the last good check before it (the cut lies in between)
    end: str | None  # the first good check after it; None while ongoing
    states: tuple[str, ...]  # every outage state seen, in order of first appearance
    failed: tuple[str, ...]  # every check that failed during the outage
    checks: int  # how many minutes' checks were in the outage

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "last_ok": self.last_ok,
            "end": self.end,
            "states": list(self.states),
            "failed": list(self.failed),
            "checks": self.checks,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Outage:
        return cls(
            start=str(d["start"]),
            last_ok=d.get("last_ok"),
            end=d.get("end"),
            states=tuple(str(s) for s in d.get("states", [])),
            failed=tuple(str(s) for s in d.get("failed", [])),
            checks=int(d.get("checks", 0)),
        )


@dataclass(frozen=True, slots=True)
class TrackerState:
    """Persisted between runs (a small JSON file in the state directory)."""

    state: str = ONLINE
    last_ok: str | None = None
    open_outage: Outage | None = None
    history: tuple[Outage, ...] = field(default_factory=tuple)  # recent closed outages

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "last_ok": self.last_ok,
            "open_outage": None if self.open_outage is None else self.open_outage.to_json(),
            "history": [o.to_json() for o in self.history],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrackerState:
        open_ = d.get("open_outage")
        return cls(
            state=str(d.get("state", ONLINE)),
            last_ok=d.get("last_ok"),
            open_outage=None if open_ is None else Outage.from_json(open_),
            history=tuple(Outage.from_json(o) for o in d.get("history", [])),
        )


MAX_HISTORY = 20


def _merge(seq: tuple[str, ...], new: Sequence[str], limit: int = 64) -> tuple[str, ...]:
    out = list(seq)
    for item in new:
        if item not in out and len(out) < limit:
            out.append(item)
    return tuple(out)


def advance(
    prev: TrackerState, assessment: Assessment, now: str
) -> tuple[TrackerState, Outage | None]:
    """Fold one assessment (at RFC 3339 time ``now``) into the tracker.

    Returns the new state and the outage that *closed* with this check, if any.  An ongoing
    outage is in ``state.open_outage``.
    """
    in_outage = assessment.state in OUTAGE_STATES
    if in_outage:
        if prev.open_outage is None:
            outage = Outage(
                start=now, last_ok=prev.last_ok, end=None, states=(assessment.state,),
                failed=assessment.failed, checks=1,
            )
        else:
            o = prev.open_outage
            outage = replace(
                o,
                states=_merge(o.states, [assessment.state]),
                failed=_merge(o.failed, assessment.failed),
                checks=o.checks + 1,
            )
        return replace(prev, state=assessment.state, open_outage=outage), None
    closed = None
    history = prev.history
    if prev.open_outage is not None:
        closed = replace(prev.open_outage, end=now)
        history = (*history, closed)[-MAX_HISTORY:]
    return TrackerState(state=assessment.state, last_ok=now, open_outage=None,
                        history=history), closed


_REASONS = {
    OFFLINE: "connectivity.offline",
    INTERNATIONAL: "connectivity.international",
    DNS: "connectivity.dns",
}


def verdict(assessment: Assessment) -> Verdict:
    """The record's verdict: ``down`` during an outage (the network, not a site, is down;
    whether it is a shutdown is the collector's call across probes), ``inconclusive`` when only
    the control helper is unreachable, ``ok`` otherwise."""
    if assessment.state in _REASONS:
        return Verdict(Status.DOWN, reason=_REASONS[assessment.state])
    if assessment.state == CONTROL:
        return Verdict(Status.INCONCLUSIVE, reason="control.failed")
    return Verdict(Status.OK)
