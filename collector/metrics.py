"""Prometheus metrics of ``vigil-collector serve`` (``GET /metrics``).

Three sources, each read when Prometheus scrapes, never on the hot path:

* the ingest's in-process counters (:class:`collector.ingest.pipeline.IngestStats`): what this
  process received, stored, acknowledged and rejected since it started;
* the store, through a snapshot the ``/metrics`` handler takes just before rendering:
  persisted rejection counters (all processes, all time), enrolled probes by last status and
  the number of stored measurements.  The snapshot uses only O(probes) queries (per-probe
  activity rows), never a ``COUNT(*)`` over the measurements table, so scraping a large
  archive every 15 s costs nothing;
* the HTTP layer (requests by route and status, latency) and the outage and slowdown
  detectors' passes.

Each app has its own :class:`CollectorRegistry`, not prometheus_client's global one, so two
apps in one process (tests) never collide.  A store that cannot be read gives
``vigil_store_up 0`` and a successful scrape: the exporter reports the failure rather than
failing the scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector import __version__
from collector.ingest.pipeline import IngestStats
from collector.store.base import Store

PROBE_STATES = ("online", "offline", "unknown", "never")


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """What the store says at scrape time (``ok`` false: it could not be read)."""

    ok: bool
    measurements: int = 0
    probes: dict[str, int] = field(default_factory=dict)  # enrolled, by last status
    revoked: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    missing: int = 0  # measurements numbered by probes that never arrived (all probes)
    taken_at: float = 0.0


def store_snapshot(store: Store) -> StoreSnapshot:
    """Read the snapshot (blocking: run it on the store's thread)."""
    probes = dict.fromkeys(PROBE_STATES, 0)
    revoked = 0
    measurements = 0
    for a in store.last_seen():
        measurements += a.measurements
        if a.revoked:
            revoked += 1
            continue
        state = a.status if a.status in ("online", "offline") else "unknown"
        if a.status is None and a.last_received_at is None:
            state = "never"
        probes[state] += 1
    return StoreSnapshot(
        ok=True,
        measurements=measurements,
        probes=probes,
        revoked=revoked,
        rejections=store.rejection_counts(),
        missing=sum(g.missing for g in store.delivery_gaps().values()),
        taken_at=time.time(),
    )


@dataclass
class OutageLoopStats:
    """The background outage detector's own counters."""

    enabled: bool = False
    passes: int = 0
    failures: int = 0
    last_success: float | None = None
    ongoing: int = 0
    last_error: str = ""


@dataclass
class Sources:
    """Where the collector reads live values; the app fills these in as it starts."""

    ingest: Callable[[], tuple[IngestStats, bool] | None] = lambda: None  # (stats, connected)
    outages: Callable[[], OutageLoopStats] = OutageLoopStats
    slowdowns: Callable[[], OutageLoopStats] = OutageLoopStats  # the same counters
    snapshot: StoreSnapshot = field(default_factory=lambda: StoreSnapshot(ok=False))


class _VigilCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterable[Metric]:
        yield _by_label(GaugeMetricFamily, "vigil_collector_info", "Collector version",
                        "version", {__version__: 1})
        yield from self._ingest()
        yield from self._store()
        yield from self._detector(self.sources.outages(), "outage", "outages")
        yield from self._detector(self.sources.slowdowns(), "slowdown", "slowdowns")

    def _ingest(self) -> Iterable[Metric]:
        live = self.sources.ingest()
        yield _one(GaugeMetricFamily, "vigil_ingest_enabled",
                   "1 if this process runs the ingest", 1 if live is not None else 0)
        if live is None:
            return
        stats, connected = live
        yield _one(GaugeMetricFamily, "vigil_ingest_connected",
                   "1 while subscribed to the broker", 1 if connected else 0)
        for name, value, doc in (
            ("received", stats.received, "MQTT messages received by this process"),
            ("stored", stats.stored, "new measurements stored by this process"),
            ("statuses", stats.statuses, "probe status messages stored"),
            ("acked", stats.acked, "messages acknowledged to the broker after storing"),
            ("batches", stats.batches, "store transactions committed"),
            ("store_retries", stats.store_retries, "store writes retried (database down)"),
            ("connections", stats.connections, "broker connections made"),
            ("receipts", stats.receipts, "delivery receipts published to probes after commits"),
            ("receipts_skipped", stats.receipts_skipped,
             "receipts not published (broker connection gone; the probe sends again)"),
        ):
            yield _one(CounterMetricFamily, f"vigil_ingest_{name}", doc, value)
        yield _by_label(CounterMetricFamily, "vigil_ingest_rejected",
                        "messages rejected by this process, by reason", "reason",
                        stats.rejected)
        yield _by_label(CounterMetricFamily, "vigil_ingest_start_placed",
                        "records stored whose claimed start time came from a wrong clock, by "
                        "how they were placed (age: the probe's boot clock, arrival)", "how",
                        stats.placed)

    def _store(self) -> Iterable[Metric]:
        snap = self.sources.snapshot
        yield _one(GaugeMetricFamily, "vigil_store_up", "1 if the store answered this scrape",
                   1 if snap.ok else 0)
        if not snap.ok:
            return
        yield _one(GaugeMetricFamily, "vigil_measurements_stored", "measurements in the store",
                   snap.measurements)
        yield _by_label(GaugeMetricFamily, "vigil_probes",
                        "enrolled probes by last reported status", "status", snap.probes)
        yield _one(GaugeMetricFamily, "vigil_probes_revoked", "revoked probe keys", snap.revoked)
        yield _one(GaugeMetricFamily, "vigil_measurements_missing",
                   "measurements probes numbered (probe_seq) that never reached the store",
                   snap.missing)
        yield _by_label(CounterMetricFamily, "vigil_rejections",
                        "messages rejected by all collectors (persisted), by reason", "reason",
                        snap.rejections)

    def _detector(self, o: OutageLoopStats, what: str, events: str) -> Iterable[Metric]:
        """A background detector's counters (``vigil_<what>_detector_*``, ``..._ongoing``)."""
        yield _one(GaugeMetricFamily, f"vigil_{what}_detector_enabled",
                   f"1 if this process runs the {what} detector", 1 if o.enabled else 0)
        if not o.enabled:
            return
        for name, value, doc in (
            ("passes", o.passes, f"{what} detection passes run"),
            ("failures", o.failures, f"{what} detection passes that failed"),
        ):
            yield _one(CounterMetricFamily, f"vigil_{what}_detector_{name}", doc, value)
        yield _one(GaugeMetricFamily, f"vigil_{events}_ongoing", f"{what} events still open",
                   o.ongoing)
        if o.last_success is not None:
            yield _one(GaugeMetricFamily, f"vigil_{what}_detector_last_success_timestamp_seconds",
                       "when the last detection pass succeeded", o.last_success)


_Family = type[CounterMetricFamily] | type[GaugeMetricFamily]


def _one(family: _Family, name: str, doc: str, value: float) -> Metric:
    """A metric with a single unlabelled sample."""
    metric = family(name, doc)
    metric.add_metric([], value)
    return metric


def _by_label(family: _Family, name: str, doc: str, label: str,
              counts: Mapping[str, float]) -> Metric:
    """One sample per key of ``counts`` (sorted, so scrapes list them in a stable order)."""
    metric = family(name, doc, labels=[label])
    for key, value in sorted(counts.items()):
        metric.add_metric([key], value)
    return metric


class Metrics:
    """One app's registry: HTTP instruments plus the collector of live values."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sources = Sources()
        self.requests = Counter(
            "vigil_http_requests", "HTTP requests served", ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vigil_http_request_duration_seconds", "HTTP request handling time", ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.registry.register(_VigilCollector(self.sources))
        # prometheus_client's handler: content negotiation (OpenMetrics) and ?name[] filters.
        self.handler = make_aiohttp_handler(self.registry)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
