"""Outage events kept in the collector's store (SQLite or PostgreSQL), beside its own tables.

Events are derived data: the detector can recompute them from the store's sightings at any time
(``event_id`` is a hash of the group and the start, so a recomputed event updates the stored one
instead of duplicating it).  So the table is created on first use with portable SQL rather than
through the store's migration chain, and dropping it loses nothing that cannot be rebuilt.  It
uses the store's own transaction and query hooks (``SqlStore._transaction``/``_query``) so the
same code serves both backends.

``notified`` remembers which webhook notifications ("opened", "closed") were delivered, so a
restarted watcher does not notify operators twice.
"""

from __future__ import annotations

import json
import time
from typing import Any

from collector.outages.detector import OutageEvent
from collector.store.base import StoreError
from collector.store.sqlbase import SqlStore

DDL = (
    "CREATE TABLE IF NOT EXISTS outage_events ("
    " event_id TEXT PRIMARY KEY,"
    " grp TEXT NOT NULL,"
    " start_ts DOUBLE PRECISION NOT NULL,"
    " end_ts DOUBLE PRECISION,"
    " updated_ts DOUBLE PRECISION NOT NULL,"
    " notified TEXT NOT NULL DEFAULT '',"
    " body TEXT NOT NULL)"
)


class OutageEventStore:
    def __init__(self, store: Any) -> None:
        if not isinstance(store, SqlStore):
            raise StoreError(f"outage events need an SQL store, not {type(store).__name__}")
        self.store = store
        with store._transaction() as cur:
            cur.execute(DDL)
            cur.execute(
                "CREATE INDEX IF NOT EXISTS outage_events_start ON outage_events (start_ts)"
            )

    def save(self, event: OutageEvent) -> None:
        body = json.dumps(event.to_json(), sort_keys=True)
        with self.store._transaction() as cur:
            cur.execute(
                "INSERT INTO outage_events (event_id, grp, start_ts, end_ts, updated_ts, body) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO UPDATE SET "
                "grp = excluded.grp, start_ts = excluded.start_ts, end_ts = excluded.end_ts, "
                "updated_ts = excluded.updated_ts, body = excluded.body",
                (event.event_id, event.group, event.start, event.end, time.time(), body),
            )

    def mark_notified(self, event_id: str, what: str) -> None:
        done = self.notified(event_id)
        if what in done:
            return
        value = ",".join(sorted({*done, what}))
        with self.store._transaction() as cur:
            cur.execute("UPDATE outage_events SET notified = ? WHERE event_id = ?",
                        (value, event_id))

    def notified(self, event_id: str) -> set[str]:
        rows = self.store._query("SELECT notified FROM outage_events WHERE event_id = ?",
                                 (event_id,))
        if not rows or not rows[0][0]:
            return set()
        return set(str(rows[0][0]).split(","))

    def list(self, since: float | None = None, group: str | None = None,
             ongoing: bool = False, limit: int = 1000) -> list[OutageEvent]:
        sql = "SELECT body FROM outage_events WHERE 1 = 1"
        params: list[Any] = []
        if since is not None:
            sql += " AND (end_ts IS NULL OR end_ts >= ?)"
            params.append(float(since))
        if group is not None:
            sql += " AND grp = ?"
            params.append(group)
        if ongoing:
            sql += " AND end_ts IS NULL"
        sql += " ORDER BY start_ts DESC LIMIT ?"
        params.append(int(limit))
        return [OutageEvent.from_json(json.loads(r[0])) for r in self.store._query(sql, params)]
