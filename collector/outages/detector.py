"""Shutdown detection from probe presence: a pure detector per network (ASN) and per country.

Signal (IODA's method applied to our own probes): for each group (``asn:AS1234``,
``cc:IR``) and each evaluation time ``t``, the *share* of the group's enrolled probes that are
online and reporting, i.e. heard from (heartbeat on the status topic or a received
measurement) within ``online_timeout`` and not declared offline by the broker's Last Will
since.  A group is in outage while its share is below ``alert_fraction`` times the median of
its own recent history (``baseline_window``), as IODA alerts when a signal drops under a
fraction of its recent median; the baseline is frozen while the outage lasts so a long
shutdown cannot become the new normal.  The outage ends when the share is back above
``recover_fraction`` of that baseline.

Timeliness: a probe that last spoke at ``t_l`` is declared offline at ``t_l + online_timeout``
(1.5 heartbeat intervals by default) or at once by its Last Will; evaluations every
``step`` (a quarter interval) put the alert at most ``1.5 + 0.25 = 1.75`` intervals after a cut,
within the two intervals asked for.

Evidence: which probes went silent, when each was last heard from (the cut happened after the
latest of those: ``start``; and before the earliest of them plus one interval:
``start_upper``), how each disappeared (timeout or Last Will), and, once the agents come back
and upload their own ``connectivity`` records, which probes confirm the outage themselves.

Everything here is pure: the command (``collector.cli.outages``) feeds it from the store.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from collector.events.record import EventLog, EventRecord, Transition, group_names, stable_id


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    heartbeat_interval: float = 60.0
    online_timeout_intervals: float = 1.5
    step_intervals: float = 0.25
    baseline_window: float = 24 * 3600.0
    min_history_intervals: float = 10.0  # history needed before a baseline exists
    alert_fraction: float = 0.5
    recover_fraction: float = 0.8
    min_expected_probes: float = 1.0  # baseline share x enrolled below this: too few to judge

    @property
    def online_timeout(self) -> float:
        return self.heartbeat_interval * self.online_timeout_intervals

    @property
    def step(self) -> float:
        return self.heartbeat_interval * self.step_intervals

    @property
    def min_history(self) -> int:
        return max(1, int(self.min_history_intervals / self.step_intervals))


@dataclass(frozen=True, slots=True)
class Probe:
    probe_id: str
    asn: str  # "AS1234", "" when unknown
    cc: str  # "IR", "" when unknown
    enrolled_at: float
    revoked_at: float | None = None

    def enrolled(self, t: float) -> bool:
        return self.enrolled_at <= t and (self.revoked_at is None or self.revoked_at > t)

    def groups(self) -> list[str]:
        return group_names(self.asn, self.cc)


@dataclass(frozen=True, slots=True)
class Sighting:
    """One sign of life (or death) of a probe, at collector time ``t`` (Unix seconds)."""

    probe_id: str
    t: float
    kind: str  # "heartbeat", "measurement" or "offline" (Last Will / clean disconnect)


@dataclass(frozen=True, slots=True)
class SignalPoint:
    t: float
    group: str
    online: int
    enrolled: int
    online_ids: tuple[str, ...] = ()

    @property
    def share(self) -> float:
        return self.online / self.enrolled if self.enrolled else 0.0


@dataclass(frozen=True, slots=True)
class OutageEvent(EventRecord):
    """An outage of one group; its JSON is ``EventRecord``'s, field by field."""

    event_id: str
    group: str  # "asn:AS1234" / "cc:IR"
    start: float  # best estimate of the cut: the latest last-heard time of the affected probes
    start_upper: float  # the cut happened before this
    detected_at: float
    end: float | None  # None while ongoing
    affected: tuple[str, ...]
    baseline_share: float
    min_share: float
    evidence: dict[str, Any] = field(default_factory=dict)
    confirmed_by: tuple[str, ...] = ()


# ---- presence ----------------------------------------------------------------------------------
class Presence:
    """Per-probe sightings, sorted, answering "was p online at t" and "last heard before t"."""

    def __init__(self, sightings: Iterable[Sighting]) -> None:
        self._by_probe: dict[str, list[Sighting]] = {}
        for s in sightings:
            self._by_probe.setdefault(s.probe_id, []).append(s)
        for seq in self._by_probe.values():
            seq.sort(key=lambda s: s.t)

    def _upto(self, probe_id: str, t: float) -> list[Sighting]:
        seq = self._by_probe.get(probe_id, [])
        lo, hi = 0, len(seq)
        while lo < hi:
            mid = (lo + hi) // 2
            if seq[mid].t <= t:
                lo = mid + 1
            else:
                hi = mid
        return seq[:lo]

    def last_alive(self, probe_id: str, t: float) -> float | None:
        for s in reversed(self._upto(probe_id, t)):
            if s.kind != "offline":
                return s.t
        return None

    def last_will(self, probe_id: str, t: float) -> float | None:
        """Time of an offline message after the last sign of life, if any."""
        seq = self._upto(probe_id, t)
        if seq and seq[-1].kind == "offline":
            return seq[-1].t
        return None

    def online(self, probe_id: str, t: float, timeout: float) -> bool:
        seq = self._upto(probe_id, t)
        if not seq or seq[-1].kind == "offline":
            return False
        return t - seq[-1].t <= timeout

    def first_alive_after(self, probe_id: str, t: float) -> float | None:
        for s in self._by_probe.get(probe_id, []):
            if s.t > t and s.kind != "offline":
                return s.t
        return None


def signal_at(
    t: float, probes: Sequence[Probe], presence: Presence, cfg: DetectorConfig
) -> dict[str, SignalPoint]:
    """The signal of every group at time ``t``."""
    online: dict[str, list[str]] = {}
    enrolled: dict[str, int] = {}
    for p in probes:
        if not p.enrolled(t):
            continue
        up = presence.online(p.probe_id, t, cfg.online_timeout)
        for g in p.groups():
            enrolled[g] = enrolled.get(g, 0) + 1
            if up:
                online.setdefault(g, []).append(p.probe_id)
    return {
        g: SignalPoint(t, g, len(online.get(g, [])), n, tuple(sorted(online.get(g, []))))
        for g, n in enrolled.items()
    }


def signal_series(
    probes: Sequence[Probe],
    sightings: Iterable[Sighting],
    start: float,
    end: float,
    cfg: DetectorConfig,
) -> dict[str, list[SignalPoint]]:
    """Signals of every group from ``start`` to ``end`` every ``cfg.step`` (bounded)."""
    presence = Presence(sightings)
    steps = int((end - start) / cfg.step) + 1
    if steps > 1_000_000:
        raise ValueError("too many evaluation points: widen the step or shorten the range")
    out: dict[str, list[SignalPoint]] = {}
    for i in range(steps):
        t = start + i * cfg.step
        for g, point in signal_at(t, probes, presence, cfg).items():
            out.setdefault(g, []).append(point)
    return out


# ---- detection ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GroupState:
    """What the detector remembers about one group between evaluations."""

    open_event: OutageEvent | None = None
    frozen_baseline: float | None = None
    last_online: tuple[str, ...] = ()  # who was online at the last normal point


def baseline(history: Sequence[SignalPoint], t: float, cfg: DetectorConfig) -> float | None:
    """Median share over the window before ``t`` (None while the history is too short)."""
    window = [p.share for p in history if t - cfg.baseline_window <= p.t < t]
    if len(window) < cfg.min_history:
        return None
    return float(statistics.median(window))


def _event_id(group: str, start: float) -> str:
    return stable_id(group, f"{start:.3f}")


def step(
    state: GroupState,
    point: SignalPoint,
    history: Sequence[SignalPoint],
    presence: Presence,
    cfg: DetectorConfig,
) -> tuple[GroupState, OutageEvent | None, Transition | None]:
    """Advance one group by one point.  Returns (state, event, transition) where transition is
    "opened", "updated", "closed" or None.  ``history`` holds earlier points of the group."""
    if state.open_event is None:
        base = baseline(history, point.t, cfg)
        if base is None or base <= 0 or base * point.enrolled < cfg.min_expected_probes:
            return state, None, None
        if point.share >= cfg.alert_fraction * base:
            return state, None, None
        # alert: the probes online at the last normal point that are gone now
        normal = [p for p in history if p.t < point.t and p.share >= cfg.recover_fraction * base]
        prev_ids = set(normal[-1].online_ids) if normal else set()
        affected = tuple(sorted(prev_ids - set(point.online_ids)))
        last_heard = {pid: presence.last_alive(pid, point.t) for pid in affected}
        heard = [v for v in last_heard.values() if v is not None]
        start = max(heard) if heard else point.t
        upper = (min(heard) + cfg.heartbeat_interval) if heard else point.t
        wills = {pid: presence.last_will(pid, point.t) for pid in affected}
        event = OutageEvent(
            event_id=_event_id(point.group, start),
            group=point.group,
            start=start,
            start_upper=max(upper, start),
            detected_at=point.t,
            end=None,
            affected=affected,
            baseline_share=round(base, 4),
            min_share=round(point.share, 4),
            evidence={
                "last_heard": {k: v for k, v in last_heard.items() if v is not None},
                "last_will": {k: v for k, v in wills.items() if v is not None},
                "enrolled": point.enrolled,
                "online_at_detection": point.online,
                "signal": "share of enrolled probes online and reporting",
            },
        )
        return GroupState(event, base, tuple(sorted(prev_ids))), event, "opened"
    event = state.open_event
    base = state.frozen_baseline or event.baseline_share
    if point.share >= cfg.recover_fraction * base:
        heard = event.evidence.get("last_heard", {})
        back = [
            presence.first_alive_after(pid, float(heard.get(pid, event.start)))
            for pid in event.affected
        ]
        returned = [b for b in back if b is not None and b <= point.t]
        end = min(returned) if returned else point.t
        closed = replace(event, end=max(end, event.start))
        return GroupState(), closed, "closed"
    if point.share < event.min_share:
        # more probes went silent: they belong to the same outage
        gone = set(event.affected) | (set(state.last_online) - set(point.online_ids))
        heard_now: dict[str, float] = dict(event.evidence.get("last_heard", {}))
        for pid in gone - set(event.affected):
            last = presence.last_alive(pid, point.t)
            if last is not None:
                heard_now[pid] = last
        evidence = {**event.evidence, "last_heard": heard_now}
        start = max(heard_now.values()) if heard_now else event.start
        updated = replace(
            event, min_share=round(point.share, 4), affected=tuple(sorted(gone)),
            evidence=evidence, start=start, start_upper=max(event.start_upper, start),
        )
        return GroupState(updated, base, state.last_online), updated, "updated"
    return state, None, None


def detect(
    series: Mapping[str, Sequence[SignalPoint]],
    presence: Presence,
    cfg: DetectorConfig,
) -> list[OutageEvent]:
    """Run the detector over whole series (batch mode, used by tests and re-analysis)."""
    log: EventLog[OutageEvent] = EventLog()
    for points in series.values():
        state = GroupState()
        for i, point in enumerate(points):
            state, event, transition = step(state, point, points[:i], presence, cfg)
            log.step(transition, event)
        log.end_of_group(state.open_event)
    return log.events()


# ---- confirmation by the agents' own records ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class AgentOutage:
    """An outage an agent recorded itself (``connectivity`` test_keys.outage), uploaded later."""

    probe_id: str
    start: float
    end: float | None
    kind: str  # "offline", "international", "dns"


def confirm(
    event: OutageEvent, records: Iterable[AgentOutage], slack: float = 120.0
) -> OutageEvent:
    """Mark the affected probes whose own outage overlaps the event (within ``slack``)."""
    end = event.end if event.end is not None else float("inf")
    who = set(event.confirmed_by)
    spans: dict[str, list[list[float]]] = {}
    for r in records:
        if r.probe_id not in event.affected:
            continue
        r_end = r.end if r.end is not None else float("inf")
        if r.start <= end + slack and r_end >= event.start - slack:
            who.add(r.probe_id)
            spans.setdefault(r.probe_id, []).append([r.start, r_end])
    if who == set(event.confirmed_by):
        return event
    evidence = dict(event.evidence)
    agent_spans = dict(evidence.get("agent_outages", {}))
    agent_spans.update({k: v for k, v in spans.items()})
    evidence["agent_outages"] = agent_spans
    return replace(event, confirmed_by=tuple(sorted(who)), evidence=evidence)
