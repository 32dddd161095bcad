"""Whole-network slowdowns from the probes' benign transfer rates: a pure detector.

Iran 2013 slowed everything and blocked nothing: no single measurement says "throttled",
because every target and the reference are slow alike.  What changes is each probe's rate
compared with its own past.  Signal, per group (``asn:AS1234``, ``cc:IR``) and per *bin* (one
measurement interval ``interval``, aligned on multiples of it so every pass sees the same
bins):

* a probe's **value** in a bin is the median of its benign reference rates measured in it
  (``collector.slowdowns.rates``); a record without a usable rate is missing data and adds
  nothing, never a zero;
* its **baseline** is the median of its own values over the ``baseline_window`` before the
  bin, leaving out the bins of the group's slowdowns (so a long slowdown cannot become the
  new normal, as the outage detector freezes its baseline); with short bins, only those at
  the same time of day (``daily_slack``) when there are ``min_history`` of them, so an
  ISP's busy evenings are compared with its busy evenings; a probe needs ``min_history``
  bins before it counts;
* its **ratio** is value / baseline.  A probe on a slow home line has a slow baseline: its
  ratio stays near 1;
* the group's point: how many probes are **active** (a baseline, and a value in this bin or
  one of the ``active_bins`` - 1 before it), how many of them **measured** in this bin, how
  many are **slow** (ratio at most ``alert_fraction``), and the median ratio.  An active
  probe without a rate in this bin counts in the quorum's denominator and not as slow: when
  records go missing, a minority of slow probes cannot become a majority.

A slowdown **opens** at the first bin with at least ``min_probes`` slow probes making at least
``quorum`` of the active ones: one volunteer's line, or a minority of probes, never does.  It
**ends** at the first later bin with ``min_probes`` measuring probes of which fewer than
``recover_quorum`` are slow; with too few measuring probes it stays open (no data is not a
recovery).  A bin is judged once it is over plus ``grace`` intervals (late uploads), so a
slowdown starting in bin k is seen when bin k (if most probes measured after the start) or
bin k + 1 is judged: at most 2 + ``grace`` intervals after its start.

Times come from the probes' measurements, not from when they arrived:

* ``start``: the slow streaks' first observations of the affected probes (the earliest that
  is not more than one interval before their median, so one probe that was already slow for
  its own reasons does not pull the start back); ``start_lower``: the latest normal
  observation of an affected probe before ``start`` (the slowdown began after it);
* ``end``: likewise the first normal observation after each recovered probe's last slow one.

Everything here is pure; ``collector.slowdowns.watch`` feeds it from the store.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from collector.events.record import EventLog, EventRecord, Transition, group_names, stable_id

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class SlowdownConfig:
    interval: float = 3600.0  # the agents' throttling interval, seconds: one bin
    baseline_window: float = 7 * 86400.0
    min_history: int = 3  # bins of its own history a probe needs before it counts
    alert_fraction: float = 0.3  # slow: value at most this fraction of the probe's baseline
    quorum: float = 0.6  # share of the active probes that must be slow to open
    min_probes: int = 3  # and at least this many slow (and active) probes
    recover_quorum: float = 0.4  # ends when fewer than this share of active probes are slow
    grace: float = 0.25  # intervals after a bin ends before it is judged (late uploads)
    active_bins: int = 3  # a probe with a rate in one of this many last bins is active
    # compare with the same time of day (busy evenings with busy evenings) when bins are
    # short enough to have one, within this many seconds either side
    daily_slack: float = 3600.0
    max_daily_interval: float = 3 * 3600.0  # longer bins: one baseline for the whole day

    def validate(self) -> SlowdownConfig:
        if not self.interval > 0 or not self.baseline_window >= 2 * self.interval:
            raise ValueError("interval must be > 0 and baseline_window >= 2 intervals")
        if not 0 < self.alert_fraction < 1:
            raise ValueError("alert_fraction must be between 0 and 1")
        if not 0 < self.recover_quorum <= self.quorum <= 1:
            raise ValueError("need 0 < recover_quorum <= quorum <= 1")
        if self.min_probes < 1 or self.min_history < 1 or self.active_bins < 1:
            raise ValueError("min_probes, min_history and active_bins must be >= 1")
        if self.grace < 0:
            raise ValueError("grace must be >= 0")
        return self

    @property
    def window_bins(self) -> int:
        return max(1, round(self.baseline_window / self.interval))

    @property
    def daily(self) -> bool:
        return self.interval <= self.max_daily_interval and self.baseline_window >= 2 * DAY


@dataclass(frozen=True, slots=True)
class Observation:
    """One benign reference rate measured by a probe at ``t`` (Unix seconds, probe time)."""

    probe_id: str
    asn: str  # "AS1234", "" when unknown
    cc: str  # "IR", "" when unknown
    t: float
    rate_bps: float

    def groups(self) -> list[str]:
        return group_names(self.asn, self.cc)

    @property
    def series(self) -> str:
        """A probe's baseline is its own on one network: a probe that moves starts afresh."""
        return f"{self.probe_id}@{self.asn}"


@dataclass(frozen=True, slots=True)
class ProbeRatio:
    series: str  # "probe_id@asn": whose baseline
    probe_id: str
    observed_bps: float
    baseline_bps: float

    @property
    def ratio(self) -> float:
        return self.observed_bps / self.baseline_bps


@dataclass(frozen=True, slots=True)
class SignalPoint:
    """One group in one bin: the throughput signal."""

    group: str
    bin_start: float
    interval: float
    probes: tuple[ProbeRatio, ...]  # the active probes with a rate in this bin
    alert_fraction: float
    idle: int = 0  # active probes (a rate in the last bins) without a rate in this one

    @property
    def measured(self) -> int:
        return len(self.probes)

    @property
    def active(self) -> int:
        return len(self.probes) + self.idle

    @property
    def slow_ids(self) -> tuple[str, ...]:
        """The slow probes' series keys."""
        return tuple(p.series for p in self.probes if p.ratio <= self.alert_fraction)

    @property
    def slow(self) -> int:
        return len(self.slow_ids)

    @property
    def slow_share(self) -> float:
        """Slow probes among the active ones: a probe missing this bin is not slow."""
        return self.slow / self.active if self.active else 0.0

    @property
    def measured_slow_share(self) -> float:
        return self.slow / self.measured if self.measured else 0.0

    @property
    def median_ratio(self) -> float | None:
        return statistics.median(p.ratio for p in self.probes) if self.probes else None

    def to_json(self) -> dict[str, Any]:
        med = self.median_ratio
        return {
            "group": self.group,
            "bin_start": self.bin_start,
            "bin_end": self.bin_start + self.interval,
            "active": self.active,
            "measured": self.measured,
            "slow": self.slow,
            "slow_share": round(self.slow_share, 4),
            "median_ratio": None if med is None else round(med, 4),
        }


@dataclass(frozen=True, slots=True)
class SlowdownEvent(EventRecord):
    """A slowdown of one group; its JSON is ``EventRecord``'s, field by field."""

    event_id: str
    group: str  # "asn:AS1234" / "cc:IR"
    start: float  # the first slow observations of the affected probes
    start_lower: float  # the slowdown began after this (their last normal observation)
    detected_at: float  # when the opening bin was judged (its end plus the grace)
    end: float | None  # None while ongoing
    affected: tuple[str, ...]
    active: int  # active probes in the opening bin
    median_ratio: float  # lowest median ratio (observed / own baseline) of the group so far
    evidence: dict[str, Any] = field(default_factory=dict)


# ---- bins and baselines --------------------------------------------------------------------
def bin_of(t: float, interval: float) -> int:
    return math.floor(t / interval)


class History:
    """Every observation by group and series, binned; answers values and baselines."""

    def __init__(self, observations: Iterable[Observation], cfg: SlowdownConfig) -> None:
        self.cfg = cfg
        # group -> series -> bin -> [(t, rate)]
        self.by_group: dict[str, dict[str, dict[int, list[tuple[float, float]]]]] = {}
        self.probe_of: dict[str, str] = {}
        for o in observations:
            if not (o.rate_bps > 0 and math.isfinite(o.rate_bps) and math.isfinite(o.t)):
                continue
            self.probe_of[o.series] = o.probe_id
            b = bin_of(o.t, cfg.interval)
            for g in o.groups():
                self.by_group.setdefault(g, {}).setdefault(o.series, {}).setdefault(
                    b, []).append((o.t, o.rate_bps))
        self._values: dict[tuple[str, str, int], float] = {}

    def value(self, group: str, series: str, b: int) -> float | None:
        key = (group, series, b)
        if key not in self._values:
            obs = self.by_group.get(group, {}).get(series, {}).get(b)
            if not obs:
                return None
            self._values[key] = float(statistics.median(r for _, r in obs))
        return self._values[key]

    def baseline(self, group: str, series: str, b: int, excluded: frozenset[int]) -> float | None:
        """The series' own median over the window before bin ``b`` (the event bins left out):
        of the same time of day when there are ``min_history`` such bins, else of all."""
        cfg = self.cfg
        bins = self.by_group.get(group, {}).get(series, {})
        lo = b - cfg.window_bins
        history = [(j, self.value(group, series, j)) for j in bins
                   if lo <= j < b and j not in excluded]
        usable = [(j, v) for j, v in history if v is not None]
        if len(usable) < cfg.min_history:
            return None
        if cfg.daily:
            same = [v for j, v in usable if _day_distance(j, b, cfg.interval) <= cfg.daily_slack]
            if len(same) >= cfg.min_history:
                return float(statistics.median(same))
        return float(statistics.median(v for _, v in usable))

    def observations(self, group: str, series: str, upto_bin: int
                     ) -> list[tuple[float, float]]:
        """The series' observations up to the end of bin ``upto_bin``, newest first."""
        bins = self.by_group.get(group, {}).get(series, {})
        out = [o for j, obs in bins.items() if j <= upto_bin for o in obs]
        out.sort(reverse=True)
        return out


def _day_distance(j: int, b: int, interval: float) -> float:
    """How far apart bins ``j`` and ``b`` are in time of day (seconds, 0 to half a day)."""
    d = ((b - j) * interval) % DAY
    return min(d, DAY - d)


def signal_point(history: History, group: str, b: int, excluded: frozenset[int]
                 ) -> tuple[SignalPoint, dict[str, float]]:
    """The group's point in bin ``b`` and the baseline of every measured series."""
    cfg = history.cfg
    probes: list[ProbeRatio] = []
    baselines: dict[str, float] = {}
    idle = 0
    for series, bins in sorted(history.by_group.get(group, {}).items()):
        value = history.value(group, series, b)
        if value is None and not any(b - j in bins for j in range(1, cfg.active_bins)):
            continue  # not participating lately
        base = history.baseline(group, series, b, excluded)
        if base is None or base <= 0:
            continue
        if value is None:
            idle += 1  # active, but no usable rate in this bin: missing, not slow
            continue
        baselines[series] = base
        probes.append(ProbeRatio(series, history.probe_of[series], value, base))
    point = SignalPoint(group, b * cfg.interval, cfg.interval, tuple(probes),
                        cfg.alert_fraction, idle)
    return point, baselines


# ---- detection -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GroupState:
    open_event: SlowdownEvent | None = None
    open_bin: int | None = None
    excluded: frozenset[int] = frozenset()  # bins of this group's slowdowns so far


def event_id(group: str, open_bin_start: float) -> str:
    return stable_id("slowdown", group, f"{open_bin_start:.3f}")


def robust_first(times: Sequence[float], interval: float) -> float:
    """The earliest time not more than one interval before the median of ``times``."""
    med = statistics.median(times)
    return min(t for t in times if t >= med - interval)


def _streak(obs: Sequence[tuple[float, float]], base: float, slow: bool, frac: float
            ) -> tuple[float | None, float | None]:
    """Walk newest-first: (first time of the current run of slow/normal observations, the
    last observation of the other kind before it)."""
    first: float | None = None
    for t, rate in obs:
        is_slow = rate <= frac * base
        if is_slow == slow:
            first = t
        else:
            return first, t
    return first, None


def _open(history: History, point: SignalPoint, baselines: Mapping[str, float], b: int
          ) -> SlowdownEvent:
    cfg = history.cfg
    starts: list[float] = []
    lowers: list[float] = []
    per_probe: dict[str, dict[str, Any]] = {}
    for series in point.slow_ids:
        obs = history.observations(point.group, series, b)
        first, before = _streak(obs, baselines[series], True, cfg.alert_fraction)
        if first is None:  # pragma: no cover - a slow bin has a slow observation
            continue
        starts.append(first)
        if before is not None:
            lowers.append(before)
        per_probe[history.probe_of[series]] = {
            "baseline_bps": round(baselines[series], 1),
            "observed_bps": round(history.value(point.group, series, b) or 0.0, 1),
            "first_slow": first,
            "last_normal": before,
        }
    start = robust_first(starts, cfg.interval)
    earlier = [t for t in lowers if t <= start]
    start_lower = max(earlier) if earlier else start - cfg.interval
    open_start = b * cfg.interval
    return SlowdownEvent(
        event_id=event_id(point.group, open_start),
        group=point.group,
        start=start,
        start_lower=start_lower,
        detected_at=open_start + cfg.interval * (1 + cfg.grace),
        end=None,
        affected=tuple(sorted(per_probe)),
        active=point.active,
        median_ratio=round(point.median_ratio or 0.0, 4),
        evidence={
            "signal": "benign reference rate / the probe's own median rate before",
            "interval_s": cfg.interval,
            "alert_fraction": cfg.alert_fraction,
            "quorum": cfg.quorum,
            "active_at_detection": point.active,
            "slow_at_detection": point.slow,
            "probes": per_probe,
        },
    )


def _update(history: History, state: GroupState, point: SignalPoint, b: int
            ) -> SlowdownEvent:
    """More probes slow, a lower median: the same slowdown, with its evidence."""
    event = state.open_event
    assert event is not None
    probes = dict(event.evidence.get("probes", {}))
    for p in point.probes:
        pid = p.probe_id
        if p.ratio > history.cfg.alert_fraction:
            continue
        entry = dict(probes.get(pid, {}))
        if not entry:
            obs = history.observations(point.group, p.series, b)
            first, before = _streak(obs, p.baseline_bps, True, history.cfg.alert_fraction)
            entry = {"baseline_bps": round(p.baseline_bps, 1), "first_slow": first,
                     "last_normal": before}
        entry["observed_bps"] = round(min(p.observed_bps, entry.get("observed_bps", math.inf)), 1)
        probes[pid] = entry
    med = point.median_ratio
    lowest = event.median_ratio if med is None else min(event.median_ratio, round(med, 4))
    return replace(event, affected=tuple(sorted(probes)), median_ratio=lowest,
                   evidence={**event.evidence, "probes": probes})


def _close(history: History, state: GroupState, point: SignalPoint, b: int) -> SlowdownEvent:
    cfg = history.cfg
    event = state.open_event
    assert event is not None
    ends: list[float] = []
    for p in point.probes:
        if p.ratio <= cfg.alert_fraction or p.probe_id not in event.affected:
            continue
        obs = history.observations(point.group, p.series, b)
        first_normal, _ = _streak(obs, p.baseline_bps, False, cfg.alert_fraction)
        if first_normal is not None:
            ends.append(first_normal)
    end = robust_first(ends, cfg.interval) if ends else b * cfg.interval
    return replace(event, end=max(end, event.start))


def step(history: History, state: GroupState, group: str, b: int
         ) -> tuple[GroupState, SlowdownEvent | None, Transition | None, SignalPoint]:
    """Judge one group's bin ``b``: (state, event, "opened"/"updated"/"closed"/None, point)."""
    cfg = history.cfg
    if state.open_event is None:
        point, baselines = signal_point(history, group, b, state.excluded)
        if (point.active >= cfg.min_probes and point.slow >= cfg.min_probes
                and point.slow_share >= cfg.quorum):
            event = _open(history, point, baselines, b)
            first = bin_of(event.start, cfg.interval)
            excluded = state.excluded | frozenset(range(first, b + 1))
            return GroupState(event, b, excluded), event, "opened", point
        return state, None, None, point
    excluded = state.excluded | {b}
    point, _ = signal_point(history, group, b, excluded)
    if point.measured >= cfg.min_probes and point.measured_slow_share < cfg.recover_quorum:
        closed = _close(history, state, point, b)
        # the recovered bin is normal again: it may serve as history
        return GroupState(excluded=excluded - {b}), closed, "closed", point
    updated = _update(history, state, point, b)
    new_state = replace(state, open_event=updated, excluded=excluded)
    return new_state, updated, "updated", point


def last_judged_bin(now: float, cfg: SlowdownConfig) -> int:
    """The newest bin that is over, grace included, at ``now``."""
    return bin_of(now - cfg.grace * cfg.interval, cfg.interval) - 1


def detect(
    observations: Iterable[Observation],
    since: float,
    now: float,
    cfg: SlowdownConfig,
    known: Sequence[SlowdownEvent] = (),
) -> tuple[list[SlowdownEvent], dict[str, list[SignalPoint]]]:
    """Judge every bin from ``since`` to ``now`` (batch: the same answer on every pass).

    ``observations`` should reach a baseline window before ``since`` so the first bins have
    baselines.  ``known`` events (from earlier passes) that began before ``since`` keep their
    bins out of the baselines and an ongoing one stays open, so a slowdown longer than the
    evaluated range keeps its identity.  Returns the events (closed ones and those still
    open) and each group's signal.
    """
    history = History(observations, cfg)
    first, last = bin_of(since, cfg.interval), last_judged_bin(now, cfg)
    if last - first > 1_000_000:
        raise ValueError("too many bins: widen the interval or shorten the range")
    log: EventLog[SlowdownEvent] = EventLog()
    series: dict[str, list[SignalPoint]] = {}
    for group in sorted(history.by_group):
        state = _seed(group, first, known, cfg)
        points: list[SignalPoint] = []
        for b in range(first, last + 1):
            state, event, transition, point = step(history, state, group, b)
            points.append(point)
            log.step(transition, event)
        log.end_of_group(state.open_event)
        series[group] = points
    return log.events(), series


def _seed(group: str, first: int, known: Sequence[SlowdownEvent], cfg: SlowdownConfig
          ) -> GroupState:
    excluded: set[int] = set()
    open_event: SlowdownEvent | None = None
    for e in known:
        if e.group != group or bin_of(e.start, cfg.interval) >= first:
            continue
        hi = first - 1 if e.end is None else bin_of(e.end, cfg.interval)
        excluded.update(range(bin_of(e.start, cfg.interval), hi + 1))
        if e.end is None or bin_of(e.end, cfg.interval) >= first:
            open_event = replace(e, end=None)
    if open_event is None:
        return GroupState(excluded=frozenset(excluded))
    return GroupState(open_event, bin_of(open_event.start, cfg.interval), frozenset(excluded))
