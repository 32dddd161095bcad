"""The scheduling core (agent.daemon.planner) driven by a fake clock: jitter, quiet hours,
budgets."""

from __future__ import annotations

import itertools
import random
import statistics
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from agent.daemon.planner import (
    MAX_SLEEP,
    Block,
    Budget,
    JobSpec,
    Planner,
    Policy,
    QuietHours,
    order_targets,
)

T0 = datetime(2026, 6, 17, 12, 0, tzinfo=UTC)
MB = 1_000_000


@dataclass
class FakeClock:
    now: datetime = T0

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class Run:
    job: str
    at: datetime


@dataclass
class Sim:
    """Drives a Planner like the async shell does, with jobs that take ``duration`` seconds."""

    planner: Planner
    clock: FakeClock
    duration: dict[str, float] = field(default_factory=dict)
    cost: dict[str, int] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    blocks: list[tuple[str, Block, datetime]] = field(default_factory=list)

    def run_until(self, end: datetime, max_steps: int = 200_000) -> None:
        ends: dict[str, datetime] = {}
        for _ in range(max_steps):
            now = self.clock.now
            for name, t in list(ends.items()):
                if t <= now:
                    self.planner.finish(name, t, self.cost.get(name, 0))
                    del ends[name]
            plan = self.planner.decide(now)
            for name, why in plan.blocked.items():
                self.blocks.append((name, why, now))
            for job in plan.start:
                self.runs.append(Run(job.name, now))
                ends[job.name] = now + timedelta(seconds=self.duration.get(job.name, 0.0))
            wake = min([plan.wake_at, *ends.values()])
            if wake >= end:
                self.clock.now = end
                return
            self.clock.now = max(wake, now + timedelta(microseconds=1))
        raise AssertionError("simulation did not reach its end")

    def times(self, name: str) -> list[datetime]:
        return [r.at for r in self.runs if r.job == name]


def web(interval: float = 6 * 3600, jitter: float = 1800, est: int = 0) -> JobSpec:
    return JobSpec("web_connectivity", "web_connectivity", interval, jitter, est_bytes=est)


def conn(interval: float = 60, jitter: float = 10) -> JobSpec:
    return JobSpec(
        "connectivity",
        "connectivity",
        interval,
        jitter,
        est_bytes=2_000,
        quiet_ok=True,
        budget_exempt=True,
        first_run_max=interval,
    )


def planner(*jobs: JobSpec, seed: int = 1, now: datetime = T0, **kw: object) -> Planner:
    policy = Policy(jobs=jobs, tz=kw.pop("tz", UTC), **kw)  # type: ignore[arg-type]
    return Planner(policy, now, random.Random(seed))


# ---- jitter ------------------------------------------------------------------------------------
def test_intervals_stay_within_jitter_and_average_to_the_interval() -> None:
    clock = FakeClock()
    sim = Sim(planner(web(), conn()), clock)
    sim.run_until(T0 + timedelta(days=10))
    for name, interval, jitter in (("web_connectivity", 6 * 3600, 1800), ("connectivity", 60, 10)):
        t = sim.times(name)
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(t)]
        assert min(gaps) >= interval - jitter - 1e-6
        assert max(gaps) <= interval + jitter + 1e-6
        assert abs(statistics.mean(gaps) - interval) < jitter / 2
        assert statistics.pstdev(gaps) > jitter / 10  # really jittered, not a fixed period
    assert len(sim.times("connectivity")) == pytest.approx(10 * 24 * 60, rel=0.01)


def test_probes_started_together_do_not_run_in_lock_step() -> None:
    """100 probes boot at the same instant (a power cut ends): first runs spread out."""
    firsts: list[float] = []
    for seed in range(100):
        clock = FakeClock()
        sim = Sim(planner(web(), seed=seed, initial_spread=3600), clock)
        sim.run_until(T0 + timedelta(hours=2))
        (first,) = sim.times("web_connectivity")
        firsts.append((first - T0).total_seconds())
    assert all(0 <= f <= 3600 for f in firsts)
    assert len({round(f) for f in firsts}) >= 95  # practically no two the same second
    assert max(firsts) - min(firsts) > 3000
    # and they stay apart: the same seed twice gives the same schedule, different seeds do not
    runs = []
    for seed in (7, 7, 8):
        clock = FakeClock()
        sim = Sim(planner(web(), seed=seed), clock)
        sim.run_until(T0 + timedelta(days=2))
        runs.append(sim.times("web_connectivity"))
    assert runs[0] == runs[1] != runs[2]


def test_missed_slots_run_once_not_in_a_burst() -> None:
    p = planner(conn())
    clock = FakeClock()
    Sim(p, clock).run_until(T0 + timedelta(minutes=5))
    # the machine sleeps for ten hours (suspend, a stuck clock)
    later = clock.advance(10 * 3600)
    plan = p.decide(later)
    assert [j.name for j in plan.start] == ["connectivity"]
    p.finish("connectivity", later)
    assert p.decide(later + timedelta(seconds=1)).start == ()
    # the next run keeps the job's phase: within one interval (plus jitter), not immediately
    nxt = p.next_runs()["connectivity"]
    assert later + timedelta(seconds=1) < nxt <= later + timedelta(seconds=70)


def test_a_running_job_is_not_started_twice_and_an_overrun_does_not_chain() -> None:
    clock = FakeClock()
    sim = Sim(planner(web(interval=3600, jitter=300)), clock, duration={"web_connectivity": 5000})
    sim.run_until(T0 + timedelta(hours=12))
    t = sim.times("web_connectivity")
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(t)]
    assert all(g >= 5000 for g in gaps)  # never overlapping itself
    assert all(g <= 5000 + 300 + 2 for g in gaps)  # and restarts soon after an overrun


def test_wake_at_is_bounded_and_points_at_the_next_due_job() -> None:
    p = planner(web(interval=86400, jitter=3600))
    plan = p.decide(T0)
    assert plan.wake_at <= T0 + timedelta(seconds=MAX_SLEEP)
    assert plan.start == () or plan.start[0].name == "web_connectivity"


# ---- quiet hours -------------------------------------------------------------------------------
def test_quiet_hours_defer_heavy_jobs_but_not_connectivity_checks() -> None:
    tehran = ZoneInfo("Asia/Tehran")  # UTC+03:30: quiet hours are local time
    quiet = (QuietHours(time(23, 0), time(7, 0)),)
    clock = FakeClock()
    sim = Sim(
        planner(
            web(interval=3600, jitter=600), conn(), tz=tehran, quiet=quiet, initial_spread=1800
        ),
        clock,
    )
    sim.run_until(T0 + timedelta(days=3))
    heavy = [t.astimezone(tehran) for t in sim.times("web_connectivity")]
    assert heavy, "the web campaign ran at all"
    assert not [t for t in heavy if quiet[0].contains(t)]
    # after each quiet night the first run comes within the spread, not at 07:00:00 sharp
    mornings = [t for t in heavy if t.hour == 7]
    assert mornings and all(t.time() <= time(7, 30) for t in mornings)
    assert len({t.minute * 60 + t.second for t in mornings}) == len(mornings)
    checks = [t.astimezone(tehran) for t in sim.times("connectivity")]
    night = [t for t in checks if quiet[0].contains(t)]
    assert len(night) >= 3 * 8 * 60 * 0.95  # every minute through every night
    assert any(b == ("web_connectivity", Block.QUIET) for b in ((n, w) for n, w, _ in sim.blocks))


def test_quiet_hours_stop_a_running_campaign_between_targets() -> None:
    quiet = (QuietHours.parse("22:00-06:00"),)
    p = planner(web(), conn(), quiet=quiet)
    job = web()
    assert p.may_continue(job, datetime(2026, 6, 17, 21, 59, tzinfo=UTC)) is None
    assert p.may_continue(job, datetime(2026, 6, 17, 22, 0, tzinfo=UTC)) is Block.QUIET
    assert p.may_continue(conn(), datetime(2026, 6, 17, 23, 0, tzinfo=UTC)) is None
    assert p.quiet_ends(datetime(2026, 6, 17, 23, 0, tzinfo=UTC)) == datetime(
        2026, 6, 18, 6, 0, tzinfo=UTC
    )


def test_overlapping_quiet_windows_end_at_the_last_end() -> None:
    quiet = (QuietHours.parse("22:00-02:00"), QuietHours.parse("01:00-06:30"))
    p = planner(web(), quiet=quiet)
    assert p.quiet_ends(datetime(2026, 6, 17, 23, 0, tzinfo=UTC)) == datetime(
        2026, 6, 18, 6, 30, tzinfo=UTC
    )
    assert not p.in_quiet_hours(datetime(2026, 6, 18, 6, 30, tzinfo=UTC))


@pytest.mark.parametrize("bad", ["", "23:00", "7-8-9", "25:00-01:00", "07:00-07:00"])
def test_bad_quiet_hours_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        QuietHours.parse(bad)


# ---- budgets -----------------------------------------------------------------------------------
def test_daily_budget_blocks_until_local_midnight() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 6, 17, 8, 0, tzinfo=berlin)
    clock = FakeClock(start)
    job = web(interval=3600, jitter=60, est=4 * MB)
    p = planner(job, conn(), tz=berlin, daily_budget_bytes=10 * MB, now=start, initial_spread=60)
    sim = Sim(p, clock, cost={"web_connectivity": 4 * MB, "connectivity": 1_000})
    sim.run_until(datetime(2026, 6, 19, 23, 0, tzinfo=berlin))
    days: dict[date, int] = {}
    for t in sim.times("web_connectivity"):
        days[t.astimezone(berlin).date()] = days.get(t.astimezone(berlin).date(), 0) + 1
    assert days == {date(2026, 6, 17): 2, date(2026, 6, 18): 2, date(2026, 6, 19): 2}
    # the third run of a day waits for local midnight (plus spread), not UTC midnight
    firsts = [
        min(t for t in sim.times("web_connectivity") if t.astimezone(berlin).date() == d)
        for d in (date(2026, 6, 18), date(2026, 6, 19))
    ]
    for f in firsts:
        assert time(0, 0) <= f.astimezone(berlin).time() <= time(1, 0)
    assert ("web_connectivity", Block.BUDGET) in {(n, w) for n, w, _ in sim.blocks}
    # connectivity checks kept running although the budget was used, and were counted
    assert len(sim.times("connectivity")) > 60 * 24 * 2.5
    assert p.budget.used >= 2 * 4 * MB


def test_budget_is_charged_as_a_campaign_goes_and_stops_it() -> None:
    p = planner(web(est=MB), daily_budget_bytes=3 * MB)
    job = web(est=MB)
    now = T0
    done = 0
    for _ in range(10):
        if p.may_continue(job, now, next_bytes=400_000) is not None:
            break
        p.charge(700_000, now)
        done += 1
    assert done == 4  # 2.8 MB used; 0.2 MB left is less than the next measurement
    assert p.may_continue(job, now) is None or p.budget_left(now) == 200_000
    assert p.may_continue(job, now, next_bytes=400_000) is Block.BUDGET
    # a budget-exempt job is not stopped by it
    assert p.may_continue(conn(), now, next_bytes=10 * MB) is None


def test_budget_survives_a_restart_on_the_same_day_only() -> None:
    job = web(est=4 * MB)
    policy = Policy(jobs=(job,), tz=UTC, daily_budget_bytes=5 * MB, initial_spread=1)
    p = Planner(policy, T0, random.Random(1), budget=Budget(T0.date(), used=3 * MB))
    plan = p.decide(T0 + timedelta(seconds=2))
    assert plan.start == () and plan.blocked == {"web_connectivity": Block.BUDGET}
    stale = Budget(T0.date() - timedelta(days=1), used=5 * MB)
    p2 = Planner(policy, T0, random.Random(1), budget=stale)
    assert [j.name for j in p2.decide(T0 + timedelta(seconds=2)).start] == ["web_connectivity"]


# ---- campaigns (time windows) and reloads ------------------------------------------------------
def test_campaign_job_runs_only_inside_its_window() -> None:
    w0, w1 = T0 + timedelta(hours=2), T0 + timedelta(hours=5)
    camp = JobSpec("campaign:x:web_connectivity", "web_connectivity", 600, 120, window=(w0, w1))
    clock = FakeClock()
    sim = Sim(planner(camp), clock)
    sim.run_until(T0 + timedelta(hours=8))
    t = sim.times(camp.name)
    assert t and min(t) >= w0 and max(t) < w1
    assert len(t) == pytest.approx(3 * 6, abs=2)
    assert sim.planner.may_continue(camp, w1) is Block.WINDOW


def test_reload_keeps_phase_and_adds_new_jobs() -> None:
    p = planner(web(), conn())
    before = p.next_runs()
    newer = Policy(jobs=(web(), conn(), JobSpec("throttling", "throttling", 7200, 600)), tz=UTC)
    p.update_policy(newer, T0)
    after = p.next_runs()
    assert after["web_connectivity"] == before["web_connectivity"]
    assert T0 <= after["throttling"] <= T0 + timedelta(seconds=3600)
    shorter = Policy(jobs=(web(interval=600, jitter=60),), tz=UTC)
    p.update_policy(shorter, T0)
    assert set(p.next_runs()) == {"web_connectivity"}
    assert p.next_runs()["web_connectivity"] <= T0 + timedelta(seconds=660)


def test_bad_job_specs_and_naive_times_are_refused() -> None:
    with pytest.raises(ValueError):
        JobSpec("x", "x", 0)
    with pytest.raises(ValueError):
        JobSpec("x", "x", 60, jitter=60)
    with pytest.raises(ValueError):
        planner(conn()).decide(datetime(2026, 1, 1))


def test_targets_are_shuffled_per_probe_and_run() -> None:
    urls = [f"https://s{i}.example/" for i in range(50)]
    a = order_targets(urls, "probe-a:1")
    assert sorted(a) == sorted(urls)
    assert a == order_targets(urls, "probe-a:1")
    assert a != order_targets(urls, "probe-b:1") != order_targets(urls, "probe-a:2")
    p = planner(conn())
    pauses = [p.pause() for _ in range(100)]
    assert all(1.0 <= x <= 5.0 for x in pauses) and len(set(pauses)) == 100
