"""The long-running agent (``vigil-agent run`` without ``--once``): a thin async shell.

All decisions (what is due, jitter, quiet hours, the daily budget, campaign windows) are made
by the pure core in ``agent.daemon.planner``; this module feeds it the time, runs the jobs it
starts,
and does the process-level chores:

* runs the publisher concurrently so the outbox drains, and receives operator commands on the
  same connection (the broker forces one connection per probe id);
* writes ``<state>/agent-state.json`` atomically for ``vigil-agent status``;
* SIGHUP reloads the config (a bad file is logged and the old config kept);
* SIGTERM/SIGINT stop it within seconds and lose nothing: no new measurement starts, one in
  flight gets ``stop_grace_seconds`` to finish *into the outbox*, then it is cancelled before
  any record exists (a record is built only after the measurement, and the outbox commit is
  shielded from cancellation, so there is never a partial record); what the broker has not
  acknowledged stays in the outbox for the next start.

Everything the shell touches outside itself goes through ``Backend`` (agent.daemon.backend has
the real one: runner, outbox, publisher), so the shell is tested with fakes and a real clock
in tests/integration/test_sigterm.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import logging.handlers
import os
import random
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path

from agent import __version__
from agent import config as agent_config
from agent.config import AgentConfig
from agent.daemon.backend import RealBackend
from agent.daemon.campaigns import CampaignBook, handle_command
from agent.daemon.interfaces import (
    Backend,
    BackendFactory,
    Clock,
    LinkStatus,
    Measurer,
    SystemClock,
)
from agent.daemon.planner import Budget, JobSpec, Planner, Policy, order_targets, with_policy_jobs
from agent.daemon.settings import Settings, base_policy, campaign_jobs, settings
from agent.daemon.traces import TraceQueue
from agent.errors import OutboxError, VigilError
from agent.experiments.censor_trace import TraceSettings
from agent.state import AgentState, RunSummary, read_state, write_state
from agent.wire.commands import Command, Result
from agent.wire.envelope import encode_record
from agent.wire.record import MeasurementRecord, Target

log = logging.getLogger("vigil.scheduler")

STATE_EVERY = 15.0  # seconds between state-file writes while idle
CONSENT_EVERY = 30.0  # seconds between checks that the consent is still given
# (config) -> (accepted, why not): agent.consent.status, passed in by `vigil-agent run`
ConsentCheck = Callable[[AgentConfig], tuple[bool, str]]
PUBLISHER_STOP_GRACE = 3.0  # seconds the publisher gets to finish a publish at shutdown
STORE_GRACE = 10.0  # seconds to wait for outbox commits already under way at shutdown


# ---- logging -----------------------------------------------------------------------------------
_HANDLERS: list[logging.Handler] = []


def setup_logging(s: Settings, level: int = logging.INFO) -> None:
    """Bounded logs: a rotated file (3 x log_max_kb) or stderr, which journald bounds."""
    root = logging.getLogger()
    while _HANDLERS:  # a reload replaces our handler, leaves others' (pytest's) alone
        old = _HANDLERS.pop()
        root.removeHandler(old)
        old.close()
    handler: logging.Handler
    if s.scheduler.log_file is not None:
        handler = logging.handlers.RotatingFileHandler(
            s.scheduler.log_file, maxBytes=s.scheduler.log_max_kb * 1024, backupCount=3
        )
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        # journald adds its own timestamps
        fmt = (
            "%(levelname)s %(name)s: %(message)s"
            if os.environ.get("JOURNAL_STREAM")
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    handler.setFormatter(logging.Formatter(fmt))
    _HANDLERS.append(handler)
    root.addHandler(handler)
    root.setLevel(level)


# ---- the shell ---------------------------------------------------------------------------------
@dataclass
class _JobStats:
    measurements: int = 0
    errors: int = 0
    verdicts: collections.Counter[str] = field(default_factory=collections.Counter)


class Scheduler:
    def __init__(
        self,
        config: AgentConfig,
        backend_factory: BackendFactory,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        loader: Callable[[Path | None], AgentConfig] = agent_config.load,
        consent_check: ConsentCheck | None = None,
    ) -> None:
        self.config = config
        self._consent_check = consent_check
        self.exit_code = 0
        self.settings = settings(config)
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self._loader = loader
        self._factory = backend_factory
        self.backend: Backend | None = None
        self.book = CampaignBook(config.state_dir)
        self.stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._reload_wanted = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stores: set[asyncio.Task[None]] = set()
        self._recent: collections.deque[RunSummary] = collections.deque(maxlen=20)
        self._bytes_seen = 0
        self._started = self.clock.now()
        self._config_loaded = self._started
        self._last_error: str | None = None
        self._phase = "running"
        self._prev_upload: str | None = None
        self.planner = Planner(self._policy(), self._started, self.rng, self._saved_budget())
        self.traces = _trace_queue(config)

    # ---- policy ----------------------------------------------------------------------------
    def _policy(self) -> Policy:
        base = base_policy(self.settings.scheduler)
        return with_policy_jobs(base, campaign_jobs(self.book.all()))

    def _saved_budget(self) -> Budget | None:
        """Today's data use survives restarts (a crash loop must not reset the budget)."""
        old = read_state(self.config.state_dir)
        self._prev_upload = None if old is None else old.last_upload
        if old is None or not old.budget_day:
            return None
        try:
            return Budget(date.fromisoformat(old.budget_day), old.budget_used_bytes)
        except ValueError:
            return None

    # ---- signals -----------------------------------------------------------------------------
    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping: no new measurements; in-flight ones may finish")
        self.stopping.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_wanted = True
        self._wake.set()

    def _reload(self) -> None:
        self._reload_wanted = False
        try:
            new = self._loader(self.config.path)
            new_settings = settings(new)
        except VigilError as exc:
            log.error("config reload failed, keeping the running config: %s", exc)
            self._last_error = f"reload: {exc}"
            return
        self.config, self.settings = new, new_settings
        self._config_loaded = self.clock.now()
        setup_logging(new_settings)
        self.planner.update_policy(self._policy(), self.clock.now())
        if self.backend is not None:
            self.backend.reconfigure(new)
        log.info("config reloaded from %s", new.path or "defaults")

    # ---- commands ----------------------------------------------------------------------------
    def on_command(self, topic: str, payload: bytes) -> None:
        """A message on a commands/campaigns topic (called on the event loop)."""
        keys = self.settings.campaigns.operator_keys
        cc = self.settings.campaigns.country or (self.backend.probe_cc() if self.backend else None)
        probe_id = self.backend.probe_id if self.backend else ""
        d = handle_command(
            payload,
            operator_keys=keys,
            book=self.book,
            probe_id=probe_id,
            cc=cc,
            now=self.clock.now(),
        )
        if d.result is Result.ACCEPTED:
            assert d.command is not None
            log.info(
                "operator %s %s accepted (%s)",
                d.command.kind,
                d.command.command_id,
                d.command.note or topic,
            )
            self.planner.update_policy(self._policy(), self.clock.now())
            self._wake.set()
        elif d.result is Result.DUPLICATE:
            log.debug("command on %s already known", topic)
        else:
            log.warning("ignored a command on %s: %s", topic, d.reason)

    # ---- jobs --------------------------------------------------------------------------------
    def _inputs_for(self, job: JobSpec) -> Sequence[Target] | None:
        if not job.name.startswith("campaign:"):
            return None
        _, cid, test = job.name.split(":", 2)
        for c in self.book.all():
            if c.command_id == cid:
                for t in c.tests:
                    if t.test_name == test:
                        return t.inputs or None
        return ()

    def _charge(self, floor: int) -> int:
        assert self.backend is not None
        total = self.backend.bytes_used()
        delta, self._bytes_seen = max(0, total - self._bytes_seen), total
        n = max(delta, floor)
        self.planner.charge(n, self.clock.now())
        return n

    async def _run_job(self, job: JobSpec) -> None:
        assert self.backend is not None
        started = self.clock.now()
        stats = _JobStats()
        outcome = "ok"
        nbytes = 0
        try:
            if job.kind == "refresh":
                outcome = await self.backend.refresh()
            elif job.kind == "housekeeping":
                await self._housekeeping()
            else:
                nbytes, outcome = await self._measure_all(job, started, stats)
        except asyncio.CancelledError:
            outcome = "stopped"
            raise
        except OutboxError as exc:
            # Disk full or a broken database: do not measure what cannot be kept.
            outcome = f"error: {exc}"
            self._last_error = outcome
            log.error("%s: %s", job.name, exc)
        except Exception as exc:  # a job must never take the agent down
            outcome = f"error: {type(exc).__name__}: {exc}"
            self._last_error = outcome
            log.exception("%s failed", job.name)
        finally:
            end = self.clock.now()
            self.planner.finish(job.name, end)
            if job.kind != "housekeeping":
                self._recent.append(
                    RunSummary(
                        job=job.name,
                        started=_fmt(started),
                        finished=_fmt(end),
                        measurements=stats.measurements,
                        bytes=nbytes,
                        outcome=outcome,
                        verdicts=dict(stats.verdicts),
                    )
                )
            self._tasks.pop(job.name, None)
            self._wake.set()

    async def _measure_all(
        self, job: JobSpec, started: datetime, stats: _JobStats
    ) -> tuple[int, str]:
        assert self.backend is not None
        pairs = self.backend.plan(job.kind, self._inputs_for(job))
        seed = f"{self.backend.probe_id}:{job.name}:{started.isoformat()}"
        pairs = order_targets(pairs, seed)
        if job.kind == "web_connectivity" and not job.name.startswith("campaign:"):
            limit = self.settings.scheduler.urls_per_run
            pairs = pairs[:limit] if limit else pairs
        per_target = max(1, job.est_bytes // max(1, min(len(pairs), 20)))
        nbytes = 0
        async with self.backend.session(job.kind) as measurer:
            for i, (test, target) in enumerate(pairs):
                if self.stopping.is_set():
                    return nbytes, "stopped"
                block = self.planner.may_continue(job, self.clock.now(), per_target)
                if block is not None:
                    log.info("%s: stopped early (%s) after %d", job.name, block, i)
                    return nbytes, str(block)
                record = await measurer.measure(test, target)
                if record is None:
                    stats.errors += 1
                    nbytes += self._charge(0)
                    continue
                await self._store(record)
                stats.measurements += 1
                stats.verdicts[str(record.verdict.status)] += 1
                nbytes += self._charge(len(encode_record(record.to_json())))
                self.traces.offer(record, self.clock.now())
                if i + 1 < len(pairs) and await self._pause(self.planner.pause()):
                    return nbytes, "stopped"
            nbytes += await self._trace_blocked(job, measurer, stats)
        return nbytes, "ok" if not stats.errors else f"ok ({stats.errors} could not run)"

    async def _trace_blocked(self, job: JobSpec, measurer: Measurer, stats: _JobStats) -> int:
        """censor_trace on the URLs this run found blocked at TCP/TLS/HTTP (opt-in, rationed)."""
        nbytes = 0
        for url in self.traces.take(self.clock.now()):
            if self.stopping.is_set() or self.planner.may_continue(job, self.clock.now()):
                break
            record = await measurer.measure("censor_trace", Target(input=url))
            if record is None:
                stats.errors += 1
                continue
            await self._store(record)
            stats.measurements += 1
            nbytes += self._charge(len(encode_record(record.to_json())))
        return nbytes

    async def _store(self, record: MeasurementRecord) -> None:
        """Commit, shielded: a SIGTERM during the commit cannot leave half a record."""
        assert self.backend is not None
        task = asyncio.ensure_future(self.backend.store(record))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)
        await asyncio.shield(task)

    async def _pause(self, seconds: float) -> bool:
        """Sleep between targets; True when a stop was requested meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        return self.stopping.is_set()

    async def _housekeeping(self) -> None:
        assert self.backend is not None
        self.book.prune(self.clock.now())
        expired = {j.name for j in self.planner.policy.jobs} - {j.name for j in self._policy().jobs}
        if expired:
            self.planner.update_policy(self._policy(), self.clock.now())
        await self.backend.housekeeping()

    # ---- state file --------------------------------------------------------------------------
    def _state(self) -> AgentState:
        link = self.backend.link() if self.backend is not None else LinkStatus()
        now = self.clock.now()
        phase = self._phase
        if phase == "running" and self.planner.blocked:
            phase = next(iter(self.planner.blocked.values())).value
        left = self.planner.budget_left(now)
        return AgentState(
            pid=os.getpid(),
            version=__version__,
            probe_id=self.backend.probe_id if self.backend else "",
            started_at=_fmt(self._started),
            updated_at=_fmt(now),
            phase=phase,
            budget_day=self.planner.budget.day.isoformat(),
            budget_used_bytes=self.planner.budget.used,
            budget_limit_bytes=0 if left is None else self.planner.policy.daily_budget_bytes,
            next_runs={k: _fmt(v) for k, v in sorted(self.planner.next_runs().items())},
            running=sorted(self._tasks),
            recent=list(self._recent),
            broker_connected=link.broker_connected,
            last_upload=self._prev_upload if link.last_upload is None else _fmt(link.last_upload),
            outbox_pending=link.outbox_pending,
            campaigns=[_describe(c) for c in self.book.active(now)],
            config_loaded_at=_fmt(self._config_loaded),
            last_error=self._last_error,
        )

    def _write_state(self) -> None:
        try:
            write_state(self.config.state_dir, self._state())
        except OSError as exc:
            log.warning("cannot write the state file: %s", exc.strerror)

    # ---- main loop ---------------------------------------------------------------------------
    async def run(self) -> int:
        self.backend = self._factory(self.config, self.settings)
        self._bytes_seen = self.backend.bytes_used()
        publisher_stop = asyncio.Event()
        publisher = asyncio.create_task(
            self.backend.serve(publisher_stop, self.on_command), name="vigil publisher"
        )
        log.info("vigil-agent %s running as probe %s", __version__, self.backend.probe_id)
        try:
            await self._loop(publisher)
        finally:
            await self._shutdown(publisher, publisher_stop)
        return self.exit_code

    def _consent_withdrawn(self) -> bool:
        """True (and stopping) when the consent was withdrawn while running."""
        if self._consent_check is None:
            return False
        accepted, why = self._consent_check(self.config)
        if accepted:
            return False
        log.error("stopping: %s; nothing more is measured until it is accepted again", why)
        self.exit_code = 2  # like a configuration error: systemd does not restart it
        self.request_stop()
        return True

    async def _loop(self, publisher: asyncio.Task[None]) -> None:
        last_state = last_consent = -1e9
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            if self._reload_wanted:
                self._reload()
            if loop.time() - last_consent >= CONSENT_EVERY:
                last_consent = loop.time()
                if self._consent_withdrawn():
                    break
            self._wake.clear()
            now = self.clock.now()
            plan = self.planner.decide(now)
            for job in plan.start:
                self._tasks[job.name] = asyncio.create_task(self._run_job(job), name=job.name)
            if publisher.done() and not self.stopping.is_set():
                exc = publisher.exception() if not publisher.cancelled() else None
                raise VigilError(f"the publisher stopped unexpectedly: {exc!r}")
            if plan.start or loop.time() - last_state >= STATE_EVERY:
                self._write_state()
                last_state = loop.time()
            timeout = max(0.05, min((plan.wake_at - now).total_seconds(), STATE_EVERY))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _shutdown(self, publisher: asyncio.Task[None], publisher_stop: asyncio.Event) -> None:
        self.stopping.set()
        self._phase = "stopping"
        self._write_state()
        grace = self.settings.scheduler.stop_grace_seconds
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                log.info("abandoning in-flight measurement of %s (no record kept)", t.get_name())
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._stores:  # commits under way finish: they may already be on their way to disk
            await asyncio.wait(list(self._stores), timeout=STORE_GRACE)
        publisher_stop.set()
        done, _ = await asyncio.wait([publisher], timeout=PUBLISHER_STOP_GRACE)
        if not done:
            publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
        self._phase = "stopped"
        self._write_state()
        if self.backend is not None:
            await self.backend.aclose()
        log.info("stopped")


def _trace_queue(config: AgentConfig) -> TraceQueue:
    ts = TraceSettings.from_section(config.section("censor_trace"))
    return TraceQueue(enabled=ts.auto, per_day=ts.per_day)


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(c: Command) -> str:
    tests = ", ".join(f"{t.test_name} x{len(t.inputs)} every {t.interval:.0f}s" for t in c.tests)
    note = f"{c.note}: " if c.note else ""
    return f"{c.command_id} ({note}{tests}; until {_fmt(c.not_after)})"


# ---- entry point -------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _signals(sched: Scheduler) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig, handler in (
        (signal.SIGTERM, sched.request_stop),
        (signal.SIGINT, sched.request_stop),
        (signal.SIGHUP, sched.request_reload),
    ):
        loop.add_signal_handler(sig, handler)
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def run_async(
    config: AgentConfig,
    backend_factory: BackendFactory | None = None,
    *,
    clock: Clock | None = None,
    consent_check: ConsentCheck | None = None,
) -> int:
    if backend_factory is None:
        backend_factory = RealBackend.create
    sched = Scheduler(config, backend_factory, clock=clock, consent_check=consent_check)
    async with _signals(sched):
        return await sched.run()


def run_forever(config: AgentConfig, consent_check: ConsentCheck | None = None) -> int:
    """Called by ``vigil-agent run`` (without ``--once``); returns the exit code.

    ``consent_check`` is asked every CONSENT_EVERY seconds: a withdrawn consent stops the agent
    with exit code 2 (the CLI checked it before starting).
    """
    s = settings(config)  # a bad [scheduler] section is a ConfigError (exit 2) before anything
    setup_logging(s)
    return asyncio.run(run_async(config, consent_check=consent_check))


def replace_settings(s: Settings, **changes: object) -> Settings:
    """For tests and tools: a copy of the scheduler settings with some values changed."""
    return replace(s, scheduler=replace(s.scheduler, **changes))  # type: ignore[arg-type]
