"""Run the slowdown detector over the store, keep its events, notify operators (I/O).

One ``check`` pass: extract the new throttling records' benign rates into
``throughput_samples``, read the samples of the evaluated range plus one baseline window
before it, run the pure detector (``collector.slowdowns.detector``), save the events and POST
each newly opened or closed one to the webhooks.  ``watch`` repeats it every quarter interval.

Webhook: ``POST <url>`` with ``Content-Type: application/json`` and the body
``{"type": "slowdown.opened" | "slowdown.closed", "event": {...SlowdownEvent.to_json()...}}``;
the same delivery rules as the outage notifications (``collector.events.watch``: 2xx =
delivered, at most ``max_attempts`` tries per notification, remembered in the store so a
restart does not notify twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from collector.events.watch import EventWatcher
from collector.slowdowns import detector as det
from collector.slowdowns.store import SlowdownStore


@dataclass(frozen=True, slots=True)
class SlowdownWatchConfig:
    detector: det.SlowdownConfig = field(default_factory=det.SlowdownConfig)
    webhooks: tuple[str, ...] = ()
    webhook_timeout: float = 10.0
    max_attempts: int = 5
    # the range judged on every pass: long enough for late uploads and a whole event
    lookback: float = 2 * 86400.0

    @property
    def step(self) -> float:
        return max(1.0, self.detector.interval / 4)


@dataclass(frozen=True, slots=True)
class PassResult:
    events: list[det.SlowdownEvent]
    signal: dict[str, list[det.SignalPoint]]


def detect_now(store: SlowdownStore, now: float, cfg: SlowdownWatchConfig) -> PassResult:
    """One detection over the store (blocking: run it on a worker thread)."""
    dcfg = cfg.detector
    store.sync_samples()
    since = now - max(cfg.lookback, 3 * dcfg.interval)
    observations = store.observations(since - dcfg.baseline_window - dcfg.interval, now)
    known = store.known_before(det.bin_of(since, dcfg.interval) * dcfg.interval)
    events, signal = det.detect(observations, since, now, dcfg, known)
    found = {e.event_id for e in events}
    lo = det.bin_of(since, dcfg.interval) * dcfg.interval
    stale = [e.event_id for e in store.events(since=lo, limit=10_000)
             if e.event_id not in found and e.ongoing and e.start >= lo + dcfg.interval]
    if stale:  # late records moved an opening: the recomputed event replaces it
        store.retract(stale)
    for e in events:
        store.save(e)
    return PassResult(events, signal)


class SlowdownWatcher(EventWatcher[det.SlowdownEvent, SlowdownWatchConfig]):
    kind = "slowdown"
    events_store: SlowdownStore

    def __init__(self, store: Any, config: SlowdownWatchConfig,
                 events_store: SlowdownStore | None = None) -> None:
        super().__init__(config, events_store or SlowdownStore(store))

    def detect(self, now: float) -> list[det.SlowdownEvent]:
        return detect_now(self.events_store, now, self.config).events


MAX_SIGNAL_BINS = 10_000


def group_signal(store: SlowdownStore, group: str, since: float, until: float,
                 cfg: det.SlowdownConfig, *, sync: bool = False) -> list[det.SignalPoint]:
    """One group's throughput signal per bin from ``since`` to ``until`` (bounded)."""
    if (until - since) / cfg.interval > MAX_SIGNAL_BINS:
        raise ValueError(f"more than {MAX_SIGNAL_BINS} intervals: shorten the range")
    if sync:
        store.sync_samples()
    observations = [o for o in store.observations(
        since - cfg.baseline_window - cfg.interval, until) if group in o.groups()]
    known = store.known_before(det.bin_of(since, cfg.interval) * cfg.interval)
    _, series = det.detect(observations, since, until, cfg, known)
    return series.get(group, [])
