"""The running collector service's shared state: its settings, runtime status and app keys.

``collector.service`` builds the application and owns the background work; the API
(``collector.api``) reads this state to answer ``/healthz`` and ``/metrics``.  Both import it,
neither imports the other's internals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from aiohttp import web

from agent.errors import VigilError
from collector.config import CollectorConfig
from collector.ingest.pipeline import Ingest
from collector.metrics import Metrics, OutageLoopStats
from collector.outages.detector import DetectorConfig
from collector.outages.store import OutageEventStore
from collector.slowdowns.detector import SlowdownConfig
from collector.store.aio import AsyncStore

log = logging.getLogger("vigil.collector.serve")

STATIC_DIR = Path(__file__).parent / "api" / "static"


@dataclass(frozen=True)
class ServeSettings:
    """What ``create_app`` needs: the collector config and which background work to run."""

    config: CollectorConfig
    ingest: bool = True  # run the MQTT ingest in this process (--no-ingest: API only)
    outages: bool = True  # run the outage detector (also needs [outages] enabled)
    slowdowns: bool = True  # run the slowdown detector (also needs [slowdowns] enabled)
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

    @property
    def slowdown_detector(self) -> SlowdownConfig:
        s = self.config.slowdowns
        return SlowdownConfig(
            interval=s.interval_s,
            baseline_window=s.window_s,
            alert_fraction=s.alert_fraction,
            quorum=s.quorum,
            recover_quorum=min(s.quorum, SlowdownConfig().recover_quorum),
            min_probes=s.min_probes,
        )


T = TypeVar("T")


@dataclass
class ApiTable(Generic[T]):
    """Tables beside the store's own (``make(store)`` opens them, creating them when absent),
    opened on the API's store connection at their first use."""

    make: Callable[[Any], T]
    _opened: T | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, app: web.Application) -> T:
        async with self._lock:
            if self._opened is None:
                store = app[STORE]
                self._opened = await store.call(self.make, store.store)
            return self._opened


@dataclass
class Runtime:
    """Mutable state of a running app: background work and how it is doing."""

    started_at: float = field(default_factory=time.time)
    ingest: Ingest | None = None
    outages: OutageLoopStats = field(default_factory=OutageLoopStats)
    slowdowns: OutageLoopStats = field(default_factory=OutageLoopStats)  # same counters
    # outage events, on the API's store connection
    events: ApiTable[OutageEventStore] = field(
        default_factory=lambda: ApiTable(OutageEventStore))
    stops: list[asyncio.Event] = field(default_factory=list)
    failure: str | None = None  # why a background task died
    error: BaseException | None = None  # and the exception, if it raised one
    failed: asyncio.Event = field(default_factory=asyncio.Event)

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
SLOWDOWN_TASK = web.AppKey("vigil_slowdown_task", asyncio.Task[None])


async def events_store(app: web.Application) -> OutageEventStore:
    """The outage events table on the API's connection (created on first use)."""
    return await app[RUNTIME].events.get(app)


