"""What the SQLite and PostgreSQL stores share: the queries, written once.

Backends differ in connection handling, column types (SQLite keeps times as Unix seconds in
REAL columns, PostgreSQL as timestamptz), migrations and the bulk insert; everything else is
the same SQL text with ``?`` placeholders (rewritten to ``%s`` for psycopg).  Keeping the
queries in one place keeps both backends answering the same questions the same way, which
the parametrised store tests check.
"""

from __future__ import annotations

import abc
import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.wire.topics import measurements_topic
from collector.store import sequences
from collector.store.base import (
    QUARANTINE_DROPPED,
    QUARANTINE_MAX_RAW,
    DeliveryGaps,
    Dimension,
    Filter,
    IngestBatch,
    InsertResult,
    MeasurementRow,
    MeasurementSummary,
    Overview,
    ProbeActivity,
    ProbeExists,
    ProbeRecord,
    ProbeSighting,
    QuarantinedRow,
    QuarantineItem,
    QuarantineLimits,
    StatusUpdate,
    StoredMeasurement,
    StoreError,
    TimelineBucket,
    UnknownProbe,
    utc_from_ts,
)
from collector.store.rollups import (
    AGG_FILTER_COLUMNS,
    DAY,
    DIMENSION_COLUMN,
    FOLDED,
    HOUR,
    NULLABLE,
    PIVOT_COUNTS,
    RAW,
    ROLLUP_DOMAIN,
    AggDimension,
    AggFilter,
    Aggregation,
    Fact,
    Grain,
    Plan,
    RollupTable,
    collect,
    delta_params,
    derive,
    fold,
    fold_statements,
    pivot,
    pivot_columns,
    pivot_params,
    pivot_tail_select,
    pivot_upsert_sql,
    plan,
    tail_select,
    upsert_sql,
)

DIMENSION_COLUMNS: Mapping[Dimension, str] = {
    Dimension.VERDICT: "status",
    Dimension.BLOCKING: "COALESCE(blocking, '')",
    Dimension.COUNTRY: "probe_cc",
    Dimension.NETWORK: "probe_asn",
    Dimension.DOMAIN: "COALESCE(domain, '')",
    Dimension.PROBE: "probe_id",
    Dimension.TEST: "test_name",
}

# Sequence numbers folded into the rollups per transaction, at most (fold_rollups).
FOLD_MAX_SPAN = 50_000

# measurement_id as the schema writes it: lower-case UUID (pages are keyed on it).
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

SUMMARY_COLUMNS = (
    "measurement_id, probe_id, test_name, input, domain, probe_cc, probe_asn, status, "
    "blocking, reason, confirmed, start_time, received_at"
)

MEASUREMENT_COLUMNS = (
    "measurement_id",
    "probe_id",
    "test_name",
    "input",
    "domain",
    "category_code",
    "probe_cc",
    "probe_asn",
    "probe_network_name",
    "status",
    "blocking",
    "reason",
    "confirmed",
    "start_time",
    "received_at",
    "payload_type",
    "payload",
    "signature",
)


def page_index_statements(true: str) -> tuple[str, ...]:
    """Indexes that keep a filtered page of measurements from scanning (``true``: how the
    backend writes "confirmed is true" in a partial index's condition).

    A page is read newest id first and stops when full, so a filter matching few rows of the
    index it walks used to read every row of the country or network looking for them.  The
    rare rows get partial indexes (they cost nothing when an ok measurement is written):
    verdicts other than ok by status, country or network; blocking by technique and time;
    failures by reason; confirmed blocking.  Category is common, so its index is a full one,
    leading with the category then the time, for a page of one category in a time window.
    Each ends with the columns a window checks, so the walk never reads the table.  The
    domain's index is replaced by a covering one.
    """
    return (
        "CREATE INDEX measurements_status_id ON measurements "
        "(status, measurement_id, start_time) WHERE status <> 'ok'",
        "CREATE INDEX measurements_cc_status_id ON measurements "
        "(probe_cc, status, measurement_id, start_time) WHERE status <> 'ok'",
        "CREATE INDEX measurements_asn_status_id ON measurements "
        "(probe_asn, status, measurement_id, start_time) WHERE status <> 'ok'",
        "CREATE INDEX measurements_blocking_time ON measurements "
        "(blocking, start_time, measurement_id, probe_cc) WHERE blocking IS NOT NULL",
        "CREATE INDEX measurements_reason_id ON measurements "
        "(reason, probe_cc, measurement_id, start_time) WHERE reason <> ''",
        "CREATE INDEX measurements_confirmed_id ON measurements "
        f"(measurement_id, probe_cc, start_time) WHERE {true}",
        "CREATE INDEX measurements_category_time ON measurements "
        "(category_code, start_time, measurement_id)",
        # One domain's page and its series (day x blocking) read only this index: it holds
        # the id to order by and the verdict to count, where (domain, start_time) sent
        # every row of the domain to the table (random reads of 4 kB rows).
        "DROP INDEX measurements_domain",
        "CREATE INDEX measurements_domain_time ON measurements "
        "(domain, start_time, measurement_id, status, blocking)",
    )


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step.  Versions only grow; a released migration is never edited."""

    version: int
    description: str
    statements: tuple[str, ...]


def pending_migrations(migrations: Sequence[Migration], current: int) -> list[Migration]:
    """The steps after ``current``; refuses a database newer than this code."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError("migrations must have unique, increasing versions")
    latest = versions[-1] if versions else 0
    if current > latest:
        raise StoreError(
            f"database schema version {current} is newer than this collector knows "
            f"({latest}): upgrade vigil before using this database"
        )
    return [m for m in migrations if m.version > current]


@dataclass(frozen=True, slots=True)
class Activity:
    """Per-probe aggregate of one batch, folded into the probe_activity table."""

    probe_id: str
    last_start: float
    last_received: float
    count: int
    probe_cc: str
    probe_asn: str


def fold_activity(rows: Sequence[MeasurementRow]) -> list[Activity]:
    """Latest times and counts per probe in a batch (the newest measurement names cc/asn)."""
    acc: dict[str, Activity] = {}
    for r in rows:
        a = acc.get(r.probe_id)
        if a is None:
            acc[r.probe_id] = Activity(
                r.probe_id, r.start_ts, r.received_ts, 1, r.probe_cc, r.probe_asn
            )
            continue
        newer = r.start_ts >= a.last_start
        acc[r.probe_id] = Activity(
            r.probe_id,
            max(a.last_start, r.start_ts),
            max(a.last_received, r.received_ts),
            a.count + 1,
            r.probe_cc if newer else a.probe_cc,
            r.probe_asn if newer else a.probe_asn,
        )
    return list(acc.values())


def split_batch_duplicates(
    rows: Sequence[MeasurementRow],
) -> tuple[list[MeasurementRow], list[str], list[str]]:
    """Drop repeats inside one batch: (unique rows, duplicate ids, conflicting ids)."""
    seen: dict[str, MeasurementRow] = {}
    dups: list[str] = []
    conflicts: list[str] = []
    for r in rows:
        first = seen.get(r.measurement_id)
        if first is None:
            seen[r.measurement_id] = r
        elif first.payload == r.payload:
            dups.append(r.measurement_id)
        else:
            conflicts.append(r.measurement_id)
    return list(seen.values()), dups, conflicts


def quarantine_params(item: QuarantineItem) -> tuple[Any, ...]:
    """Columns of one quarantine row: the raw bytes capped, their full size and hash kept."""
    digest = hashlib.sha256(item.raw).hexdigest()
    raw = item.raw[:QUARANTINE_MAX_RAW]
    return (item.reason, item.detail[:1000], item.topic[:512], item.probe_id, len(item.raw),
            digest, raw)


def sighting_kinds(statuses: Sequence[StatusUpdate]) -> list[tuple[StatusUpdate, str]]:
    """Which status messages are sightings: "offline" is a death notice, a cleared retained
    status is nothing, anything else from an enrolled probe is a sign of life."""
    out: list[tuple[StatusUpdate, str]] = []
    for s in statuses:
        if s.state == "offline":
            out.append((s, "offline"))
        elif s.state != "cleared":
            out.append((s, "heartbeat"))
    return out


def rejection_totals(items: Sequence[QuarantineItem], extra: Mapping[str, int]) -> dict[str, int]:
    counts: dict[str, int] = dict(extra)
    for item in items:
        counts[item.reason] = counts.get(item.reason, 0) + 1
    return {k: v for k, v in counts.items() if v > 0}


class SqlStore(abc.ABC):
    """Queries common to both backends; subclasses own the connection and the inserts."""

    url: str
    quarantine_limits: QuarantineLimits = QuarantineLimits()
    # The measurements' sequence number (rollups.fold_statements) and the SQL of each grain's
    # time bucket of start_time, as Unix seconds.
    _seq: str
    _bucket_sql: Mapping[Grain, str]
    _greatest = "MAX"  # the larger of two values (SQLite's scalar MAX, PostgreSQL's GREATEST)
    # Whether the second pass of a many-group aggregation writes the groups kept into both
    # branches of a rollup and its tail (SQLite: its union is a co-routine that otherwise
    # carries every row of the rollup; PostgreSQL plans the outer filter as well, and the
    # key list written twice costs it more to send and parse than it saves).
    _narrow_inside = False

    def _by_seq(self, alias: str = "measurements") -> str:
        """The measurements (as ``alias``) in a FROM clause, read for a range of sequence
        numbers (the rows after the watermark)."""
        return f"measurements AS {alias}"

    def _folded(self, alias: str, mark: str) -> str:
        """SQL: the row ``alias`` is folded (numbered up to the watermark ``mark``)."""
        return f"{alias}.{self._seq} <= {mark}"

    # ---- backend hooks ------------------------------------------------------------------
    @abc.abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]:
        """A write transaction; yields a cursor-like object with execute/executemany."""

    @abc.abstractmethod
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (``?`` placeholders) and return all rows."""

    @abc.abstractmethod
    def _ts(self, value: datetime) -> Any:
        """A datetime as the backend stores times."""

    @abc.abstractmethod
    def _dt(self, value: Any) -> datetime:
        """A stored time back to an aware UTC datetime."""

    @abc.abstractmethod
    def _now_param(self, ts: float) -> Any:
        """A Unix timestamp as a time parameter."""

    @abc.abstractmethod
    def _bucket_expr(self, bucket_seconds: int, column: str = "start_time") -> str:
        """SQL for a time column rounded down to the bucket, as Unix seconds."""

    @abc.abstractmethod
    def _epoch(self, column: str) -> str:
        """SQL for a time column as Unix seconds."""

    @abc.abstractmethod
    def _month_expr(self, column: str) -> str:
        """SQL for a time column rounded down to its UTC calendar month, as Unix seconds."""

    @abc.abstractmethod
    def _epoch_value(self, value: Any) -> float:
        """A stored time as Unix seconds."""

    @abc.abstractmethod
    def _bool_param(self, value: bool) -> Any:
        """A boolean as the backend stores it."""

    @abc.abstractmethod
    def _delete_measurements(self, cur: Any, ids: Sequence[str]) -> None:
        """Delete these measurements inside an open transaction."""

    @abc.abstractmethod
    def _insert_measurements(self, cur: Any, rows: Sequence[MeasurementRow]) -> InsertResult:
        """Insert inside an open transaction; dedup on measurement_id."""

    @abc.abstractmethod
    def _upsert_activity(self, cur: Any, acts: Sequence[Activity]) -> None: ...

    @abc.abstractmethod
    def _upsert_status(self, cur: Any, statuses: Sequence[StatusUpdate]) -> None: ...

    @abc.abstractmethod
    def _add_rejections(self, cur: Any, counts: Mapping[str, int], now: float) -> None: ...

    @abc.abstractmethod
    def _insert_quarantine(self, cur: Any, items: Sequence[QuarantineItem]) -> None: ...

    @abc.abstractmethod
    def _blob(self, value: Any) -> bytes: ...

    @abc.abstractmethod
    def _fold_state(self, cur: Any, wait: bool) -> int | None:
        """Inside a write transaction: the watermark (``rollup_state.folded``), locked until
        the transaction ends so one folder or prune at a time moves it; None when ``wait``
        is false and another transaction holds it."""

    @abc.abstractmethod
    def _fold_horizon(self, cur: Any) -> int | None:
        """Inside the folder's transaction: the highest sequence number up to which every
        measurement is committed (or never will be), None if there is none yet."""

    @abc.abstractmethod
    def _snapshot(self) -> AbstractContextManager[Any]:
        """A read-only transaction whose queries all see one snapshot; yields a function
        like ``_query``."""

    # ---- probes -------------------------------------------------------------------------
    def _probe(self, row: tuple[Any, ...]) -> ProbeRecord:
        return ProbeRecord(
            probe_id=row[0],
            public_key=self._blob(row[1]),
            note=row[2],
            enrolled_at=self._dt(row[3]),
            revoked_at=None if row[4] is None else self._dt(row[4]),
        )

    def get_probe(self, probe_id: str) -> ProbeRecord | None:
        rows = self._query(
            "SELECT probe_id, public_key, note, enrolled_at, revoked_at FROM probes "
            "WHERE probe_id = ?",
            (probe_id,),
        )
        return self._probe(rows[0]) if rows else None

    def list_probes(self) -> list[ProbeRecord]:
        rows = self._query(
            "SELECT probe_id, public_key, note, enrolled_at, revoked_at FROM probes "
            "ORDER BY enrolled_at, probe_id"
        )
        return [self._probe(r) for r in rows]

    def add_probe(self, probe_id: str, public_key: bytes, note: str = "") -> ProbeRecord:
        with self._transaction() as cur:
            cur.execute(self._sql("SELECT public_key FROM probes WHERE probe_id = ?"), (probe_id,))
            existing = cur.fetchone()
            if existing is not None:
                same = self._blob(existing[0]) == bytes(public_key)
                raise ProbeExists(
                    f"probe {probe_id} is already enrolled"
                    + ("" if same else " with a different key")
                )
            cur.execute(
                self._sql(
                    "INSERT INTO probes (probe_id, public_key, note, enrolled_at) "
                    "VALUES (?, ?, ?, ?)"
                ),
                (probe_id, bytes(public_key), note, self._now_param(time.time())),
            )
        record = self.get_probe(probe_id)
        if record is None:  # pragma: no cover - we just inserted it
            raise UnknownProbe(f"probe {probe_id} vanished after enrolment")
        return record

    def revoke_probe(self, probe_id: str) -> ProbeRecord:
        """Revoke a probe's key (idempotent: revoking twice keeps the first time)."""
        with self._transaction() as cur:
            cur.execute(
                self._sql(
                    "UPDATE probes SET revoked_at = ? WHERE probe_id = ? AND revoked_at IS NULL"
                ),
                (self._now_param(time.time()), probe_id),
            )
        record = self.get_probe(probe_id)
        if record is None:
            raise UnknownProbe(f"probe {probe_id} is not enrolled")
        return record

    # ---- ingest -------------------------------------------------------------------------
    def insert_measurements(self, rows: Sequence[MeasurementRow]) -> InsertResult:
        """Insert rows (dedup on measurement_id); duplicates are counted, nothing else."""
        return self.write_batch(IngestBatch(measurements=rows))

    def quarantine(self, items: Sequence[QuarantineItem]) -> None:
        """Keep rejected messages and count them under their reasons."""
        self.write_batch(IngestBatch(rejections=items))

    def count_rejections(self, counts: Mapping[str, int]) -> None:
        counts = {k: v for k, v in counts.items() if v > 0}
        if counts:
            with self._transaction() as cur:
                self._add_rejections(cur, counts, time.time())

    def write_batch(self, batch: IngestBatch) -> InsertResult:
        """One transaction: new measurements, probe activity, statuses, rejections.

        Duplicates are counted under ``duplicate``; a duplicate id whose bytes differ from the
        stored ones is also quarantined (it may be a forgery or a buggy probe) and never
        overwrites what was stored first.
        """
        now = time.time()
        with self._transaction() as cur:
            result = InsertResult(new=0)
            rows = batch.measurements
            quarantine = list(batch.rejections)
            if rows:
                unique, dups, conflicts = split_batch_duplicates(rows)
                stored = self._insert_measurements(cur, unique)
                result = InsertResult(
                    new=stored.new,
                    duplicates=(*stored.duplicates, *dups, *conflicts),
                    conflicts=(*stored.conflicts, *conflicts),
                )
                already = set(stored.duplicates)
                fresh = [r for r in unique if r.measurement_id not in already]
                if fresh:  # the rollups are folded later, off the ingest (fold_rollups)
                    self._upsert_activity(cur, fold_activity(fresh))
                if result.conflicts:
                    by_id = {r.measurement_id: r for r in rows}
                    for mid in dict.fromkeys(result.conflicts):
                        r = by_id[mid]
                        quarantine.append(
                            QuarantineItem(
                                reason="duplicate",
                                detail=f"measurement_id {mid} already stored with other bytes",
                                topic=measurements_topic(r.probe_id),
                                raw=r.payload,
                                received_ts=r.received_ts,
                                probe_id=r.probe_id,
                            )
                        )
            if batch.statuses:
                self._upsert_status(cur, batch.statuses)
            kept = self._quarantine_room(cur, quarantine) if quarantine else []
            if kept:
                self._insert_quarantine(cur, kept)
            plain_dups = len(result.duplicates) - len(result.conflicts)
            counts = rejection_totals(quarantine, {"duplicate": plain_dups,
                                                   QUARANTINE_DROPPED: len(quarantine) - len(kept)})
            if counts:
                self._add_rejections(cur, counts, now)
        return result

    def _quarantine_room(self, cur: Any, items: Sequence[QuarantineItem]) -> list[QuarantineItem]:
        """The items that fit in the quarantine's bounds; their usage recorded (same tx)."""
        lim = self.quarantine_limits
        cur.execute("SELECT COALESCE(SUM(n_rows), 0), COALESCE(SUM(n_bytes), 0) "
                    "FROM quarantine_usage")
        row = cur.fetchone()
        total_rows, total_bytes = (int(row[0]), int(row[1])) if row else (0, 0)
        usage: dict[str, tuple[int, int]] = {}
        for key in dict.fromkeys(item.probe_id or "" for item in items):
            cur.execute("SELECT n_rows, n_bytes FROM quarantine_usage WHERE probe_id = ?", (key,))
            found = cur.fetchone()
            usage[key] = (int(found[0]), int(found[1])) if found else (0, 0)
        kept: list[QuarantineItem] = []
        changed: set[str] = set()
        for item in items:
            key = item.probe_id or ""
            size = min(len(item.raw), QUARANTINE_MAX_RAW)
            rows, nbytes = usage[key]
            if (rows + 1 > lim.per_probe_rows or nbytes + size > lim.per_probe_bytes
                    or total_rows + 1 > lim.total_rows or total_bytes + size > lim.total_bytes):
                continue
            usage[key] = (rows + 1, nbytes + size)
            total_rows, total_bytes = total_rows + 1, total_bytes + size
            changed.add(key)
            kept.append(item)
        if changed:
            cur.executemany(
                "INSERT INTO quarantine_usage (probe_id, n_rows, n_bytes) VALUES (?, ?, ?) "
                "ON CONFLICT (probe_id) DO UPDATE SET n_rows = excluded.n_rows, "
                "n_bytes = excluded.n_bytes",
                [(key, *usage[key]) for key in sorted(changed)],
            )
        return kept

    # ---- queries ------------------------------------------------------------------------
    def _where(self, where: Filter | None) -> tuple[str, list[Any]]:
        if where is None:
            return "", []
        clauses: list[str] = []
        params: list[Any] = []
        if where.since is not None:
            clauses.append("start_time >= ?")
            params.append(self._ts(where.since))
        if where.until is not None:
            clauses.append("start_time < ?")
            params.append(self._ts(where.until))
        if where.blocking == "":
            clauses.append("blocking IS NULL")
        elif where.blocking is not None:
            clauses.append("blocking = ?")
            params.append(where.blocking)
        if where.confirmed:
            # A constant, so the partial index over confirmed rows serves it.
            clauses.append(self._is_true("confirmed"))
        elif where.confirmed is not None:
            clauses.append("confirmed = ?")
            params.append(self._bool_param(False))
        if where.failure is not None:
            # "tls" matches tls and tls.*: a range, so no LIKE wildcard can sneak in; the
            # range first, so an index on reason is searched, not scanned.
            clauses.append("reason >= ? AND reason < ? AND (reason = ? OR reason >= ?)")
            params += [where.failure, where.failure + "/", where.failure, where.failure + "."]
            if where.failure:
                clauses.append("reason <> ''")  # implied: the partial index over failures
        if where.status is not None and where.status != "ok":
            clauses.append("status <> 'ok'")  # implied: the partial indexes over verdicts
        # A page walks an index in id order; when a filter has a partial index over its rare
        # rows, that one must be walked, not the country's or network's (SQLite would pick
        # those for their order and read every row of the country to find a few).
        rare = bool(where.confirmed or where.failure or where.blocking)
        for column, value in (
            ("probe_cc", where.probe_cc),
            ("probe_asn", where.probe_asn),
            ("domain", where.domain),
            ("status", where.status),
            ("probe_id", where.probe_id),
            ("test_name", where.test_name),
            ("input", where.input),
            ("category_code", where.category_code),
            ("probe_network_name", where.probe_network_name),
        ):
            if value is not None:
                name = self._not_indexed(column) if rare and column in (
                    "probe_cc", "probe_asn") else column
                clauses.append(f"{name} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def _not_indexed(self, column: str) -> str:
        """The column in a term no index should serve (SQLite: a unary plus)."""
        return f"+{column}"

    def _is_true(self, column: str) -> str:
        """SQL true when a boolean column is (SQLite keeps booleans as 0 and 1)."""
        return f"{column} = 1"

    def _summary(self, r: tuple[Any, ...]) -> MeasurementSummary:
        return MeasurementSummary(
            measurement_id=str(r[0]),
            probe_id=r[1],
            test_name=r[2],
            input=r[3],
            domain=r[4],
            probe_cc=r[5],
            probe_asn=r[6],
            status=r[7],
            blocking=r[8],
            reason=r[9],
            confirmed=bool(r[10]),
            start_time=self._dt(r[11]),
            received_at=self._dt(r[12]),
        )

    def recent(self, limit: int = 20, where: Filter | None = None) -> list[MeasurementSummary]:
        """Most recently received measurements first."""
        clause, params = self._where(where)
        rows = self._query(
            f"SELECT {SUMMARY_COLUMNS} FROM measurements{clause} "
            "ORDER BY received_at DESC, measurement_id DESC LIMIT ?",
            [*params, int(limit)],
        )
        return [self._summary(r) for r in rows]

    def count_by(
        self, dimension: Dimension, where: Filter | None = None, limit: int = 50
    ) -> list[tuple[str, int]]:
        column = DIMENSION_COLUMNS[Dimension(dimension)]
        clause, params = self._where(where)
        rows = self._query(
            f"SELECT {column} AS k, COUNT(*) AS n FROM measurements{clause} "
            "GROUP BY k ORDER BY n DESC, k LIMIT ?",
            [*params, int(limit)],
        )
        return [(str(k), int(n)) for k, n in rows]

    def measurement_count(self, where: Filter | None = None) -> int:
        clause, params = self._where(where)
        rows = self._query(f"SELECT COUNT(*) FROM measurements{clause}", params)
        return int(rows[0][0])

    def get_measurement(self, measurement_id: str) -> StoredMeasurement | None:
        rows = self._query(
            f"SELECT {SUMMARY_COLUMNS}, payload_type, payload, signature FROM measurements "
            "WHERE measurement_id = ?",
            (measurement_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return StoredMeasurement(
            summary=self._summary(r[:13]),
            payload_type=r[13],
            payload=self._blob(r[14]),
            signature=self._blob(r[15]),
        )

    def _keyset(
        self, where: Filter | None, after: str | None, descending: bool
    ) -> tuple[str, list[Any]]:
        """WHERE clause of a keyset page: the filter plus "measurement_id after the cursor".

        Pages are keyed on ``measurement_id`` alone: a UUIDv7 is unique and sorts by the
        time the probe created it, so a cursor is one id, pages never skip or repeat rows
        however many arrive meanwhile, and each page is one index range scan.
        """
        clause, params = self._where(where)
        if after is not None:
            if not UUID_RE.match(after):
                raise ValueError(f"cursor {after!r} is not a lower-case UUID")
            clause += (" AND " if clause else " WHERE ") + (
                "measurement_id < ?" if descending else "measurement_id > ?"
            )
            params.append(after)
        return clause, params

    def measurements_page(
        self,
        where: Filter | None = None,
        limit: int = 100,
        after: str | None = None,
        descending: bool = True,
    ) -> list[MeasurementSummary]:
        """Up to ``limit`` measurements ordered by measurement_id (newest first by default),
        strictly after the cursor ``after`` (the last id of the previous page)."""
        clause, params = self._keyset(where, after, descending)
        order = "DESC" if descending else "ASC"
        # The ids first, then their rows: the inner query reads only an index when one holds
        # every filtered column (the page indexes do), so rows skipped by the filter are never
        # read from the table; the outer one reads the page's rows by id.
        ids = f"SELECT measurement_id FROM measurements{clause}"
        if self._window_first(where, descending):
            ids = f"SELECT measurement_id FROM ({ids} OFFSET 0) AS w"
        rows = self._query(
            f"SELECT {SUMMARY_COLUMNS} FROM measurements WHERE measurement_id IN ("
            f"{ids} ORDER BY measurement_id {order} LIMIT ?) ORDER BY measurement_id {order}",
            [*params, int(limit)],
        )
        return [self._summary(r) for r in rows]

    def _window_first(self, where: Filter | None, descending: bool) -> bool:
        """Whether to read a page's matches through the index of its filter and time window
        and sort them, rather than walk the ids in order (PostgreSQL: see there)."""
        return False

    def export_page(
        self, where: Filter | None = None, limit: int = 500, after: str | None = None
    ) -> list[StoredMeasurement]:
        """Like measurements_page (oldest first) with the signed bytes, for streaming export."""
        clause, params = self._keyset(where, after, False)
        rows = self._query(
            f"SELECT {SUMMARY_COLUMNS}, payload_type, payload, signature FROM measurements"
            f"{clause} ORDER BY measurement_id ASC LIMIT ?",
            [*params, int(limit)],
        )
        return [
            StoredMeasurement(
                summary=self._summary(r[:13]),
                payload_type=r[13],
                payload=self._blob(r[14]),
                signature=self._blob(r[15]),
            )
            for r in rows
        ]

    def delivery_gaps(self) -> dict[str, DeliveryGaps]:
        """Sequence numbers per probe (collector.store.sequences): the folded counts in
        ``probe_sequences`` plus the numbers the rows after the watermark add, read in one
        snapshot (O(probes + unfolded rows), not O(rows)); probes without any numbered record
        are left out."""
        with self._snapshot() as query:
            folded = int(query("SELECT folded FROM rollup_state WHERE id = 1", ())[0][0])
            kept = query(f"SELECT probe_id, last_seq, received FROM {sequences.TABLE}", ())
            tail = query(sequences.tail_select(self._seq, self._folded, self._by_seq("m")),
                         (folded, folded))
        last: dict[str, int] = {}
        received: dict[str, int] = {}
        for probe, top, n in (*kept, *tail):
            key = str(probe)
            last[key] = max(last.get(key, 0), int(top))
            received[key] = received.get(key, 0) + int(n)
        return {p: DeliveryGaps(p, last[p], received[p]) for p in sorted(last)
                if received[p] > 0}

    def rejection_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._query("SELECT reason, count FROM rejections")}

    def quarantined(self, limit: int = 20, reason: str | None = None) -> list[QuarantinedRow]:
        sql = "SELECT id, reason, detail, topic, probe_id, size, sha256, raw, received_at " \
              "FROM quarantine"
        params: list[Any] = []
        if reason is not None:
            sql += " WHERE reason = ?"
            params.append(reason)
        rows = self._query(sql + " ORDER BY id DESC LIMIT ?", [*params, int(limit)])
        return [
            QuarantinedRow(
                id=int(r[0]),
                reason=r[1],
                detail=r[2],
                topic=r[3],
                probe_id=r[4],
                size=int(r[5]),
                sha256=r[6],
                raw=self._blob(r[7]),
                received_at=self._dt(r[8]),
            )
            for r in rows
        ]

    def last_seen(self) -> list[ProbeActivity]:
        """Every enrolled probe with its latest measurement and status (O(probes))."""
        rows = self._query(
            "SELECT p.probe_id, p.revoked_at, a.last_start, a.last_received, "
            "COALESCE(a.measurements, 0), s.state, s.received_at, a.probe_cc, a.probe_asn "
            "FROM probes p "
            "LEFT JOIN probe_activity a ON a.probe_id = p.probe_id "
            "LEFT JOIN probe_status s ON s.probe_id = p.probe_id "
            "ORDER BY p.probe_id"
        )
        return [
            ProbeActivity(
                probe_id=r[0],
                revoked=r[1] is not None,
                last_measurement_start=None if r[2] is None else self._dt(r[2]),
                last_received_at=None if r[3] is None else self._dt(r[3]),
                measurements=int(r[4]),
                status=r[5],
                status_at=None if r[6] is None else self._dt(r[6]),
                probe_cc=r[7],
                probe_asn=r[8],
            )
            for r in rows
        ]

    def timeline(
        self, bucket_seconds: int, dimension: Dimension, where: Filter | None = None
    ) -> list[TimelineBucket]:
        """Measurements per time bucket (by measurement_start_time) and group."""
        if bucket_seconds <= 0:
            raise ValueError("bucket_seconds must be positive")
        column = DIMENSION_COLUMNS[Dimension(dimension)]
        bucket = self._bucket_expr(int(bucket_seconds))
        clause, params = self._where(where)
        rows = self._query(
            f"SELECT {bucket} AS b, {column} AS k, COUNT(*), "
            "SUM(CASE WHEN status IN ('blocked', 'throttled') THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN status = 'down' THEN 1 ELSE 0 END) "
            f"FROM measurements{clause} GROUP BY b, k ORDER BY b, k",
            params,
        )
        return [
            TimelineBucket(utc_from_ts(float(b)), str(k), int(n), int(bl or 0), int(dn or 0))
            for b, k, n, bl, dn in rows
        ]

    def sightings(
        self, since: datetime, until: datetime, bucket_seconds: int = 60
    ) -> list[ProbeSighting]:
        """Status messages (each one) and measurement receipts (the last per probe and
        bucket, so a busy probe does not flood the detector) with since <= t < until."""
        if bucket_seconds <= 0:
            raise ValueError("bucket_seconds must be positive")
        lo, hi = self._ts(since), self._ts(until)
        status = self._query(
            f"SELECT probe_id, {self._epoch('t')}, kind FROM probe_sightings "
            "WHERE t >= ? AND t < ?",
            (lo, hi),
        )
        bucket = self._bucket_expr(int(bucket_seconds), "received_at")
        receipts = self._query(
            f"SELECT probe_id, MAX({self._epoch('received_at')}) FROM measurements "
            f"WHERE received_at >= ? AND received_at < ? GROUP BY probe_id, {bucket}",
            (lo, hi),
        )
        out = [ProbeSighting(str(p), float(t), str(k)) for p, t, k in status]
        out.extend(ProbeSighting(str(p), float(t), "measurement") for p, t in receipts)
        out.sort(key=lambda s: (s.t, s.probe_id))
        return out

    def overview(self) -> Overview:
        measurements = int(self._query("SELECT COUNT(*) FROM measurements")[0][0])
        probes = int(self._query("SELECT COUNT(*) FROM probes")[0][0])
        quarantined = int(self._query("SELECT COUNT(*) FROM quarantine")[0][0])
        return Overview(measurements, probes, quarantined, self.rejection_counts())

    # ---- rollups, aggregation, retention ---------------------------------------------------
    def fold_rollups(self, max_span: int = FOLD_MAX_SPAN) -> int:
        """Add the measurements stored since the last fold to the rollups, in one transaction
        that also moves the watermark (a crash folds all of them or none).  At most
        ``max_span`` sequence numbers per call, so a long backlog is folded in bounded
        transactions.  Returns how many sequence numbers are left to fold up to the horizon
        (0: caught up).  Another collector folding (PostgreSQL) makes this one return 0."""
        with self._transaction() as cur:
            folded = self._fold_state(cur, wait=False)
            if folded is None:
                return 0
            horizon = self._fold_horizon(cur)
            if horizon is None or horizon <= folded:
                return 0
            hi = min(horizon, folded + max(1, int(max_span)))
            self._fold_range(cur, folded, hi)
            cur.execute(sequences.fold_statement(self._seq, self._folded, self._greatest,
                                                  self._by_seq("m")),
                        (folded, hi, folded))
            cur.execute("UPDATE rollup_state SET folded = ? WHERE id = 1", (hi,))
        return horizon - hi

    def _fold_range(self, cur: Any, lo: int, hi: int) -> None:
        """Add the measurements numbered ``lo < seq <= hi`` to the rollups (inside the
        caller's transaction)."""
        for statement in fold_statements(self._bucket_sql, self._seq):
            cur.execute(statement, (lo, hi))

    def _unfold_sequences(self, cur: Any, pairs: set[tuple[str, int]], folded: int) -> None:
        """After ``prune`` deleted folded rows carrying these (probe id, number) pairs: take
        off ``probe_sequences`` the numbers no folded row carries any more, and set each such
        probe's highest number again (inside the caller's transaction)."""
        gone: Counter[str] = Counter()
        ordered = sorted(pairs)
        for part in chunks(ordered, 400):
            cur.execute(sequences.gone_select(len(part), self._folded),
                        (*(v for pair in part for v in pair), folded))
            gone.update(str(r[0]) for r in cur.fetchall())
        for probe, n in sorted(gone.items()):
            cur.execute(sequences.relast_statement(self._folded), (folded, n, probe))
        if gone:
            cur.execute(sequences.DELETE_EMPTY)

    def _apply_rollups(self, cur: Any, facts: Sequence[Fact], sign: int = 1) -> None:
        """Add (or, ``sign`` -1, subtract) measurements to the rollup tables (inside the
        caller's transaction)."""
        delta = fold(facts, sign)
        delta.update(derive(delta))
        for t in FOLDED:
            params = delta_params(delta, t)
            if params:
                self._upsert_rollup(cur, t, params)
            if sign < 0:
                cur.execute(f"DELETE FROM {t.name} WHERE n <= 0")
        rows = pivot_params(pivot(delta))
        if rows:
            self._upsert_pivot(cur, rows)
        if sign < 0:
            cur.execute(f"DELETE FROM {ROLLUP_DOMAIN.name} WHERE n <= 0")

    def aggregate(self, dims: Sequence[AggDimension], where: AggFilter | None = None,
                  limit: int = 1000) -> Aggregation:
        """Counts per verdict status grouped by ``dims`` (see collector.store.rollups)."""
        where = where or AggFilter()
        p = plan(dims, where)
        select: list[str] = []
        for d in dims:
            if d.is_time:
                select.append(self._time_group(p, Grain(d.value)))
            else:
                col = DIMENSION_COLUMN[d]
                select.append(f"COALESCE({col}, '')" if p.source == RAW and col in NULLABLE
                              else col)
        source = p.source
        if p.source == RAW:
            clause, params = self._where(Filter(
                since=where.since, until=where.until, probe_cc=where.probe_cc,
                probe_asn=where.probe_asn, domain=where.domain,
                category_code=where.category_code, test_name=where.test_name,
                blocking=where.blocking))
            count = "COUNT(*)"
        else:
            clauses: list[str] = []
            params = []
            if p.since is not None:
                clauses.append("bucket >= ?")
                params.append(int(p.since.timestamp()))
            if p.until is not None:
                clauses.append("bucket < ?")
                params.append(int(p.until.timestamp()))
            for col in AGG_FILTER_COLUMNS:
                value = getattr(where, col)
                if value is not None:
                    clauses.append(f"{col} = ?")
                    params.append(value)
            clause = (" WHERE " + " AND ".join(clauses)) if clauses else ""
            count = "SUM(n)"
            # The rollup's rows plus the measurements not folded into it yet, shaped alike
            # and filtered alike (the filter written into both, not left to be pushed down).
            if p.source == ROLLUP_DOMAIN.name:
                columns = ", ".join((*ROLLUP_DOMAIN.columns, *ROLLUP_DOMAIN.counts))
                tail = pivot_tail_select(self._seq, self._by_seq())
            else:
                table = next(t for t in FOLDED if t.name == p.source)
                columns = ", ".join(("bucket", *table.columns, "n"))
                tail = tail_select(table, self._bucket_sql, self._seq, self._by_seq())
            def union(where_sql: str) -> str:
                return (f"(SELECT {columns} FROM {p.source}{where_sql} UNION ALL "
                        f"SELECT {columns} FROM ({tail}) AS tail{where_sql}) AS src")

            source = union(clause)
        if p.source == ROLLUP_DOMAIN.name:
            sums = ", ".join(f"SUM({c})" for c in PIVOT_COUNTS)
        else:
            sums = ", ".join(pivot_columns("1" if p.source == RAW else "n"))
        if p.source == RAW:
            sums = sums.replace("blocking = ", "COALESCE(blocking, '') = ")
            return self._aggregate_rows(dims, p, select, sums, count, source, clause, params,
                                        self._query, limit)
        with self._snapshot() as query:  # the watermark and the rows of one moment
            folded = int(query("SELECT folded FROM rollup_state WHERE id = 1", ())[0][0])

            def narrowed(condition: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
                """The source with ``condition`` in both its branches, so the rollup's
                branch reads only the groups asked for (through its primary key when they
                lead it) instead of all of them through the union."""
                both = clause + (" AND " if clause else " WHERE ") + condition
                return union(both), [*params, *values, folded, *params, *values]

            return self._aggregate_rows(dims, p, select, sums, count, source, "",
                                        [*params, folded, *params], query, limit,
                                        narrowed if self._narrow_inside else None)

    def _aggregate_rows(self, dims: Sequence[AggDimension], p: Plan, select: Sequence[str],
                        sums: str, count: str, source: str, clause: str, params: Sequence[Any],
                        query: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]],
                        limit: int,
                        narrowed: Callable[[str, Sequence[Any]], tuple[str, list[Any]]]
                        | None = None) -> Aggregation:
        """The groups of ``source`` (``clause``, ``params``) by the ``select`` expressions,
        largest first, through ``query``; ``narrowed(condition, values)``, when given, is the
        source and its parameters with a condition of its own columns applied inside it."""
        keys = ", ".join(f"k{i}" for i in range(len(select)))
        cols = ", ".join(f"{e} AS k{i}" for i, e in enumerate(select))
        if AggDimension.DOMAIN not in dims and p.grain is not Grain.HOUR:
            # Few groups (at most hundreds per country, network, category or day): one pass.
            # The window functions run after GROUP BY and before LIMIT: how many groups
            # there were and how many measurements they hold, in the same pass.  Largest
            # groups first (the total is the column after the keys), ties by key.
            order = ", ".join([f"{len(select) + 1} DESC",
                               *(str(i + 1) for i in range(len(select)))])
            rows = query(
                f"SELECT {cols}, {sums}, COUNT(*) OVER (), SUM({count}) OVER () "
                f"FROM {source}{clause} GROUP BY {keys} ORDER BY {order} LIMIT ?",
                [*params, int(limit)],
            )
            return Aggregation(plan=p, rows=collect(dims, rows),
                               groups=int(rows[0][-2]) if rows else 0,
                               total=int(rows[0][-1]) if rows else 0)
        # Domains or hours: tens of thousands of groups (the domain x network matrix has
        # 40,000), so two passes.  First the keys and totals only, through the window
        # functions and the sort; then the counts per status and technique of the groups
        # kept.  Carrying every count through the window and the sort cost twice as much.
        top = query(
            f"SELECT {keys}, t, COUNT(*) OVER (), SUM(t) OVER () FROM ("
            f"SELECT {cols}, {count} AS t FROM {source}{clause} GROUP BY {keys}) AS g "
            f"ORDER BY t DESC, {keys} LIMIT ?",
            [*params, int(limit)],
        )
        if not top:
            return Aggregation(plan=p, rows=[], groups=0, total=0)
        nk = len(select)
        chosen = [tuple(r[:nk]) for r in top]
        marks = ", ".join(["(" + ", ".join("?" * nk) + ")"] * len(chosen))
        wanted = f"({', '.join(select)}) IN (VALUES {marks})"
        values = [v for k in chosen for v in k]
        if narrowed is not None:
            inner, inner_params = narrowed(wanted, values)
            counted = query(f"SELECT {cols}, {sums} FROM {inner} GROUP BY {keys}",
                            inner_params)
        else:
            counted = query(
                f"SELECT {cols}, {sums} FROM {source}{clause}"
                f"{' AND ' if clause else ' WHERE '}{wanted} GROUP BY {keys}",
                [*params, *values],
            )
        by_key = {tuple(r[:nk]): r[nk:] for r in counted}
        return Aggregation(plan=p, rows=collect(dims, [(*k, *by_key[k]) for k in chosen]),
                           groups=int(top[0][-2]), total=int(top[0][-1]))

    def _upsert_rollup(self, cur: Any, t: RollupTable, params: Sequence[tuple[object, ...]]
                       ) -> None:
        """Add counts to a rollup table (PostgreSQL overrides this with one statement)."""
        cur.executemany(upsert_sql(t), params)

    def _upsert_pivot(self, cur: Any, params: Sequence[tuple[object, ...]]) -> None:
        """Add counts to rollup_domain (PostgreSQL overrides this with one statement)."""
        cur.executemany(pivot_upsert_sql(), params)

    def _time_group(self, p: Plan, grain: Grain) -> str:
        if p.source != RAW:
            return "bucket"
        if grain is Grain.MONTH:
            return self._month_expr("start_time")
        return self._bucket_expr(HOUR if grain is Grain.HOUR else DAY)

    def count_matching(self, where: Filter | None = None, cap: int = 100_000
                       ) -> tuple[int, bool]:
        """How many measurements match: exact up to ``cap``; ``(cap, True)`` beyond it, so a
        count never scans more than ``cap`` index entries."""
        clause, params = self._where(where)
        rows = self._query(
            f"SELECT COUNT(*) FROM (SELECT 1 FROM measurements{clause} LIMIT ?) AS m",
            [*params, int(cap) + 1],
        )
        n = int(rows[0][0])
        return (cap, True) if n > cap else (n, False)

    def prune(self, before: datetime, batch: int = 5000, max_batches: int = 1_000_000
              ) -> int:
        """Delete measurements that started before ``before`` (and status sightings and
        quarantined messages received before it), keeping the rollups exact.  Works in
        batches of ``batch`` rows, one transaction each, so the ingest keeps writing."""
        cutoff = self._ts(before)
        deleted = 0
        for _ in range(max_batches):
            with self._transaction() as cur:
                # The watermark, locked: no fold moves it while this batch is deleted.  Rows
                # after it were never counted, so only the ones up to it are subtracted.
                folded = self._fold_state(cur, wait=True)
                cur.execute(
                    "SELECT measurement_id, start_time, probe_cc, probe_asn, domain, "
                    f"category_code, test_name, blocking, status, {self._seq}, probe_id, "
                    "probe_seq FROM measurements WHERE start_time < ? LIMIT ?",
                    (cutoff, int(batch)),
                )
                found = cur.fetchall()
                if not found:
                    break
                facts = [Fact(self._epoch_value(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8])
                         for r in found if r[9] is None or folded is None or r[9] <= folded]
                if facts:
                    self._apply_rollups(cur, facts, sign=-1)
                ids = [str(r[0]) for r in found]
                self._delete_measurements(cur, ids)
                if folded is not None:
                    self._unfold_sequences(cur, {
                        (str(r[10]), int(r[11])) for r in found
                        if r[11] is not None and (r[9] is None or r[9] <= folded)}, folded)
                deleted += len(ids)
        with self._transaction() as cur:
            cur.execute("DELETE FROM probe_sightings WHERE t < ?", (cutoff,))
            cur.execute("DELETE FROM quarantine WHERE received_at < ?", (cutoff,))
        return deleted

    # ---- helpers ------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        """Placeholders in the backend's style (``?`` by default)."""
        return sql


def chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
