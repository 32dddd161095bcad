"""The operator-facing collector service: one aiohttp application that serves the JSON API,
the dashboard and /metrics, and owns the background work as ``cleanup_ctx`` contexts.

    create_app(ServeSettings(config))
      cleanup_ctx: api store  ->  ingest (MQTT, collector.ingest.pipeline)  ->  outage detector
                   ->  slowdown detector (collector.slowdowns.watch)
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
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from collector.api import pages
from collector.api import routes as api
from collector.config import CollectorConfig
from collector.events.watch import EventWatcher
from collector.ingest.pipeline import Ingest
from collector.metrics import Metrics, OutageLoopStats
from collector.outages.watch import WatchConfig, Watcher
from collector.runtime import (
    INGEST_TASK,
    METRICS,
    OUTAGE_TASK,
    RUNTIME,
    SETTINGS,
    SLOWDOWN_TASK,
    STORE,
    Runtime,
    ServeSettings,
)
from collector.slowdowns.watch import SlowdownWatchConfig, SlowdownWatcher
from collector.store import describe_url
from collector.store.aio import AsyncStore

log = logging.getLogger("vigil.collector.serve")

def create_app(settings: ServeSettings) -> web.Application:
    """The whole service; background work starts when the app starts (runner or test)."""
    app = web.Application(middlewares=api.middlewares(), client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app[RUNTIME] = Runtime()
    app[METRICS] = Metrics()
    api.setup_routes(app, settings.static_dir)
    pages.setup_pages(app)
    app.on_response_prepare.append(api.security_headers)
    app.cleanup_ctx.append(_api_store)
    app.cleanup_ctx.append(_ingest)
    app.cleanup_ctx.append(_outage_detector)
    app.cleanup_ctx.append(_slowdown_detector)
    app.on_shutdown.append(_signal_stop)
    return app


async def open_store(config: CollectorConfig, threads: int = 1) -> AsyncStore:
    return await AsyncStore.open(
        config.store.url,
        threads,
        busy_timeout_ms=config.store.busy_timeout_ms,
        connect_timeout=config.store.connect_timeout_s,
    )


# ---- cleanup contexts ------------------------------------------------------------------------
async def _api_store(app: web.Application) -> AsyncIterator[None]:
    config = app[SETTINGS].config
    store = await open_store(config, config.api.store_threads)
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
    watch = WatchConfig(detector=settings.detector, webhooks=settings.config.outages.webhooks)
    async with _detector(app, Watcher, watch, rt.outages) as task:
        app[OUTAGE_TASK] = task
        app[METRICS].sources.outages = lambda: rt.outages
        yield


async def _slowdown_detector(app: web.Application) -> AsyncIterator[None]:
    """The slowdown detector on its own store connection (it writes its samples table)."""
    settings, rt = app[SETTINGS], app[RUNTIME]
    if not (settings.slowdowns and settings.config.slowdowns.enabled):
        yield
        return
    watch = SlowdownWatchConfig(detector=settings.slowdown_detector,
                                webhooks=settings.config.slowdowns.webhooks)
    async with _detector(app, SlowdownWatcher, watch, rt.slowdowns) as task:
        app[SLOWDOWN_TASK] = task
        app[METRICS].sources.slowdowns = lambda: rt.slowdowns
        yield


C = TypeVar("C")


@contextlib.asynccontextmanager
async def _detector(app: web.Application,
                    watcher_type: Callable[[Any, C], EventWatcher[Any, Any]], config: C,
                    stats: OutageLoopStats) -> AsyncIterator[asyncio.Task[None]]:
    """A detector's passes in the background, on a store connection of its own, until the
    app stops; yields the task."""
    rt = app[RUNTIME]
    store = await open_store(app[SETTINGS].config)
    watcher = await store.call(watcher_type, store.store, config)
    what = f"{watcher.kind} detector"
    stop = asyncio.Event()
    stats.enabled = True
    task = asyncio.create_task(_detect(watcher, f"{watcher.kind} detection", stats, stop),
                               name=f"vigil-{watcher.kind}s")
    task.add_done_callback(lambda t: _task_done(rt, what, stop, t))
    rt.stops.append(stop)
    try:
        yield task
    finally:
        stop.set()
        finished = await _finish(task, 30.0, what)
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


async def _detect(checker: EventWatcher[Any, Any], what: str, stats: OutageLoopStats,
                  stop: asyncio.Event) -> None:
    """A detector (outages every quarter heartbeat, slowdowns every quarter interval) every
    ``step`` seconds until ``stop``; a failed pass (database away) is counted, never fatal."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                events = await checker.check(time.time(), session)
            except Exception as exc:
                stats.failures += 1
                stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("%s pass failed: %s", what, stats.last_error)
            else:
                stats.passes += 1
                stats.last_success = time.time()
                stats.ongoing = sum(1 for e in events if e.ongoing)
                stats.last_error = ""
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), checker.config.step)
