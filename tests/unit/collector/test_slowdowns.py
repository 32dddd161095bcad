"""The whole-network slowdown detector on synthetic rate series (simulated time)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.slowdowns.detector import (
    Observation,
    SlowdownConfig,
    SlowdownEvent,
    bin_of,
    detect,
    last_judged_bin,
    robust_first,
)

IV = 600.0  # one measurement interval
CFG = SlowdownConfig(interval=IV, baseline_window=24 * IV).validate()
END = 60 * IV
SINCE = 10 * IV


@dataclass(frozen=True)
class Line:
    """A probe's access line: its normal rate, its measurement phase and its network."""

    name: str
    rate: float
    phase: float
    asn: str = "AS64500"
    cc: str = "IR"


def lines(n: int, seed: int = 1, asn: str = "AS64500", prefix: str = "p") -> list[Line]:
    rng = random.Random(seed)
    # 2 Mbit/s rural lines to 1 Gbit/s fibre, measuring at different times of each interval
    return [Line(f"{prefix}{i}", 10 ** rng.uniform(6.3, 9.0), rng.random() * IV, asn)
            for i in range(n)]


def observe(ls: list[Line], slow: dict[str, tuple[float, float, float]] | None = None,
            noise: float = 0.25, seed: int = 2, skip: dict[str, tuple[float, float]] | None = None
            ) -> list[Observation]:
    """Every line measures once per interval; ``slow[name] = (from, to, factor)``."""
    rng = random.Random(seed)
    out = []
    for line in ls:
        for k in range(int(END / IV)):
            t = k * IV + line.phase
            gap = (skip or {}).get(line.name)
            if gap is not None and gap[0] <= t < gap[1]:
                continue
            rate = line.rate * rng.lognormvariate(0.0, noise)
            lo, hi, factor = (slow or {}).get(line.name, (0.0, 0.0, 1.0))
            if lo <= t < hi:
                rate *= factor
            out.append(Observation(line.name, line.asn, line.cc, t, rate))
    return out


def run(obs: list[Observation], cfg: SlowdownConfig = CFG) -> list[SlowdownEvent]:
    events, _ = detect(obs, SINCE, END, cfg)
    return events


def of(events: list[SlowdownEvent], group: str) -> list[SlowdownEvent]:
    return [e for e in events if e.group == group]


def isp_slowdown(ls: list[Line], start: float, end: float, factor: float = 0.1
                 ) -> dict[str, tuple[float, float, float]]:
    return {line.name: (start, end, factor) for line in ls}


# ---- table: what is and what is not a slowdown ----------------------------------------------
def test_steady_rates_no_event() -> None:
    assert run(observe(lines(8))) == []


def test_a_slow_home_line_is_not_a_slowdown() -> None:
    ls = lines(6)
    slow_line = [Line("rural", 2e6, 100.0), *ls]  # 2 Mbit/s all along: its own baseline
    assert run(observe(slow_line)) == []


def test_one_probe_slowing_down_is_not_a_slowdown() -> None:
    ls = lines(6)
    assert run(observe(ls, {"p0": (30 * IV, 40 * IV, 0.05)})) == []


def test_a_minority_slowing_down_is_not_a_slowdown() -> None:
    ls = lines(10)  # 5 of 10: under the 60 % quorum
    assert run(observe(ls, isp_slowdown(ls[:5], 30 * IV, 40 * IV))) == []


def test_too_few_probes_cannot_make_a_slowdown() -> None:
    ls = lines(2)
    assert run(observe(ls, isp_slowdown(ls, 30 * IV, 40 * IV))) == []


def test_whole_isp_slowdown_found_timed_and_ended() -> None:
    ls = lines(6)
    start, end = 30 * IV + 250.0, 36 * IV + 400.0
    events = run(observe(ls, isp_slowdown(ls, start, end)))
    (e,) = of(events, "asn:AS64500")
    assert e.detected_at - start <= 3 * IV
    assert abs(e.start - start) <= IV and e.start_lower <= start <= e.start + IV
    assert e.end is not None and abs(e.end - end) <= IV
    assert set(e.affected) == {line.name for line in ls}
    assert e.median_ratio == pytest.approx(0.1, rel=0.6)
    probe = e.evidence["probes"]["p0"]
    assert probe["observed_bps"] < 0.5 * probe["baseline_bps"]
    assert of(events, "cc:IR") and SlowdownEvent.from_json(e.to_json()) == e


def test_slowdown_in_one_isp_is_not_the_country() -> None:
    a = lines(5, seed=3, asn="AS1", prefix="a")
    b = lines(5, seed=4, asn="AS2", prefix="b")
    events = run(observe(a + b, isp_slowdown(a, 30 * IV, 40 * IV)))
    assert {e.group for e in events} == {"asn:AS1"}  # half the country is under the quorum


def test_mild_slowdown_above_the_alert_fraction_is_not_reported() -> None:
    ls = lines(6)  # 30 % slower: within what home lines do on their own
    assert run(observe(ls, isp_slowdown(ls, 30 * IV, 40 * IV, factor=0.7), noise=0.1)) == []


def test_no_data_is_not_a_recovery() -> None:
    ls = lines(5)
    start, end = 30 * IV + 10.0, 50 * IV
    silent = {line.name: (38 * IV, 45 * IV) for line in ls}  # nobody measures for a while
    (e,) = of(run(observe(ls, isp_slowdown(ls, start, end), skip=silent)), "asn:AS64500")
    assert e.end is not None and abs(e.end - end) <= IV


def test_long_slowdown_does_not_become_the_baseline() -> None:
    ls = lines(5)
    cfg = SlowdownConfig(interval=IV, baseline_window=8 * IV)  # shorter than the slowdown
    start = 20 * IV + 5.0
    (e,) = of(run(observe(ls, isp_slowdown(ls, start, END)), cfg), "asn:AS64500")
    assert e.ongoing  # still slow at the end, measured against the rates before it


def test_probe_without_history_does_not_count() -> None:
    ls = lines(3)
    newcomers = [Line(f"n{i}", 5e7, 30.0 * i) for i in range(3)]
    obs = observe(ls) + [o for o in observe(newcomers) if o.t >= 30 * IV]
    slowed = [o if o.probe_id.startswith("p") else Observation(
        o.probe_id, o.asn, o.cc, o.t, o.rate_bps * 0.1) for o in obs]
    # the newcomers' first bins are slow but they have no baseline yet
    assert run(slowed) == []


def test_detection_waits_for_the_bin_and_grace() -> None:
    assert last_judged_bin(10 * IV + 0.2 * IV, CFG) == 8
    assert last_judged_bin(10 * IV + 0.25 * IV, CFG) == 9
    assert bin_of(-1.0, IV) == -1


def test_robust_first_ignores_an_early_straggler() -> None:
    assert robust_first([100.0, 1000.0, 1100.0, 1200.0], IV) == 1000.0
    assert robust_first([1000.0], IV) == 1000.0


def test_config_is_checked() -> None:
    for bad in (SlowdownConfig(interval=0), SlowdownConfig(alert_fraction=1.0),
                SlowdownConfig(quorum=0.3, recover_quorum=0.4), SlowdownConfig(min_probes=0),
                SlowdownConfig(interval=3600, baseline_window=3600)):
        with pytest.raises(ValueError):
            bad.validate()


def test_known_open_event_keeps_its_identity_across_passes() -> None:
    ls = lines(5)
    start = 20 * IV + 5.0
    obs = observe(ls, isp_slowdown(ls, start, END))
    first, _ = detect(obs, SINCE, 30 * IV, CFG)
    (e1,) = of(first, "asn:AS64500")
    later, _ = detect(obs, 40 * IV, END, CFG, known=first)
    (e2,) = of(later, "asn:AS64500")
    assert e2.event_id == e1.event_id and e2.start == e1.start and e2.ongoing


# ---- properties -----------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 12), seed=st.integers(0, 10_000), at=st.floats(0.0, 0.999),
       length=st.integers(3, 10), factor=st.floats(0.02, 0.12))
def test_any_whole_isp_slowdown_is_found_within_three_intervals(
        n: int, seed: int, at: float, length: int, factor: float) -> None:
    ls = lines(n, seed=seed)
    start = (25 + at) * IV
    end = start + length * IV
    events = of(run(observe(ls, isp_slowdown(ls, start, end, factor), seed=seed)),
                "asn:AS64500")
    assert len(events) == 1
    e = events[0]
    assert e.detected_at - start <= 3 * IV
    assert abs(e.start - start) <= IV
    assert e.end is not None and abs(e.end - end) <= IV


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 10_000), slow=st.integers(0, 1))
def test_one_slow_probe_never_makes_an_event(n: int, seed: int, slow: int) -> None:
    ls = lines(n, seed=seed)
    one = {ls[0].name: (20 * IV, 50 * IV, 0.01)} if slow else None
    assert run(observe(ls, one, seed=seed)) == []


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), drop=st.integers(0, 20))
def test_missing_records_never_count_as_slow(seed: int, drop: int) -> None:
    """Removing observations (records without a usable rate) never creates an event."""
    ls = lines(6, seed=seed)
    obs = observe(ls, seed=seed)
    rng = random.Random(seed)
    kept = [o for o in obs if rng.random() > drop / 25]
    assert run(kept) == []


# ---- time of day ----------------------------------------------------------------------------
HOUR = 3600.0
DAILY = SlowdownConfig(interval=HOUR, baseline_window=7 * 86400.0).validate()


def daily_rates(ls: list[Line], factor_at: dict[int, float], days: int = 10, seed: int = 5
                ) -> list[Observation]:
    """Hourly measurements over ``days``; ``factor_at[hour_index]`` scales every line."""
    rng = random.Random(seed)
    out = []
    for line in ls:
        phase = line.phase / IV * HOUR
        for k in range(days * 24):
            rate = line.rate * rng.lognormvariate(0.0, 0.2) * factor_at.get(k, 1.0)
            out.append(Observation(line.name, line.asn, line.cc, k * HOUR + phase, rate))
    return out


def test_busy_evenings_are_not_a_slowdown() -> None:
    """Every evening the whole ISP runs at 20 % (congestion): the same hours of earlier days
    are the reference, so it is the ISP's normal evening, not an event."""
    ls = lines(6)
    evenings = {k: 0.2 for k in range(10 * 24) if 18 <= k % 24 < 23}
    obs = daily_rates(ls, evenings)
    assert detect(obs, 8 * 86400.0, 10 * 86400.0, DAILY)[0] == []
    whole_day = SlowdownConfig(interval=HOUR, baseline_window=7 * 86400.0,
                               max_daily_interval=0.0)
    assert of(detect(obs, 8 * 86400.0, 10 * 86400.0, whole_day)[0], "asn:AS64500")


def test_a_nightly_curfew_is_found_every_night() -> None:
    """Slowed to 10 % from 16:00 to midnight on each of the last three days: the curfew's own
    bins never become the reference, so every night is an event."""
    ls = lines(6)
    curfew = {k: 0.1 for k in range(7 * 24, 10 * 24) if k % 24 >= 16}
    obs = daily_rates(ls, curfew, days=11)
    events = of(detect(obs, 6 * 86400.0, 11 * 86400.0, DAILY)[0], "asn:AS64500")
    assert len(events) == 3
    for day, e in zip((7, 8, 9), events, strict=True):
        start, end = (day * 24 + 16) * HOUR, (day + 1) * 86400.0
        assert abs(e.start - start) <= HOUR and e.end is not None and abs(e.end - end) <= HOUR
