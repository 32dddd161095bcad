"""Run experiments over targets and turn their outcomes into measurement records.

The runner owns everything around a measurement: the shared services experiments use
(:class:`MeasureContext`: timeouts, TLS trust, resolver, control client, data budget), bounded
global concurrency with per-host politeness, a safety-net timeout per measurement, the
total-runtime and data budgets, and the record itself (UUIDv7, UTC start time, runtime, probe
network, the volunteer's addresses scrubbed out, schema-validated before it leaves).

Records go to a :class:`RecordSink`; :class:`JsonlFileSink` writes JSON lines (the transport
adds a durable outbox sink).  An experiment that raises could not run: that is counted and
logged, never written as a fake measurement; censorship is data inside ``test_keys``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ipaddress
import logging
import os
import platform
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlsplit

from agent import SOFTWARE_NAME, __version__
from agent.config import AgentConfig, NetConfig
from agent.engine.helper_client import Authenticator, ControlClient, WhoAmI
from agent.engine.scrub import Scrubber, local_addresses
from agent.errors import ConfigError, ControlError, OutboxError, SchemaError
from agent.experiments import Experiment, Outcome
from agent.experiments import slots as slot_binding
from agent.experiments.context import HelperClient
from agent.identity import Identity
from agent.net.dns import ResolverAddress, parse_resolver, resolve_first, system_resolver
from agent.net.ipv6route import IPv6Path, has_global_ipv6
from agent.net.tls import TLSContexts, make_contexts
from agent.wire.envelope import encode_record, uuid7, validate_record
from agent.wire.helper_api import ClientInfo, ResolverSighting
from agent.wire.record import MeasurementRecord, ProbeInfo, Target, Verdict

log = logging.getLogger("vigil.runner")

_HOST_SCAN = 256  # how far the dispatcher looks past busy hosts for a free one
_LINGER_FACTOR = 4  # jobs alive (lingering included) per concurrency slot


# ---- services shared by experiments ------------------------------------------------------------
class DataBudget:
    """Bytes moved on the wire (approximate: payloads, not headers); soft limit.

    The budget is checked before a measurement starts and caps each HTTP body read, so the
    overshoot is bounded by what in-flight measurements were already allowed to read.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, n: int) -> None:
        self.used += n

    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.used >= self.limit


@dataclass
class MeasureContext:
    """Services and settings an experiment's ``run(target, ctx)`` uses."""

    net: NetConfig
    tls: TLSContexts
    resolver: ResolverAddress
    control: HelperClient | None
    budget: DataBudget = field(default_factory=lambda: DataBudget(None))
    scrubber: Scrubber = field(default_factory=Scrubber)
    probe: ProbeInfo = field(default_factory=ProbeInfo)
    config: AgentConfig | None = None  # state_dir and other modules' sections
    ipv6_path: IPv6Path = field(default_factory=IPv6Path)

    @property
    def ipv6_active(self) -> bool:
        """Measure over IPv6 too: configured (or detected) on, and not found broken."""
        return bool(self.net.ipv6) and not self.ipv6_path.broken
    whoami_error: ControlError | None = None  # why the helper's whoami failed, if it did

    def on_bytes(self, n: int) -> None:
        self.budget.charge(n)

    def note_local_address(self, ip: str | None) -> None:
        """The local end of a socket we opened: one of the volunteer's addresses."""
        if self.scrubber.add(ip):
            log.debug("scrubbing a newly seen local address")

    def observe_client(self, client: ClientInfo) -> None:
        """The helper's view of our network (ASN, country where the address is used, country
        where the network is registered), refreshed by every control answer."""
        registration = _cc(client.registration_cc) if client.registration_cc else ""
        probe = self.probe
        if (client.asn, client.cc, registration) == (
            probe.probe_asn, probe.probe_cc, probe.probe_registration_cc
        ):
            return
        self.probe = dataclasses.replace(
            probe,
            probe_asn=_asn(client.asn),
            probe_cc=_cc(client.cc),
            probe_network_name=client.network_name[:256],
            probe_registration_cc=registration,
        )

    def observe_resolver(self, sighting: ResolverSighting) -> None:
        """The resolver's egress as the helper's DNS whoami zone saw it.  An egress on the
        volunteer's own address (a recursive resolver at home) or IPv6 /64 is not recorded:
        it would locate them; its network is the probe's own anyway."""
        if not sighting.seen or sighting.client is None:
            return
        ip = _canonical_ip(sighting.ip)
        if ip is None:
            return
        if _near_any(ip, self.scrubber.addresses):
            ip = ""
        self.probe = dataclasses.replace(
            self.probe,
            resolver_ip=ip,
            resolver_asn=_asn(sighting.client.asn),
            resolver_network_name=sighting.client.network_name[:256],
        )


def _canonical_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _near_any(ip: str, addresses: Iterable[str]) -> bool:
    """``ip`` is one of ``addresses`` or, for IPv6, in the /64 of one of them."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for other_text in addresses:
        try:
            other = ipaddress.ip_address(other_text)
        except ValueError:
            continue
        if addr == other:
            return True
        if addr.version == 6 and other.version == 6 and int(addr) >> 64 == int(other) >> 64:
            return True
    return False


def _asn(value: str) -> str:
    text = value.strip().upper()
    if not text.startswith("AS"):
        text = "AS" + text
    return text if text[2:].isdigit() and 1 <= len(text) - 2 <= 10 else "AS0"


def _cc(value: str) -> str:
    text = value.strip().upper()
    return text if len(text) == 2 and text.isascii() and text.isalpha() else "ZZ"


def resolver_from(config: NetConfig) -> ResolverAddress:
    if config.resolver is not None:
        return parse_resolver(config.resolver)
    found = system_resolver()
    if found is None:
        raise ConfigError("no DNS resolver: /etc/resolv.conf names none; set [net] resolver")
    return found


def tls_contexts(ca_file: Path | None) -> TLSContexts:
    try:
        return make_contexts(ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"cannot load CA file {ca_file}: {exc}") from None


def _signer(identity: Identity) -> Authenticator:
    from agent.wire.helper_auth import sign_request

    def sign(method: str, path: str, body: bytes) -> Mapping[str, str]:
        return sign_request(identity, method, path, body, time.time())

    return sign


@asynccontextmanager
async def open_context(
    config: AgentConfig, identity: Identity | None
) -> AsyncIterator[MeasureContext]:
    """Build the services for a run: TLS trust, resolver, control client, probe network.

    The control helper's ``whoami`` says which network we are on and our public address (kept
    only in the scrubber).  Requests to the helper are signed with the probe's key
    (agent.wire.helper_auth) when an identity is given.  When the helper cannot be reached the run
    still goes on: every measurement then carries ``control_failure`` and is inconclusive,
    which is the truth.
    """
    tls = tls_contexts(config.net.ca_file)
    resolver = resolver_from(config.net)
    scrubber = Scrubber(local_addresses())
    net = config.net
    if net.ipv6 is None:
        net = dataclasses.replace(net, ipv6=has_global_ipv6())
        log.info("IPv6 %s (auto: global IPv6 route %s)", "on" if net.ipv6 else "off",
                 "found" if net.ipv6 else "not found")
    ctx = MeasureContext(
        net=net,
        tls=tls,
        resolver=resolver,
        control=None,
        budget=DataBudget(config.run.data_budget_bytes),
        scrubber=scrubber,
        probe=ProbeInfo(probe_id="" if identity is None else identity.probe_id),
        config=config,
    )
    if config.control.url is None:
        yield ctx
        return
    client = ControlClient(
        config.control.url,
        ssl_context=tls.verify,
        timeout=config.control.timeout,
        max_connections=config.run.concurrency,
        authenticator=None if identity is None else _signer(identity),
    )
    try:
        ctx.control = client
        errors: list[ControlError] = []
        who = await discover(client, errors=errors)
        if who is None and errors:
            ctx.whoami_error = errors[-1]
        if who is not None:
            scrubber.add(who.ip)
            ctx.observe_client(who.client)
            if who.dns_whoami:
                sighting = await identify_resolver(
                    client, who.dns_whoami, resolver, config.net.dns_timeout
                )
                if sighting is not None:
                    ctx.observe_resolver(sighting)
        yield ctx
    finally:
        await client.close()


async def discover(
    client: ControlClient, attempts: int = 3, errors: list[ControlError] | None = None
) -> WhoAmI | None:
    """The helper's whoami, retried; None when it failed (``errors`` collects why)."""
    for attempt in range(attempts):
        try:
            return await client.whoami()
        except ControlError as exc:
            if errors is not None:
                errors.append(exc)
            if getattr(exc, "status", None) in (401, 403, 404):
                break  # a refusal, not a glitch: asking again changes nothing
            log.warning("control helper whoami failed (attempt %d/%d): %s", attempt + 1,
                        attempts, exc)
            if attempt + 1 < attempts:
                await asyncio.sleep(0.5 * (attempt + 1))
    return None


async def identify_resolver(
    client: ControlClient, zone: str, resolver: ResolverAddress, timeout: float
) -> ResolverSighting | None:
    """Which egress address does our resolver use?  Resolve a fresh random name under the
    helper's DNS whoami zone through it, then ask the helper what its zone saw (as OONI does
    with whoami.v4.powerdns.org, but with a nonce so the answer is ours and authenticated)."""
    nonce = secrets.token_hex(12)
    answer = await resolve_first(f"{nonce}.{zone}", resolver, timeout=timeout)
    try:
        sighting = await client.resolver(nonce)
    except ControlError as exc:
        log.warning("resolver attribution failed: %s", exc)
        return None
    if not sighting.seen:
        log.warning(
            "the resolver %s the whoami name, but the helper never saw the query: %s",
            "answered" if answer else "did not answer",
            "something on the path answers DNS by itself" if answer else "no attribution",
        )
    elif sighting.client is not None:
        log.info("resolver egress network: %s %s", sighting.client.asn,
                 sighting.client.network_name)
    return sighting


# ---- sinks ----------------------------------------------------------------------------------
class RecordSink(Protocol):
    async def put(self, record: MeasurementRecord) -> None: ...


class JsonlFileSink:
    """One record per line, appended (an existing file is never truncated), fsync on close.

    ``-`` writes to standard output.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path) if str(path) != "-" else None
        self.written = 0
        self._fh: IO[bytes]
        if self.path is None:
            self._fh = sys.stdout.buffer
            return
        try:
            if self.path.parent != Path(""):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise OutboxError(f"cannot open {self.path} for writing: {exc.strerror}") from None

    async def put(self, record: MeasurementRecord) -> None:
        line = encode_record(record.to_json()) + b"\n"
        try:
            self._fh.write(line)
            self._fh.flush()
        except OSError as exc:
            raise OutboxError(f"cannot write to {self.path or 'stdout'}: {exc.strerror}") from None
        self.written += 1

    def close(self) -> None:
        if self.path is None:
            return
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise OutboxError(f"cannot flush {self.path}: {exc.strerror}") from None
        finally:
            self._fh.close()


# ---- the run ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Job:
    experiment: Experiment
    target: Target

    @property
    def host(self) -> str:
        text = self.target.input or ""
        try:
            host = urlsplit(text).hostname
        except ValueError:
            host = None
        return (host or text).lower()


@dataclass(frozen=True, slots=True)
class RunLimits:
    concurrency: int = 16
    per_host: int = 1
    max_runtime: float | None = None
    measurement_timeout: float = 120.0


@dataclass
class RunSummary:
    planned: int
    measured: int = 0
    errors: int = 0
    skipped: int = 0
    by_status: collections.Counter[str] = field(default_factory=collections.Counter)
    stopped: str | None = None  # why scheduling stopped early (budget), if it did
    elapsed: float = 0.0
    bytes_used: int = 0

    @property
    def rate(self) -> float:
        return self.measured / self.elapsed if self.elapsed > 0 else 0.0


Observer = Callable[[MeasurementRecord | None, Job, str | None], None]
"""Called after each job: (record or None, job, error text or None)."""


def build_record(
    job: Job, ctx: MeasureContext, started: datetime, runtime: float, outcome: Outcome
) -> MeasurementRecord:
    """The record for one outcome, with the volunteer's addresses scrubbed out."""
    if not isinstance(outcome.verdict, Verdict):
        raise SchemaError(
            f"{job.experiment.name} returned a verdict of type {type(outcome.verdict).__name__}"
        )
    probe = ctx.probe
    base = {
        "architecture": platform.machine() or "unknown",
        "platform": sys.platform,
        "engine": f"{SOFTWARE_NAME}/{__version__}",
    }
    base.update(outcome.annotations)
    resolver_ip = probe.resolver_ip
    if _near_any(resolver_ip, ctx.scrubber.addresses):  # the scrubber learns addresses as it goes
        resolver_ip = ""
    return MeasurementRecord(
        measurement_id=uuid7(int(started.timestamp() * 1000)),
        test_name=job.experiment.name,
        test_version=job.experiment.version,
        input=job.target.input,
        category_code=job.target.category_code,
        probe_id=probe.probe_id,
        probe_asn=probe.probe_asn,
        probe_cc=probe.probe_cc,
        probe_network_name=ctx.scrubber.text(probe.probe_network_name),
        resolver_asn=probe.resolver_asn,
        probe_registration_cc=probe.probe_registration_cc,
        resolver_ip=resolver_ip,
        resolver_network_name=ctx.scrubber.text(probe.resolver_network_name),
        measurement_start_time=started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        test_runtime=round(min(max(runtime, 0.0), 86400.0), 6),
        software_name=SOFTWARE_NAME,
        software_version=__version__,
        test_keys=ctx.scrubber.scrub(outcome.test_keys),
        verdict=outcome.verdict,
        annotations={k: ctx.scrubber.text(str(v))[:256] for k, v in base.items()},
    )


class Runner:
    """Measure a plan of jobs with bounded concurrency, politeness and budgets."""

    def __init__(
        self,
        ctx: MeasureContext,
        sink: RecordSink,
        limits: RunLimits = RunLimits(),
        observer: Observer | None = None,
    ) -> None:
        self.ctx = ctx
        self.sink = sink
        self.limits = limits
        self.observer = observer
        self._pending: collections.deque[Job] = collections.deque()
        self._busy: collections.Counter[str] = collections.Counter()
        self._cond = asyncio.Condition()
        self._stop: str | None = None
        self._started = 0.0
        self._turns: dict[str, asyncio.Lock] = {}  # experiments measured one at a time

    async def run(self, plan: Sequence[Job]) -> RunSummary:
        """Measure ``plan``; returns when every started job ended (or a sink failed).

        ``concurrency`` slots bound the measurements doing network work; a job that only
        waits (agent.experiments.slots.release_slot) gives its slot back early, and at most
        ``_LINGER_FACTOR`` x ``concurrency`` jobs exist at once, lingering ones included.
        """
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        self._pending = collections.deque(plan)
        summary = RunSummary(planned=len(plan))
        slots = asyncio.Semaphore(self.limits.concurrency)
        alive = asyncio.Semaphore(self.limits.concurrency * _LINGER_FACTOR)
        tasks: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []
        try:
            while not failure:
                await alive.acquire()
                await slots.acquire()
                job = await self._next()
                if job is None or failure:
                    slots.release()
                    alive.release()
                    if job is not None:
                        self._pending.appendleft(job)
                        await self._release(job)
                    break
                task = asyncio.create_task(
                    self._job(job, summary, slots, alive, failure), name=f"vigil {job.host}"
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*list(tasks))
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*list(tasks), return_exceptions=True)
        if failure:
            raise failure[0]
        summary.skipped += len(self._pending)
        summary.stopped = self._stop
        summary.elapsed = loop.time() - self._started
        summary.bytes_used = self.ctx.budget.used
        return summary

    async def _job(
        self,
        job: Job,
        summary: RunSummary,
        slots: asyncio.Semaphore,
        alive: asyncio.Semaphore,
        failure: list[BaseException],
    ) -> None:
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                slots.release()

        slot_binding.bind(release)
        try:
            try:
                record, error = await self.measure(job)
            finally:
                release()
                await self._release(job)
            if record is not None:
                await self.sink.put(record)  # a sink failure ends the run: nothing is dropped
                summary.measured += 1
                summary.by_status[str(record.verdict.status)] += 1
            elif error is None:
                summary.skipped += 1
                return
            else:
                summary.errors += 1
            if self.observer is not None:
                self.observer(record, job, error)
        except Exception as exc:  # the sink or the observer: stop scheduling, report it
            if not failure:
                failure.append(exc)
            async with self._cond:
                self._stop = self._stop or f"{type(exc).__name__}: {exc}"
                self._cond.notify_all()
        finally:
            alive.release()

    def _check_budgets(self) -> None:
        if self._stop is not None:
            return
        limit = self.limits.max_runtime
        if limit is not None and asyncio.get_running_loop().time() - self._started >= limit:
            self._stop = f"runtime budget of {limit:g} s reached"
        elif self.ctx.budget.exhausted:
            self._stop = f"data budget of {self.ctx.budget.limit} bytes reached"

    async def _next(self) -> Job | None:
        async with self._cond:
            while True:
                self._check_budgets()
                if self._stop is not None or not self._pending:
                    return None
                for i, job in enumerate(self._pending):
                    if i >= _HOST_SCAN:
                        break
                    if self._busy[job.host] < self.limits.per_host:
                        del self._pending[i]
                        self._busy[job.host] += 1
                        return job
                await self._cond.wait()

    async def _release(self, job: Job) -> None:
        async with self._cond:
            self._busy[job.host] -= 1
            if self._busy[job.host] <= 0:
                del self._busy[job.host]
            self._cond.notify_all()

    async def measure(self, job: Job) -> tuple[MeasurementRecord | None, str | None]:
        """One job → (record, None), (None, why it could not run), or (None, None) when a
        budget ran out before its turn came (not measured, like the jobs never started)."""
        loop = asyncio.get_running_loop()
        started = datetime.now(UTC)
        t0 = loop.time()
        name = job.experiment.name
        turn: asyncio.Lock | None = None
        if getattr(job.experiment, "one_at_a_time", False):
            # waiting for its turn does no network work: the slot goes to another job, and
            # the clock (started time, timeout, runtime) starts when the turn comes
            slot_binding.release_slot()
            turn = self._turns.setdefault(name, asyncio.Lock())
            await turn.acquire()
            self._check_budgets()
            if self._stop is not None:  # a budget ran out while it waited: not measured
                turn.release()
                return None, None
            started = datetime.now(UTC)
            t0 = loop.time()
        try:
            async with asyncio.timeout(self.limits.measurement_timeout):
                outcome = await job.experiment.run(job.target, self.ctx)
        except TimeoutError:
            error = f"{name} on {job.target.input}: over {self.limits.measurement_timeout:g} s"
            log.error("measurement abandoned: %s", error)
            return None, error
        except Exception as exc:  # an experiment bug must not end a 1,700-URL run
            error = f"{name} on {job.target.input} could not run: {type(exc).__name__}: {exc}"
            log.error("%s", error, exc_info=log.isEnabledFor(logging.DEBUG))
            return None, error
        finally:
            if turn is not None:
                turn.release()
        runtime = loop.time() - t0
        try:
            record = build_record(job, self.ctx, started, runtime, outcome)
            validate_record(record.to_json())
        except (SchemaError, ValueError, TypeError) as exc:
            error = f"{name} on {job.target.input}: invalid record: {exc}"
            log.error("%s", error)
            return None, error
        return record, None
