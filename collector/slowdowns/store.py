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
    with the webhook notifications already delivered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from collector.slowdowns.detector import Observation, SlowdownEvent
from collector.slowdowns.rates import benign_rate_bps
from collector.store.base import StoreError, StoreUnavailable
from collector.store.sqlbase import SqlStore

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
    "CREATE TABLE IF NOT EXISTS slowdown_events ("
    " event_id TEXT PRIMARY KEY,"
    " grp TEXT NOT NULL,"
    " start_ts DOUBLE PRECISION NOT NULL,"
    " end_ts DOUBLE PRECISION,"
    " updated_ts DOUBLE PRECISION NOT NULL,"
    " notified TEXT NOT NULL DEFAULT '',"
    " body TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS slowdown_events_start ON slowdown_events (start_ts)",
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


class SlowdownStore:
    def __init__(self, store: Any) -> None:
        if not isinstance(store, SqlStore):
            raise StoreError(f"slowdowns need an SQL store, not {type(store).__name__}")
        self.store = store
        for attempt in range(3):
            try:
                with store._transaction() as cur:
                    for statement in DDL:
                        cur.execute(statement)
                return
            except StoreUnavailable:
                raise
            except StoreError:
                # two collectors creating the tables at once: PostgreSQL lets one of the
                # concurrent CREATE ... IF NOT EXISTS fail; the tables exist on the next try
                if attempt == 2:
                    raise
                time.sleep(0.1 * (attempt + 1))

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

    # ---- events -----------------------------------------------------------------------------
    def save(self, event: SlowdownEvent) -> None:
        body = json.dumps(event.to_json(), sort_keys=True)
        with self.store._transaction() as cur:
            cur.execute(
                "INSERT INTO slowdown_events (event_id, grp, start_ts, end_ts, updated_ts, body) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO UPDATE SET "
                "grp = excluded.grp, start_ts = excluded.start_ts, end_ts = excluded.end_ts, "
                "updated_ts = excluded.updated_ts, body = excluded.body",
                (event.event_id, event.group, event.start, event.end, time.time(), body),
            )

    def mark_notified(self, event_id: str, what: str) -> None:
        done = self.notified(event_id)
        if what in done:
            return
        with self.store._transaction() as cur:
            cur.execute("UPDATE slowdown_events SET notified = ? WHERE event_id = ?",
                        (",".join(sorted({*done, what})), event_id))

    def notified(self, event_id: str) -> set[str]:
        rows = self.store._query("SELECT notified FROM slowdown_events WHERE event_id = ?",
                                 (event_id,))
        if not rows or not rows[0][0]:
            return set()
        return set(str(rows[0][0]).split(","))

    def events(self, since: float | None = None, group: str | None = None,
             ongoing: bool = False, limit: int = 1000) -> list[SlowdownEvent]:
        """Stored events, newest start first (``since``: still open at or after it)."""
        sql = "SELECT body FROM slowdown_events WHERE 1 = 1"
        params: list[Any] = []
        if since is not None:
            sql += " AND (end_ts IS NULL OR end_ts >= ?)"
            params.append(float(since))
        if group is not None:
            sql += " AND grp = ?"
            params.append(group)
        if ongoing:
            sql += " AND end_ts IS NULL"
        sql += " ORDER BY start_ts DESC, event_id LIMIT ?"
        params.append(int(limit))
        return [SlowdownEvent.from_json(json.loads(r[0])) for r in self.store._query(sql, params)]

    def known_before(self, t: float) -> list[SlowdownEvent]:
        """Events that began before ``t`` and were open at it or after (seed for a pass)."""
        rows = self.store._query(
            "SELECT body FROM slowdown_events WHERE start_ts < ? AND "
            "(end_ts IS NULL OR end_ts >= ?)", (float(t), float(t)))
        return [SlowdownEvent.from_json(json.loads(r[0])) for r in rows]

    def retract(self, event_ids: Sequence[str]) -> None:
        """Forget events a later pass no longer finds (late data changed the opening bin)."""
        with self.store._transaction() as cur:
            for eid in event_ids:
                cur.execute("DELETE FROM slowdown_events WHERE event_id = ?", (eid,))
