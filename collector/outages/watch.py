"""Run the outage detector over the store, persist events, notify operators (I/O).

One ``check`` pass: read the enrolled probes (with their network and country from their latest
measurements) and every sighting of the last ``baseline_window`` from the store, run the pure
detector (``collector.outages.detector``),
confirm events with the agents' own ``connectivity`` outage
records, save the events and POST each newly opened or closed event to the webhooks.  ``watch``
repeats it every ``step`` (a quarter of the heartbeat interval), which with the detector's
timeout finds a shutdown within two heartbeat intervals.

Webhook: ``POST <url>`` with ``Content-Type: application/json`` and the body
``{"type": "outage.opened" | "outage.closed", "event": {...OutageEvent.to_json()...}}``;
a 2xx answer counts as delivered, anything else is retried at the next pass (bounded: the
delivery is attempted at most ``max_attempts`` times per notification); see
``collector.events.watch``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from collector.events.watch import EventWatcher
from collector.outages import detector as det
from collector.outages.store import OutageEventStore


@dataclass(frozen=True, slots=True)
class WatchConfig:
    detector: det.DetectorConfig = field(default_factory=det.DetectorConfig)
    webhooks: tuple[str, ...] = ()
    webhook_timeout: float = 10.0
    max_attempts: int = 5

    @property
    def step(self) -> float:
        return self.detector.step


def probes_from_store(store: Any) -> list[det.Probe]:
    activity = {a.probe_id: a for a in store.last_seen()}
    out = []
    for p in store.list_probes():
        a = activity.get(p.probe_id)
        out.append(det.Probe(
            probe_id=p.probe_id,
            asn=(a.probe_asn or "") if a is not None else "",
            cc=(a.probe_cc or "") if a is not None else "",
            enrolled_at=p.enrolled_at.timestamp(),
            revoked_at=None if p.revoked_at is None else p.revoked_at.timestamp(),
        ))
    return out


def agent_outages(store: Any, since: float) -> list[det.AgentOutage]:
    """The agents' own closed outages, from their ``connectivity`` records."""
    from collector.store.base import Filter

    where = Filter(since=datetime.fromtimestamp(since, UTC), test_name="connectivity")
    out: list[det.AgentOutage] = []
    for summary in store.recent(limit=5000, where=where):
        stored = store.get_measurement(summary.measurement_id)
        if stored is None:
            continue
        try:
            keys = json.loads(stored.payload)["test_keys"]
            outage = keys.get("outage")
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if not isinstance(outage, dict) or not outage.get("start"):
            continue
        try:
            start = _parse_time(outage["start"])
            end = _parse_time(outage["end"]) if outage.get("end") else None
        except ValueError:
            continue
        kind = ",".join(outage.get("states", [])) or "offline"
        out.append(det.AgentOutage(summary.probe_id, start, end, kind))
    return out


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def detect_now(store: Any, now: float, cfg: det.DetectorConfig) -> list[det.OutageEvent]:
    since = now - cfg.baseline_window
    probes = probes_from_store(store)
    raw = store.sightings(datetime.fromtimestamp(since - cfg.online_timeout, UTC),
                          datetime.fromtimestamp(now + 1, UTC),
                          bucket_seconds=max(1, int(cfg.step)))
    sightings = [det.Sighting(s.probe_id, s.t, s.kind) for s in raw]
    series = det.signal_series(probes, sightings, since, now, cfg)
    events = det.detect(series, det.Presence(sightings), cfg)
    if events:
        records = agent_outages(store, since)
        events = [det.confirm(e, records) for e in events]
    return events


class Watcher(EventWatcher[det.OutageEvent, WatchConfig]):
    kind = "outage"

    def __init__(self, store: Any, config: WatchConfig,
                 events_store: OutageEventStore | None = None) -> None:
        super().__init__(config, events_store or OutageEventStore(store))
        self.store = store

    def detect(self, now: float) -> list[det.OutageEvent]:
        events = detect_now(self.store, now, self.config.detector)
        for e in events:
            self.events_store.save(e)
        return events
