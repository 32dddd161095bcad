"""The operator-facing collector service: one aiohttp application that serves the JSON API,
the dashboard and /metrics, and owns the background work as ``cleanup_ctx`` contexts.

    create_app(ServeSettings(config))
      cleanup_ctx: api store  ->  ingest (MQTT, collector.ingest.pipeline)  ->  outage detector
      on_shutdown: tell the ingest and the detector to stop (they drain while HTTP closes)

Why three store connections rather than one: the stores are blocking drivers used from one
thread each (collector.store.aio).  Sharing the ingest's would queue every API query behind
batch commits (and a long export page in front of them); SQLite in WAL mode and PostgreSQL
both let separate connections read while the ingest writes.  The outage detector has its own
too, because collector.outages.watch calls its store from worker threads.

A background task that dies (the broker refused our subscription, a bug) is recorded in
:class:`Runtime`: ``/healthz`` turns 503 and ``vigil-collector serve`` exits non-zero so
systemd restarts it, rather than serving a collector that silently stopped collecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from agent.errors import VigilError
from collector.config import CollectorConfig
from collector.ingest.pipeline import Ingest
from collector.metrics import Metrics, OutageLoopStats
from collector.outages.detector import DetectorConfig
from collector.outages.store import OutageEventStore
from collector.outages.watch import WatchConfig, Watcher
from collector.store import describe_url
from collector.store.aio import AsyncStore

log = logging.getLogger("vigil.collector.serve")

STATIC_DIR = Path(__file__).parent / "api" / "static"


@dataclass(frozen=True)
class ServeSettings:
    """What ``create_app`` needs: the collector config and which background work to run."""

    config: CollectorConfig
    ingest: bool = True  # run the MQTT ingest in this process (--no-ingest: API only)
    outages: bool = True  # run the outage detector (also needs [outages] enabled)
    static_dir: Path = STATIC_DIR

    @property
    def detector(self) -> DetectorConfig:
        o = self.config.outages
        return DetectorConfig(
            heartbeat_interval=o.heartbeat_s,
            baseline_window=o.window_s,
            alert_fraction=o.alert_fraction,
            min_expected_probes=o.min_probes,
        )


@dataclass
class Runtime:
    """Mutable state of a running app: background work and how it is doing."""

    started_at: float = field(default_factory=time.time)
    ingest: Ingest | None = None
    outages: OutageLoopStats = field(default_factory=OutageLoopStats)
    events: OutageEventStore | None = None  # outage events, on the API's store connection
    stops: list[asyncio.Event] = field(default_factory=list)
    failure: str | None = None  # why a background task died
    error: BaseException | None = None  # and the exception, if it raised one
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    events_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def fail(self, what: str, exc: BaseException | None) -> None:
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else "stopped unexpectedly"
        self.failure = f"{what}: {detail}"
        self.error = exc
        # A VigilError is an explained failure (bad config, refused subscription): no
        # traceback.  Anything else is a bug: keep the traceback for the report.
        log.error("%s died: %s", what, detail,
                  exc_info=None if isinstance(exc, VigilError) else exc)
        self.failed.set()

    def stop_background(self) -> None:
        for stop in self.stops:
            stop.set()


SETTINGS = web.AppKey("vigil_settings", ServeSettings)
STORE = web.AppKey("vigil_store", AsyncStore)  # the API's connection (queries only)
RUNTIME = web.AppKey("vigil_runtime", Runtime)
METRICS = web.AppKey("vigil_metrics", Metrics)
INGEST_TASK = web.AppKey("vigil_ingest_task", asyncio.Task[None])
OUTAGE_TASK = web.AppKey("vigil_outage_task", asyncio.Task[None])


def create_app(settings: ServeSettings) -> web.Application:
    """The whole service; background work starts when the app starts (runner or test)."""
    from collector.api import routes as api

    app = web.Application(middlewares=api.middlewares(), client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app[RUNTIME] = Runtime()
    app[METRICS] = Metrics()
    api.setup_routes(app, settings.static_dir)
    app.on_response_prepare.append(api.security_headers)
    app.cleanup_ctx.append(_api_store)
    app.cleanup_ctx.append(_ingest)
    app.cleanup_ctx.append(_outage_detector)
    app.on_shutdown.append(_signal_stop)
    return app


async def open_store(config: CollectorConfig) -> AsyncStore:
    return await AsyncStore.open(
        config.store.url,
        busy_timeout_ms=config.store.busy_timeout_ms,
        connect_timeout=config.store.connect_timeout_s,
    )


async def events_store(app: web.Application) -> OutageEventStore:
    """The outage events table on the API's connection (created on first use)."""
    rt = app[RUNTIME]
    async with rt.events_lock:
        if rt.events is None:
            store = app[STORE]
            rt.events = await store.call(OutageEventStore, store.store)
        return rt.events


# ---- cleanup contexts ------------------------------------------------------------------------
async def _api_store(app: web.Application) -> AsyncIterator[None]:
    config = app[SETTINGS].config
    store = await open_store(config)
    version = await store.call(store.store.schema_version)
    log.info("store %s (schema v%d)", describe_url(config.store.url), version)
    app[STORE] = store
    try:
        yield
    finally:
        await store.close()


async def _ingest(app: web.Application) -> AsyncIterator[None]:
    settings, rt = app[SETTINGS], app[RUNTIME]
    if not settings.ingest:
        yield
        return
    config = settings.config
    store = await open_store(config)
    ingest = Ingest(config.broker, config.ingest, store)
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop), name="vigil-ingest")
    task.add_done_callback(lambda t: _task_done(rt, "ingest", stop, t))
    rt.ingest, app[INGEST_TASK] = ingest, task
    rt.stops.append(stop)
    app[METRICS].sources.ingest = lambda: (ingest.stats, ingest.connected.is_set())
    try:
        yield
    finally:
        stop.set()
        # Ingest.run stores and acknowledges what is in flight within drain_timeout_s.
        await _finish(task, config.ingest.drain_timeout_s + 5.0, "ingest")
        await store.close()


async def _outage_detector(app: web.Application) -> AsyncIterator[None]:
    settings, rt = app[SETTINGS], app[RUNTIME]
    if not (settings.outages and settings.config.outages.enabled):
        yield
        return
    config = settings.config
    store = await open_store(config)
    watch = WatchConfig(detector=settings.detector, webhooks=config.outages.webhooks)
    watcher = await store.call(Watcher, store.store, watch)
    stop = asyncio.Event()
    rt.outages.enabled = True
    task = asyncio.create_task(_detect(watcher, rt.outages, stop), name="vigil-outages")
    task.add_done_callback(lambda t: _task_done(rt, "outage detector", stop, t))
    app[OUTAGE_TASK] = task
    rt.stops.append(stop)
    app[METRICS].sources.outages = lambda: rt.outages
    try:
        yield
    finally:
        stop.set()
        finished = await _finish(task, 30.0, "outage detector")
        if finished:  # else a pass is still running on a worker thread with this store
            await store.close()


async def _signal_stop(app: web.Application) -> None:
    """on_shutdown: let the ingest drain while the HTTP side closes its connections."""
    app[RUNTIME].stop_background()


def _task_done(rt: Runtime, what: str, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        rt.fail(what, exc)
    elif not stop.is_set():
        rt.fail(what, None)


async def _finish(task: asyncio.Task[None], timeout: float, what: str) -> bool:
    """Wait for a stopping task; True when it ended (its errors are already recorded)."""
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        log.warning("%s did not stop within %.0fs; cancelling it", what, timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return False
    except Exception:  # recorded by _task_done
        return True
    return True


async def _detect(watcher: Watcher, stats: OutageLoopStats, stop: asyncio.Event) -> None:
    """The outage detector every ``step`` (a quarter heartbeat) until ``stop``."""
    step = watcher.config.detector.step
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                events = await watcher.check(time.time(), session)
            except Exception as exc:  # a failed pass (database away) must not end the loop
                stats.failures += 1
                stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("outage detection pass failed: %s", stats.last_error)
            else:
                stats.passes += 1
                stats.last_success = time.time()
                stats.ongoing = sum(1 for e in events if e.ongoing)
                stats.last_error = ""
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), step)
