"""The scheduling core of the long-running agent: pure, clock-injected, no I/O.

Every method takes ``now`` (an aware datetime) instead of reading a clock, and all randomness
comes from an injected ``random.Random``, so tests drive days of scheduling in microseconds
with a fake clock and a seed.  ``agent.daemon.loop`` is the thin async shell that feeds it the
real time, runs what it says, and sleeps until it says to wake.

Rules it enforces:

* **Jitter.**  A job's first run falls at a random phase within its interval (bounded by
  ``initial_spread``), and every later run at ``interval ± jitter``.  Probes that boot together
  after a power cut, or that share a config, drift apart instead of hitting sites in
  lock-step; targets within a run are shuffled per probe and per run (``order_targets``) and
  spaced by a random pause (``pause``).
* **Quiet hours.**  Outside ``quiet_ok`` jobs (connectivity checks are tiny and must not leave
  gaps in shutdown timelines), nothing starts during quiet hours; a running campaign stops
  before its next target (``may_continue``).  Deferred jobs start at a random time within
  ``initial_spread`` after the quiet period ends, not all at its first second.
* **Daily data budget.**  Each job declares an estimate; a job starts only when the estimate
  fits in what is left of today's budget (local day), and a running campaign stops once the
  budget is used.  ``budget_exempt`` jobs (connectivity checks, refreshes) are still charged,
  so the number shown to the volunteer is the truth.
* **Missed runs are not replayed.**  After a suspend or a long campaign a job runs once, not
  once per missed slot.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")

MIN_GAP = 1.0  # seconds: a job is never rescheduled closer than this to now
MAX_SLEEP = 300.0  # seconds: wake at least this often (config reloads, clock jumps)


class Block(StrEnum):
    """Why a due job did not start (shown by ``vigil-agent status``)."""

    QUIET = "quiet-hours"
    BUDGET = "over-budget"
    WINDOW = "outside-window"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One recurring job.

    ``name`` is unique (``web_connectivity``, ``connectivity``, ``campaign:<id>:<test>``...);
    ``kind`` is what the shell runs for it.  ``window`` bounds campaign jobs in time.
    """

    name: str
    kind: str
    interval: float  # seconds
    jitter: float = 0.0  # seconds, each run at interval ± jitter
    est_bytes: int = 0  # expected data use of one run
    quiet_ok: bool = False
    budget_exempt: bool = False
    window: tuple[datetime, datetime] | None = None
    first_run_max: float | None = None  # cap on the first run's random phase (None: interval)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"{self.name}: interval must be positive")
        if not 0 <= self.jitter < self.interval:
            raise ValueError(f"{self.name}: jitter must be in [0, interval)")


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily local-time window, possibly across midnight (``23:00-07:00``)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        """``"23:00-07:00"`` -> QuietHours; ValueError with the reason otherwise."""
        a, sep, b = text.partition("-")
        if not sep:
            raise ValueError(f"quiet hours {text!r} must look like 23:00-07:00")
        try:
            start, end = time.fromisoformat(a.strip()), time.fromisoformat(b.strip())
        except ValueError:
            raise ValueError(f"quiet hours {text!r} must look like 23:00-07:00") from None
        if start == end:
            raise ValueError(f"quiet hours {text!r} are empty")
        return cls(start, end)

    def contains(self, local: datetime) -> bool:
        t = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def end_after(self, local: datetime) -> datetime:
        """The first end of this window at or after ``local`` (local time, same tz)."""
        candidate = datetime.combine(local.date(), self.end, local.tzinfo)
        if candidate <= local:
            candidate += timedelta(days=1)
        return candidate


@dataclass(frozen=True, slots=True)
class Policy:
    jobs: tuple[JobSpec, ...]
    tz: tzinfo  # the volunteer's local zone: quiet hours and the budget day are local
    daily_budget_bytes: int = 0  # 0: no budget
    quiet: tuple[QuietHours, ...] = ()
    initial_spread: float = 3600.0  # seconds: bound on first-run and after-quiet spreading
    pause_min: float = 1.0  # seconds between two targets of one run
    pause_max: float = 5.0

    def job(self, name: str) -> JobSpec | None:
        for j in self.jobs:
            if j.name == name:
                return j
        return None


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now: start these jobs, then call decide() again at ``wake_at`` at the latest."""

    start: tuple[JobSpec, ...]
    wake_at: datetime
    blocked: dict[str, Block] = field(default_factory=dict)


@dataclass(slots=True)
class Budget:
    day: date
    used: int = 0


class Planner:
    """The scheduling state machine.  Not thread-safe; the async shell owns one."""

    def __init__(
        self,
        policy: Policy,
        now: datetime,
        rng: random.Random,
        budget: Budget | None = None,
    ) -> None:
        _check_aware(now)
        self.policy = policy
        self.rng = rng
        self.due: dict[str, datetime] = {}
        self.running: set[str] = set()
        self.blocked: dict[str, Block] = {}
        today = self._day(now)
        self.budget = budget if budget is not None and budget.day == today else Budget(today)
        for job in policy.jobs:
            self.due[job.name] = self._first_due(job, now)

    # ---- time helpers ------------------------------------------------------------------------
    def _local(self, now: datetime) -> datetime:
        return now.astimezone(self.policy.tz)

    def _day(self, now: datetime) -> date:
        return self._local(now).date()

    def _first_due(self, job: JobSpec, now: datetime) -> datetime:
        cap = job.interval if job.first_run_max is None else job.first_run_max
        spread = min(cap, self.policy.initial_spread, job.interval)
        due = now + timedelta(seconds=self.rng.uniform(0.0, spread))
        if job.window is not None and due < job.window[0]:
            due = job.window[0] + timedelta(seconds=self.rng.uniform(0.0, min(spread, 60.0)))
        return due

    def in_quiet_hours(self, now: datetime) -> bool:
        local = self._local(now)
        return any(q.contains(local) for q in self.policy.quiet)

    def quiet_ends(self, now: datetime) -> datetime:
        """When the quiet period covering ``now`` ends (handles overlapping windows)."""
        t = self._local(now)
        for _ in range(len(self.policy.quiet) + 1):  # bounded: each step leaves one window
            covering = [q for q in self.policy.quiet if q.contains(t)]
            if not covering:
                break
            t = max(q.end_after(t) for q in covering)
        return t.astimezone(now.tzinfo)

    def next_midnight(self, now: datetime) -> datetime:
        local = self._local(now)
        midnight = datetime.combine(local.date() + timedelta(days=1), time(0), local.tzinfo)
        return midnight.astimezone(now.tzinfo)

    # ---- budget ------------------------------------------------------------------------------
    def _roll(self, now: datetime) -> None:
        today = self._day(now)
        if self.budget.day != today:
            self.budget = Budget(today)

    def budget_left(self, now: datetime) -> int | None:
        """Bytes left today, or None when there is no budget."""
        self._roll(now)
        if self.policy.daily_budget_bytes <= 0:
            return None
        return max(0, self.policy.daily_budget_bytes - self.budget.used)

    def charge(self, nbytes: int, now: datetime) -> None:
        """Count data used (called per measurement, so a long campaign is charged as it goes)."""
        self._roll(now)
        self.budget.used += max(0, int(nbytes))

    def _fits(self, job: JobSpec, now: datetime) -> bool:
        left = self.budget_left(now)
        return job.budget_exempt or left is None or job.est_bytes <= left

    # ---- decisions ---------------------------------------------------------------------------
    def decide(self, now: datetime) -> Plan:
        """Start what is due and allowed; postpone the rest; say when to wake."""
        _check_aware(now)
        self._roll(now)
        starts: list[JobSpec] = []
        self.blocked = {}
        quiet = self.in_quiet_hours(now)
        for job in self.policy.jobs:
            if job.name in self.running:
                continue
            due = self.due.get(job.name)
            if due is None or due > now:  # None: a campaign whose window has closed
                continue
            if job.window is not None and not job.window[0] <= now < job.window[1]:
                self.blocked[job.name] = Block.WINDOW
                if now < job.window[0]:
                    self.due[job.name] = job.window[0]
                else:
                    del self.due[job.name]
                continue
            if quiet and not job.quiet_ok:
                self.blocked[job.name] = Block.QUIET
                self.due[job.name] = self._spread_after(self.quiet_ends(now), job)
                continue
            if not self._fits(job, now):
                self.blocked[job.name] = Block.BUDGET
                self.due[job.name] = self._spread_after(self.next_midnight(now), job)
                continue
            starts.append(job)
            self.running.add(job.name)
            self.due[job.name] = self._next_due(job, due, now)
        return Plan(start=tuple(starts), wake_at=self._wake_at(now), blocked=dict(self.blocked))

    def _spread_after(self, t: datetime, job: JobSpec) -> datetime:
        spread = min(self.policy.initial_spread, job.interval)
        return t + timedelta(seconds=self.rng.uniform(0.0, spread))

    def _next_due(self, job: JobSpec, due: datetime, now: datetime) -> datetime:
        nxt = due + timedelta(seconds=job.interval)
        if nxt <= now:  # missed slots (suspend, clock jump): skip them, run once
            missed = math.ceil((now - nxt).total_seconds() / job.interval)
            nxt += timedelta(seconds=missed * job.interval)
        nxt += timedelta(seconds=self.rng.uniform(-job.jitter, job.jitter))
        return max(nxt, now + timedelta(seconds=MIN_GAP))

    def _wake_at(self, now: datetime) -> datetime:
        limit = now + timedelta(seconds=MAX_SLEEP)
        pending = [d for name, d in self.due.items() if name not in self.running]
        return min([limit, *pending])

    def finish(self, name: str, now: datetime, nbytes: int = 0) -> None:
        """A job ended (normally, by error or by stop); ``nbytes`` not yet charged by it."""
        self.running.discard(name)
        self.charge(nbytes, now)
        job = self.policy.job(name)
        if job is not None and self.due.get(name, now) < now:
            # It overran its interval: next run a random part of a jitter after now, never
            # immediately back to back.
            gap = MIN_GAP + self.rng.uniform(0.0, max(job.jitter, MIN_GAP))
            self.due[name] = now + timedelta(seconds=gap)

    def may_continue(self, job: JobSpec, now: datetime, next_bytes: int = 0) -> Block | None:
        """Between two targets of a running job: None to go on, else why to stop early."""
        if job.window is not None and now >= job.window[1]:
            return Block.WINDOW
        if not job.quiet_ok and self.in_quiet_hours(now):
            return Block.QUIET
        left = self.budget_left(now)
        if not job.budget_exempt and left is not None and (left <= 0 or next_bytes > left):
            return Block.BUDGET
        return None

    def pause(self) -> float:
        """Seconds to wait between two targets of one run (random: no lock-step across probes)."""
        return self.rng.uniform(self.policy.pause_min, self.policy.pause_max)

    # ---- reconfiguration ---------------------------------------------------------------------
    def update_policy(self, policy: Policy, now: datetime) -> None:
        """Apply a reloaded config: kept jobs keep their phase (clamped to the new interval),
        new jobs get a fresh random phase, removed jobs are forgotten (a running one finishes).
        """
        old = {j.name: j for j in self.policy.jobs}
        self.policy = policy
        due: dict[str, datetime] = {}
        for job in policy.jobs:
            if job.name in old and job.name not in self.due:
                continue  # its window closed; it stays finished
            if job.name in old:
                limit = now + timedelta(seconds=job.interval + job.jitter)
                due[job.name] = min(self.due[job.name], limit)
            else:
                due[job.name] = self._first_due(job, now)
        self.due = due

    def next_runs(self) -> dict[str, datetime]:
        return {j.name: self.due[j.name] for j in self.policy.jobs if j.name in self.due}


# ---- pure helpers for the shell ----------------------------------------------------------------
def order_targets(targets: Sequence[T], seed: str) -> list[T]:
    """A per-probe, per-run shuffle: deterministic for a seed, different across probes."""
    digest = hashlib.sha256(seed.encode()).digest()
    out = list(targets)
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(out)
    return out


def with_policy_jobs(policy: Policy, extra: Iterable[JobSpec]) -> Policy:
    """The policy plus extra jobs (campaigns); a name already present is not duplicated."""
    names = {j.name for j in policy.jobs}
    return replace(policy, jobs=policy.jobs + tuple(j for j in extra if j.name not in names))


def _check_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("the scheduler needs aware datetimes")
