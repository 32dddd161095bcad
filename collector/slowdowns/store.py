"""Throughput samples and slowdown events in the collector's store (SQLite or PostgreSQL).

Two tables beside the store's own, both derived data that can be rebuilt from the stored
measurements at any time, so they are created on first use with portable SQL (like the
outage events) rather than through the store's migration chain:

``throughput_samples``
    one row per stored ``throttling`` measurement: who, which network and country, when
    (the probe's ``measurement_start_time``) and its benign reference rate (NULL when the
    record has none: missing data, kept so the record is not read again).  Filled
    incrementally from the measurements received since the newest sample (minus an overlap
    for batches that commit out of order), so a pass reads each record once.
``slowdown_events``
    the detector's events, keyed by ``event_id`` (recomputing updates, never duplicates),
    with the webhook notifications already delivered (``collector.events.table``).
"""

from __future__ import annotations

import json
from typing import Any

from collector.events.table import EventTable, create_tables, sql_store
from collector.slowdowns.detector import Observation, SlowdownEvent
from collector.slowdowns.rates import benign_rate_bps

TEST_NAME = "throttling"
OVERLAP_S = 600.0  # re-read this much before the newest sample: batches commit out of order
PAGE = 500
NIL_UUID = "00000000-0000-0000-0000-000000000000"  # sorts before every measurement id

DDL = (
    "CREATE TABLE IF NOT EXISTS throughput_samples ("
    " measurement_id TEXT PRIMARY KEY,"
    " probe_id TEXT NOT NULL,"
    " probe_asn TEXT NOT NULL,"
    " probe_cc TEXT NOT NULL,"
    " t DOUBLE PRECISION NOT NULL,"
    " received DOUBLE PRECISION NOT NULL,"
    " rate_bps DOUBLE PRECISION)",
    "CREATE INDEX IF NOT EXISTS throughput_samples_t ON throughput_samples (t)",
    "CREATE INDEX IF NOT EXISTS throughput_samples_received ON throughput_samples (received)",
)


def sample_of(payload: bytes) -> float | None:
    """The benign reference rate in one stored record's bytes (None: none, or unreadable)."""
    try:
        record = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    return benign_rate_bps(record.get("test_keys"))


class SlowdownStore(EventTable[SlowdownEvent]):
    """The samples, and the events (``EventTable``: save, events, notified, retract...)."""

    def __init__(self, store: Any) -> None:
        create_tables(sql_store(store, "slowdowns"), DDL)
        super().__init__(store, "slowdown_events", SlowdownEvent, what="slowdowns")

    # ---- samples ----------------------------------------------------------------------------
    def sync_samples(self, max_pages: int = 10_000) -> int:
        """Extract the rates of the throttling records received since the last sync; returns
        how many records were read.  Keyset pages on (received_at, measurement_id), with the
        database's own values as the cursor so ties are exact."""
        s = self.store
        newest = s._query("SELECT MAX(received) FROM throughput_samples")[0][0]
        since = float(newest) - OVERLAP_S if newest is not None else 0.0
        cursor: tuple[Any, str] = (s._now_param(max(since, 0.0)), NIL_UUID)
        received = s._epoch("received_at")
        start = s._epoch("start_time")
        read = 0
        for _ in range(max_pages):
            rows = s._query(
                f"SELECT measurement_id, probe_id, probe_asn, probe_cc, {start}, {received}, "
                "payload, received_at FROM measurements WHERE test_name = ? "
                "AND received_at >= ? AND (received_at > ? OR measurement_id > ?) "
                "ORDER BY received_at, measurement_id LIMIT ?",
                (TEST_NAME, cursor[0], cursor[0], cursor[1], PAGE),
            )
            if not rows:
                break
            params = [
                (str(mid), str(pid), str(asn or ""), str(cc or ""), float(t), float(rcv),
                 sample_of(s._blob(payload)))
                for mid, pid, asn, cc, t, rcv, payload, _ in rows
            ]
            with s._transaction() as cur:
                cur.executemany(
                    "INSERT INTO throughput_samples (measurement_id, probe_id, probe_asn, "
                    "probe_cc, t, received, rate_bps) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (measurement_id) DO NOTHING",
                    params,
                )
            read += len(params)
            last = rows[-1]
            cursor = (last[7], str(last[0]))
            if len(rows) < PAGE:
                break
        return read

    def sample_count(self) -> int:
        return int(self.store._query("SELECT COUNT(*) FROM throughput_samples")[0][0])

    def observations(self, since: float, until: float) -> list[Observation]:
        """Every usable rate measured in [since, until), oldest first."""
        rows = self.store._query(
            "SELECT probe_id, probe_asn, probe_cc, t, rate_bps FROM throughput_samples "
            "WHERE t >= ? AND t < ? AND rate_bps IS NOT NULL ORDER BY t",
            (float(since), float(until)),
        )
        return [Observation(str(p), str(a), str(c), float(t), float(r))
                for p, a, c, t, r in rows]
