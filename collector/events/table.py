"""A detector's events kept in the collector's store (SQLite or PostgreSQL), one table per kind.

Events are derived data: the detector can recompute them from the store at any time
(``event_id`` is stable, so a recomputed event updates the stored one instead of duplicating
it).  So the tables are created on first use with portable SQL rather than through the store's
migration chain, and dropping one loses nothing that cannot be rebuilt.  They use the store's
own transaction and query hooks (``SqlStore._transaction``/``_query``) so the same code serves
both backends.

Each table (``outage_events``, ``slowdown_events``)::

    event_id TEXT PRIMARY KEY, grp TEXT, start_ts, end_ts (NULL while ongoing), updated_ts,
    notified TEXT (the webhook notifications delivered: "opened", "closed"), body TEXT (JSON)

``notified`` remembers which notifications were delivered, so a restarted watcher does not
notify operators twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any, Generic, Protocol, Self, TypeVar, cast

from collector.store.aio import ThreadStores
from collector.store.base import StoreError, StoreUnavailable
from collector.store.sqlbase import SqlStore


class Stored(Protocol):
    """What the table needs of an event: its keys and its JSON both ways."""

    @property
    def event_id(self) -> str: ...

    @property
    def group(self) -> str: ...

    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float | None: ...

    def to_json(self) -> dict[str, Any]: ...

    @classmethod
    def from_json(cls, d: Any) -> Self: ...


E = TypeVar("E", bound=Stored)


def sql_store(store: Any, what: str) -> SqlStore:
    """The store, when it is an SQL one (the only kind that has room for these tables); the
    API's stores per thread (collector.store.aio.ThreadStores) when theirs are."""
    kind = store.first if isinstance(store, ThreadStores) else store
    if not isinstance(kind, SqlStore):
        raise StoreError(f"{what} need an SQL store, not {type(kind).__name__}")
    return cast(SqlStore, store)


def create_tables(store: SqlStore, statements: Sequence[str]) -> None:
    """Run ``CREATE ... IF NOT EXISTS`` statements in one transaction, tolerating a second
    collector doing the same at the same moment."""
    for attempt in range(3):
        try:
            with store._transaction() as cur:
                for statement in statements:
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


def event_table_ddl(table: str) -> tuple[str, str]:
    if not table.isidentifier():
        raise ValueError(f"not a table name: {table!r}")
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        " event_id TEXT PRIMARY KEY,"
        " grp TEXT NOT NULL,"
        " start_ts DOUBLE PRECISION NOT NULL,"
        " end_ts DOUBLE PRECISION,"
        " updated_ts DOUBLE PRECISION NOT NULL,"
        " notified TEXT NOT NULL DEFAULT '',"
        " body TEXT NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {table}_start ON {table} (start_ts)",
    )


class EventTable(Generic[E]):
    """The events of one kind (``record``) in ``table``, created on first use.

    ``ties_by_id``: events with the same start are listed in ``event_id`` order (else in the
    database's own order, as the outage listing always has been).
    """

    def __init__(self, store: Any, table: str, record: type[E], *, what: str,
                 ties_by_id: bool = True) -> None:
        self.store = sql_store(store, what)
        self.table = table
        self.record = record
        self._order = "start_ts DESC, event_id" if ties_by_id else "start_ts DESC"
        create_tables(self.store, event_table_ddl(table))

    def save(self, event: E) -> None:
        body = json.dumps(event.to_json(), sort_keys=True)
        with self.store._transaction() as cur:
            cur.execute(
                f"INSERT INTO {self.table} (event_id, grp, start_ts, end_ts, updated_ts, body) "
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
            cur.execute(f"UPDATE {self.table} SET notified = ? WHERE event_id = ?",
                        (",".join(sorted({*done, what})), event_id))

    def notified(self, event_id: str) -> set[str]:
        rows = self.store._query(f"SELECT notified FROM {self.table} WHERE event_id = ?",
                                 (event_id,))
        if not rows or not rows[0][0]:
            return set()
        return set(str(rows[0][0]).split(","))

    def events(self, since: float | None = None, group: str | None = None,
               ongoing: bool = False, limit: int = 1000) -> list[E]:
        """Stored events, newest start first (``since``: still open at or after it)."""
        sql = f"SELECT body FROM {self.table} WHERE 1 = 1"
        params: list[Any] = []
        if since is not None:
            sql += " AND (end_ts IS NULL OR end_ts >= ?)"
            params.append(float(since))
        if group is not None:
            sql += " AND grp = ?"
            params.append(group)
        if ongoing:
            sql += " AND end_ts IS NULL"
        sql += f" ORDER BY {self._order} LIMIT ?"
        params.append(int(limit))
        return self._records(self.store._query(sql, params))

    def known_before(self, t: float) -> list[E]:
        """Events that began before ``t`` and were open at it or after (seed for a pass)."""
        return self._records(self.store._query(
            f"SELECT body FROM {self.table} WHERE start_ts < ? AND "
            "(end_ts IS NULL OR end_ts >= ?)", (float(t), float(t))))

    def retract(self, event_ids: Sequence[str]) -> None:
        """Forget events a later pass no longer finds (late data changed how they began)."""
        with self.store._transaction() as cur:
            for eid in event_ids:
                cur.execute(f"DELETE FROM {self.table} WHERE event_id = ?", (eid,))

    def _records(self, rows: Sequence[Sequence[Any]]) -> list[E]:
        return [self.record.from_json(json.loads(r[0])) for r in rows]
