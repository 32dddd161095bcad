"""The real Backend of the long-running agent: runner, outbox, publisher, lists, fingerprints.

``agent.daemon.loop`` decides and ``agent.daemon.planner`` plans; this module only wires the
existing
pieces together for a process that runs for months:

* one MeasureContext (TLS trust, resolver, control client, probe network) is kept open and
  shared by every job, re-opened after a config reload or a refresh when no job uses it (so
  the control helper's ``whoami`` is asked a few times a day, not every minute);
* the long-running agent's data budget is the scheduler's daily one, so the context's own
  budget (a ``--once`` run's) is unlimited here;
* records go through the durable outbox (agent.uplink.outbox); the publisher is woken on commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from agent import experiments as registry
from agent.config import AgentConfig
from agent.daemon.interfaces import CommandHandler, LinkStatus, Measurer
from agent.daemon.settings import Settings
from agent.engine import preflight
from agent.engine.runner import DataBudget, Job, MeasureContext, RunLimits, Runner, open_context
from agent.errors import VigilError
from agent.experiments import Experiment, InputPolicy
from agent.identity import Identity, enrolment_command
from agent.identity import load as load_identity
from agent.inputs import sync, testlists
from agent.uplink.outbox import Outbox, OutboxSink, limits_from_config
from agent.uplink.publisher import Publisher, PublisherSettings, settings_from_config
from agent.wire.record import MeasurementRecord, Target
from agent.wire.topics import commands_topic, country_topic

log = logging.getLogger("vigil.backend")

CONTEXT_MAX_AGE = 6 * 3600.0  # seconds: re-ask the helper which network we are on


def broker_settings(config: AgentConfig) -> PublisherSettings | None:
    """``[mqtt]`` of the agent config (None when no host): the publisher's own parser, with
    paths relative to the config file."""
    base = None if config.path is None else config.path.parent
    return settings_from_config(config.section("mqtt"), base)


def experiments_for(kind: str) -> list[type[Experiment]]:
    """A scheduled kind names one experiment (``web_connectivity``) or a family (``apps``)."""
    reg = registry.load_all()
    if kind in reg:
        return [reg[kind]]
    prefix = f"agent.experiments.{kind}"
    return [
        cls
        for name, cls in sorted(reg.items())
        if cls.__module__ == prefix or cls.__module__.startswith(prefix + ".")
    ]


class _Session:
    def __init__(self, runner: Runner, exps: dict[str, Experiment]) -> None:
        self.runner = runner
        self.exps = exps

    async def measure(self, test: str, target: Target) -> MeasurementRecord | None:
        exp = self.exps.get(test)
        if exp is None:
            exp = self.exps[test] = registry.get(test)()
        record, error = await self.runner.measure(Job(exp, target))
        if error is not None:
            log.warning("%s", error)
        return record


class RealBackend:
    def __init__(self, config: AgentConfig, s: Settings, identity: Identity) -> None:
        self.config = config
        self.settings = s
        self.identity = identity
        self.probe_id = identity.probe_id
        self.outbox = Outbox(
            config.state_dir, identity, limits_from_config(config.section("outbox"))
        )
        self.publisher: Publisher | None = None
        self.sink = OutboxSink(self.outbox, on_commit=self._notify)
        self._stack: contextlib.AsyncExitStack | None = None
        self._ctx: MeasureContext | None = None
        self._ctx_opened = 0.0
        self._ctx_stale = False
        self._users = 0
        self._ctx_lock = asyncio.Lock()
        self._bytes_closed = 0  # bytes counted by contexts already closed
        self._published_seen = 0
        self._last_upload: datetime | None = None

    @classmethod
    def create(cls, config: AgentConfig, s: Settings) -> RealBackend:
        return cls(config, s, load_identity(config.state_dir))

    # ---- measuring ---------------------------------------------------------------------------
    def plan(self, kind: str, inputs: Sequence[Target] | None) -> list[tuple[str, Target]]:
        exps = experiments_for(kind)
        if not exps:
            log.warning("no experiment is registered for %r: nothing to run", kind)
            return []
        out: list[tuple[str, Target]] = []
        # the volunteer's excluded categories hold for every test, operator campaigns included
        excluded = frozenset(self.config.lists.exclude_categories)
        for cls in exps:
            if cls.name != kind and not cls.default_enabled:
                # an opt-in member of a family (vpn needs the operator's endpoint list):
                # scheduled only when named on its own
                continue
            if inputs is not None:
                targets = list(inputs)
            elif cls.input_policy is InputPolicy.TEST_LISTS:
                targets = self._list_targets()
            elif cls.input_policy is InputPolicy.SELECTED_HOSTS:
                targets = self._selected_hosts()
            else:
                targets = cls.default_targets()
            targets, dropped = testlists.without_categories(
                targets, excluded, cls.category_code
            )
            if dropped:
                log.info("%s: %s", cls.name, testlists.describe_dropped(dropped))
            out += [(cls.name, t) for t in targets]
        return out

    def _selected_hosts(self) -> list[Target]:
        """Hosts worth a bulk transfer: the operator's names, then throttling-prone categories."""
        from agent.experiments.throttling.measure import ThrottlingSettings
        from agent.experiments.throttling.targets import select_targets

        names = ThrottlingSettings.from_section(self.config.section("throttling")).names
        return select_targets(self._list_targets(), names)

    def _list_targets(self) -> list[Target]:
        if self.config.lists.files:
            parsed = testlists.read_files(self.config.lists.files)
        else:
            directory = testlists.lists_dir(self.config.state_dir)
            cc = self.probe_cc() or "ZZ"
            paths = testlists.default_paths(directory, cc, self.config.lists.countries)
            parsed = testlists.read_files(paths)
        return list(parsed.targets)

    async def _context(self) -> MeasureContext:
        loop = asyncio.get_running_loop()
        async with self._ctx_lock:
            old_enough = loop.time() - self._ctx_opened > CONTEXT_MAX_AGE
            if self._ctx is not None and (self._ctx_stale or old_enough) and self._users == 0:
                await self._close_context()
            if self._ctx is None:
                stack = contextlib.AsyncExitStack()
                ctx = await stack.enter_async_context(open_context(self.config, self.identity))
                ctx.budget = DataBudget(None)  # the scheduler keeps the (daily) budget
                if ctx.whoami_error is not None and self.config.control.url is not None:
                    problem = preflight.helper_problem(
                        ctx.whoami_error, self.config.control.url,
                        enrolment_command(self.identity.probe_id, self.identity.public_key_b64),
                    )
                    log.error("%s; fix: %s", problem.message, problem.fix)
                self._stack, self._ctx, self._ctx_opened = stack, ctx, loop.time()
                self._ctx_stale = False
            return self._ctx

    async def _close_context(self) -> None:
        if self._ctx is not None:
            self._bytes_closed += self._ctx.budget.used
        stack, self._stack, self._ctx = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @contextlib.asynccontextmanager
    async def session(self, kind: str) -> AsyncIterator[Measurer]:
        ctx = await self._context()
        self._users += 1
        try:
            limits = RunLimits(
                concurrency=1,
                per_host=1,
                measurement_timeout=self.config.run.measurement_timeout,
            )
            yield _Session(Runner(ctx, self.sink, limits), {})
        finally:
            self._users -= 1

    async def store(self, record: MeasurementRecord) -> None:
        await self.sink.put(record)

    def bytes_used(self) -> int:
        return self._bytes_closed + (self._ctx.budget.used if self._ctx is not None else 0)

    def probe_cc(self) -> str | None:
        if self._ctx is None or self._ctx.probe.probe_cc == "ZZ":
            return None
        return self._ctx.probe.probe_cc

    # ---- upkeep ------------------------------------------------------------------------------
    async def refresh(self) -> str:
        """Update test lists and reload fingerprints."""
        parts: list[str] = []
        try:
            result = await asyncio.to_thread(sync.update_from_config, self.config)
            parts.append(f"lists: {result}")
        except (VigilError, OSError) as exc:
            parts.append(f"lists not updated: {exc}")
            log.warning("test list update failed: %s", exc)
        try:
            from agent.inputs import fingerprints

            reload = getattr(fingerprints, "reload", None)
            if callable(reload):
                reload()
                parts.append("fingerprints reloaded")
        except VigilError as exc:
            parts.append(f"fingerprints not reloaded: {exc}")
        self._ctx_stale = True  # re-ask the helper where we are at the next job
        return "; ".join(parts) or "ok"

    async def housekeeping(self) -> None:
        """The outbox bounds itself on every enqueue; here we only log its size."""
        stats = await asyncio.to_thread(self.outbox.stats)
        log.debug("outbox: %d records, %d bytes", stats.count, stats.bytes)

    def reconfigure(self, config: AgentConfig) -> None:
        self.config = config
        self._ctx_stale = True

    # ---- publishing --------------------------------------------------------------------------
    def _notify(self) -> None:
        if self.publisher is not None:
            self.publisher.notify()

    def topics(self) -> list[str]:
        topics = [commands_topic(self.probe_id)]
        cc = self.settings.campaigns.country or self.probe_cc()
        if cc:
            topics.append(country_topic(cc))
        return topics

    def link(self) -> LinkStatus:
        pub = self.publisher
        if pub is not None:
            # The country becomes known with the helper's first answer: follow its campaign
            # topic from the next (re)connection on.
            missing = [t for t in self.topics() if t not in pub.subscriptions]
            if missing:
                pub.subscriptions = (*pub.subscriptions, *missing)
        if pub is not None and pub.counters.published != self._published_seen:
            self._published_seen = pub.counters.published
            self._last_upload = datetime.now(UTC)
        return LinkStatus(
            broker_connected=bool(pub is not None and pub.connected),
            last_upload=self._last_upload,
            outbox_pending=len(self.outbox),
        )

    async def serve(self, stop: asyncio.Event, on_command: CommandHandler) -> None:
        settings = broker_settings(self.config)
        if settings is None:
            log.warning("no [mqtt] host configured: measurements stay in the outbox")
            await stop.wait()
            return

        async def handler(topic: str, payload: bytes) -> None:
            on_command(topic, payload)

        self.publisher = Publisher(
            self.outbox, settings, subscriptions=self.topics(), on_message=handler
        )
        await self.publisher.run(stop)

    async def aclose(self) -> None:
        await self._close_context()
        self.outbox.close()
