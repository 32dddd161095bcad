"""Run the slowdown detector over the store, keep its events, notify operators (I/O).

One ``check`` pass: extract the new throttling records' benign rates into
``throughput_samples``, read the samples of the evaluated range plus one baseline window
before it, run the pure detector (``collector.slowdowns.detector``), save the events and POST
each newly opened or closed one to the webhooks.  ``watch`` repeats it every quarter interval.

Webhook: ``POST <url>`` with ``Content-Type: application/json`` and the body
``{"type": "slowdown.opened" | "slowdown.closed", "event": {...SlowdownEvent.to_json()...}}``;
the same delivery rules as the outage notifications (2xx = delivered, at most ``max_attempts``
tries per notification, remembered in the store so a restart does not notify twice).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from collector.outages.watch import post_webhook
from collector.slowdowns import detector as det
from collector.slowdowns.store import SlowdownStore

log = logging.getLogger("vigil.slowdowns")


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


class SlowdownWatcher:
    def __init__(self, store: Any, config: SlowdownWatchConfig,
                 events_store: SlowdownStore | None = None) -> None:
        self.config = config
        self.events_store = events_store or SlowdownStore(store)
        self.attempts: dict[tuple[str, str], int] = {}

    async def check(self, now: float, session: aiohttp.ClientSession | None = None
                    ) -> list[det.SlowdownEvent]:
        result = await asyncio.to_thread(detect_now, self.events_store, now, self.config)
        if self.config.webhooks and session is not None:
            await self._notify(result.events, session)
        return result.events

    async def _notify(self, events: Sequence[det.SlowdownEvent],
                      session: aiohttp.ClientSession) -> None:
        es = self.events_store
        for e in events:
            kinds = ["opened"] + ([] if e.ongoing else ["closed"])
            done = await asyncio.to_thread(es.notified, e.event_id)
            for what in kinds:
                key = (e.event_id, what)
                if what in done or self.attempts.get(key, 0) >= self.config.max_attempts:
                    continue
                self.attempts[key] = self.attempts.get(key, 0) + 1
                payload = {"type": f"slowdown.{what}", "event": e.to_json()}
                results = [await post_webhook(session, url, payload,
                                              self.config.webhook_timeout)
                           for url in self.config.webhooks]
                if all(results):
                    await asyncio.to_thread(es.mark_notified, e.event_id, what)

    async def watch(self, *, max_passes: int, stop: asyncio.Event | None = None) -> None:
        """Check every ``step`` seconds, ``max_passes`` times at most (or until ``stop``)."""
        import time

        stop = stop or asyncio.Event()
        async with aiohttp.ClientSession() as session:
            for n in range(max_passes):
                try:
                    await self.check(time.time(), session)
                except Exception:  # one bad pass must not end the watch
                    log.exception("slowdown detection pass failed")
                if n == max_passes - 1:
                    return
                try:
                    await asyncio.wait_for(stop.wait(), self.config.step)
                    return
                except TimeoutError:
                    continue


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
