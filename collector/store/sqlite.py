"""The embedded default store: one SQLite file in WAL mode.

Durability: ``synchronous=FULL`` so a committed batch survives power loss (the ingest
acknowledges messages to the broker only after the commit returns); WAL lets ``query`` and
the API read while the ingest writes.  One write transaction per ingest batch amortises the
fsync over hundreds of measurements.

Times are stored as Unix seconds (REAL); the raw signed bytes as BLOBs.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from collector.store import sequences
from collector.store.base import (
    InsertResult,
    MeasurementRow,
    QuarantineItem,
    StatusUpdate,
    StoreError,
    StoreUnavailable,
)
from collector.store.rollups import (
    DERIVED,
    Grain,
    backfill_statements,
    create_statements,
    derived_backfill_statements,
    pivot_backfill_statement,
    pivot_create_statement,
    staged_fold_statements,
)
from collector.store.sqlbase import (
    Activity,
    Migration,
    SqlStore,
    chunks,
    page_index_statements,
    pending_migrations,
    quarantine_params,
    sighting_kinds,
)

_SQLITE_BUCKETS = {
    Grain.HOUR: "CAST(start_time / 3600 AS INTEGER) * 3600",
    Grain.DAY: "CAST(start_time / 86400 AS INTEGER) * 86400",
    Grain.MONTH: "CAST(strftime('%s', start_time, 'unixepoch', 'start of month') AS INTEGER)",
}


def _folded(alias: str, mark: str) -> str:
    """SQL: the row ``alias`` is in the rollups (its rowid up to the watermark ``mark``)."""
    return f"{alias}.rowid <= {mark}"


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "probes, measurements, activity, status, rejections, quarantine",
        (
            """CREATE TABLE probes (
                probe_id    TEXT PRIMARY KEY,
                public_key  BLOB NOT NULL,
                note        TEXT NOT NULL DEFAULT '',
                enrolled_at REAL NOT NULL,
                revoked_at  REAL
            )""",
            """CREATE TABLE measurements (
                measurement_id     TEXT NOT NULL UNIQUE,
                probe_id           TEXT NOT NULL,
                test_name          TEXT NOT NULL,
                input              TEXT,
                domain             TEXT,
                category_code      TEXT,
                probe_cc           TEXT NOT NULL,
                probe_asn          TEXT NOT NULL,
                probe_network_name TEXT NOT NULL,
                status             TEXT NOT NULL,
                blocking           TEXT,
                reason             TEXT NOT NULL,
                confirmed          INTEGER NOT NULL,
                start_time         REAL NOT NULL,
                received_at        REAL NOT NULL,
                payload_type       TEXT NOT NULL,
                payload            BLOB NOT NULL,
                signature          BLOB NOT NULL
            )""",
            "CREATE INDEX measurements_received ON measurements (received_at)",
            "CREATE INDEX measurements_probe_time ON measurements (probe_id, start_time)",
            "CREATE INDEX measurements_cc_time ON measurements (probe_cc, start_time)",
            "CREATE INDEX measurements_asn_time ON measurements (probe_asn, start_time)",
            "CREATE INDEX measurements_domain ON measurements (domain, start_time)",
            """CREATE TABLE probe_activity (
                probe_id      TEXT PRIMARY KEY,
                last_start    REAL NOT NULL,
                last_received REAL NOT NULL,
                measurements  INTEGER NOT NULL,
                probe_cc      TEXT,
                probe_asn     TEXT
            )""",
            """CREATE TABLE probe_status (
                probe_id    TEXT PRIMARY KEY,
                state       TEXT NOT NULL,
                payload     BLOB NOT NULL,
                received_at REAL NOT NULL
            )""",
            """CREATE TABLE probe_sightings (
                probe_id TEXT NOT NULL,
                t        REAL NOT NULL,
                kind     TEXT NOT NULL
            )""",
            "CREATE INDEX probe_sightings_t ON probe_sightings (t)",
            """CREATE TABLE rejections (
                reason  TEXT PRIMARY KEY,
                count   INTEGER NOT NULL,
                last_at REAL NOT NULL
            )""",
            """CREATE TABLE quarantine (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                received_at REAL NOT NULL,
                reason      TEXT NOT NULL,
                detail      TEXT NOT NULL,
                topic       TEXT NOT NULL,
                probe_id    TEXT,
                size        INTEGER NOT NULL,
                sha256      TEXT NOT NULL,
                raw         BLOB NOT NULL
            )""",
            "CREATE INDEX quarantine_reason ON quarantine (reason, id)",
        ),
    ),
    Migration(
        2,
        "quarantine usage per probe (bounded quarantine); per-probe sequence numbers",
        (
            """CREATE TABLE quarantine_usage (
                probe_id TEXT PRIMARY KEY,
                n_rows   INTEGER NOT NULL,
                n_bytes  INTEGER NOT NULL
            )""",
            "INSERT INTO quarantine_usage (probe_id, n_rows, n_bytes) "
            "SELECT COALESCE(probe_id, ''), COUNT(*), SUM(LENGTH(raw)) FROM quarantine "
            "GROUP BY COALESCE(probe_id, '')",
            "ALTER TABLE measurements ADD COLUMN probe_seq INTEGER",
            "CREATE INDEX measurements_probe_seq ON measurements (probe_id, probe_seq)",
        ),
    ),
    Migration(
        3,
        "rollups of measurements per hour, day and month (aggregation API); pages of one "
        "country or network walk an index in measurement_id order",
        (
            # A page of one country's measurements, newest first, is a range of this index
            # read in order until the page is full (the time-keyed ones made SQLite sort
            # every measurement of the country first).
            "DROP INDEX measurements_cc_time",
            "DROP INDEX measurements_asn_time",
            "CREATE INDEX measurements_cc_id ON measurements (probe_cc, measurement_id)",
            "CREATE INDEX measurements_asn_id ON measurements (probe_asn, measurement_id)",
            *create_statements("INTEGER", "INTEGER", " WITHOUT ROWID"),
            *backfill_statements(_SQLITE_BUCKETS),
        ),
    ),
    Migration(
        4,
        "all-time rollup of domains by country, network, category and test (the domain x "
        "network matrix); monthly rollup without domains; indexes for pages filtered on "
        "rare verdicts, failures, blocking and category",
        (
            pivot_create_statement("INTEGER", " WITHOUT ROWID"),
            *create_statements("INTEGER", "INTEGER", " WITHOUT ROWID", tables=DERIVED),
            *derived_backfill_statements(),
            pivot_backfill_statement(),
            *page_index_statements("confirmed = 1"),
        ),
    ),
    Migration(
        5,
        "rollups folded after the ingest, by rowid, up to a watermark (rollup_state)",
        (
            """CREATE TABLE rollup_state (
                id     INTEGER PRIMARY KEY CHECK (id = 1),
                folded INTEGER NOT NULL
            )""",
            # Every row stored so far is in the rollups (kept at ingest until now).
            "INSERT INTO rollup_state (id, folded) "
            "SELECT 1, COALESCE(MAX(rowid), 0) FROM measurements",
        ),
    ),
    Migration(
        6,
        "delivery gaps per probe kept by the folder (probe_sequences), so /probes does not "
        "count every numbered row",
        (
            sequences.create_statement("INTEGER", " WITHOUT ROWID"),
            sequences.backfill_statement(
                _folded, "(SELECT folded FROM rollup_state WHERE id = 1)"),
        ),
    ),
)


_INSERT_MEASUREMENT = (
    "INSERT OR IGNORE INTO measurements (rowid, measurement_id, probe_id, test_name, input, "
    "domain, category_code, probe_cc, probe_asn, probe_network_name, status, blocking, reason, "
    "confirmed, start_time, received_at, payload_type, payload, signature, probe_seq) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The rowid after which a batch numbers its rows: past every stored row and past the rollups'
# watermark.  SQLite alone would give the highest rowid + 1, which reuses the numbers of the
# newest rows once prune deleted them, numbers the folder has already passed.
_NEXT_ROWID = (
    "SELECT MAX(COALESCE((SELECT MAX(rowid) FROM measurements), 0), "
    "(SELECT folded FROM rollup_state WHERE id = 1))"
)


_FOLD_STAGING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS rollup_fold (start_time REAL, probe_cc TEXT, "
    "probe_asn TEXT, domain TEXT, category_code TEXT, test_name TEXT, blocking TEXT, "
    "status TEXT)"
)
_STAGED_FOLD = staged_fold_statements(_SQLITE_BUCKETS, "rowid", "temp.rollup_fold")


def path_from_url(url: str) -> Path:
    """``sqlite:///abs/path.db`` (absolute) or ``sqlite:relative/path.db``."""
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
    elif url.startswith("sqlite:"):
        rest = url[len("sqlite:") :]
    else:
        raise ConfigError(f"not an SQLite URL: {url!r} (use sqlite:///path/to/file.db)")
    if not rest or rest in ("/", ":memory:"):
        raise ConfigError(f"SQLite URL without a file path: {url!r}")
    return Path(rest)


class SqliteStore(SqlStore):
    """Store in one SQLite file.  Open with :func:`collector.store.open_store`."""

    _seq = "rowid"  # one writer at a time: rowids are committed in the order they are given
    _bucket_sql = _SQLITE_BUCKETS
    _narrow_inside = True

    def _by_seq(self, alias: str = "measurements") -> str:
        return f"measurements AS {alias} NOT INDEXED"  # a rowid range, not an index scan

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.url = f"sqlite://{self.path.resolve()}"
        self._busy_timeout_ms = busy_timeout_ms
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # A new database is created 0600 before SQLite opens it (its -wal and -shm files
            # get the same mode): the raw measurements and quarantine are not for others.
            with suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                 | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            # check_same_thread=False: AsyncStore creates the store on its worker thread, but
            # tests and commands may open it elsewhere; callers serialise access themselves.
            self._db = sqlite3.connect(
                str(self.path),
                isolation_level=None,
                timeout=busy_timeout_ms / 1000,
                check_same_thread=False,
            )
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from exc
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA temp_store = MEMORY")  # the folder's staging table
            self._migrate()
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from exc
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(f"cannot use SQLite store {self.path}: {exc}") from exc
            raise

    # ---- lifecycle ----------------------------------------------------------------------
    def _current_version(self) -> int:
        db = self._db
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if not exists:
            return 0
        return int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                   .fetchone()[0])

    def _migrate(self) -> None:
        """Apply pending migrations; a read-only check first, so opening an up-to-date store
        (``vigil-collector query``) never waits for the ingest's write lock."""
        if not pending_migrations(MIGRATIONS, self._current_version()):
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            for m in pending_migrations(MIGRATIONS, int(current.fetchone()[0])):
                for statement in m.statements:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (m.version, m.description, datetime.now(UTC).timestamp()),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        return int(self._query("SELECT MAX(version) FROM schema_migrations")[0][0])

    def close(self) -> None:
        self._db.close()

    def backup(self, target: Path) -> int:
        """Copy the database to ``target`` with SQLite's online backup (a consistent
        snapshot; readers and writers go on meanwhile).  Returns the measurements copied."""
        tmp = target.with_name(target.name + ".partial")
        try:
            dest = sqlite3.connect(str(tmp))
            try:
                self._db.backup(dest, pages=4096)
                dest.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
                n = int(dest.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])
            finally:
                dest.close()
            tmp.replace(target)
        except (sqlite3.Error, OSError) as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"backup of {self.path} to {target} failed: {exc}") from exc
        return n

    # ---- backend hooks ------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        try:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite store {self.path} not writable now: {exc}") from exc
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException as exc:
            with suppress(sqlite3.Error):  # a failed COMMIT may have rolled back already
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(f"SQLite store {self.path}: {exc}") from exc
            raise
        finally:
            cur.close()

    @contextmanager
    def _snapshot(self) -> Iterator[Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]]:
        """A read transaction: in WAL mode its reads see the database as of its first one."""
        try:
            self._db.execute("BEGIN")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc
        try:
            yield self._query
        finally:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")  # read only: nothing to keep

    def _fold_state(self, cur: Any, wait: bool) -> int:
        # The transaction holds SQLite's one write lock already (BEGIN IMMEDIATE).
        cur.execute("SELECT folded FROM rollup_state WHERE id = 1")
        return int(cur.fetchone()[0])

    def _fold_range(self, cur: Any, lo: int, hi: int) -> None:
        """The range's counted columns copied once into a temporary table (in memory, this
        connection's), then counted from there into each rollup."""
        stage, folds = _STAGED_FOLD
        cur.execute(_FOLD_STAGING)
        cur.execute(stage, (lo, hi))
        for statement in folds:
            cur.execute(statement)
        cur.execute("DELETE FROM temp.rollup_fold")

    def _fold_horizon(self, cur: Any) -> int | None:
        cur.execute("SELECT MAX(rowid) FROM measurements")
        top = cur.fetchone()[0]
        return None if top is None else int(top)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, tuple(params)).fetchall()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    def _ts(self, value: datetime) -> float:
        return value.timestamp()

    def _dt(self, value: Any) -> datetime:
        return datetime.fromtimestamp(float(value), UTC)

    def _now_param(self, ts: float) -> float:
        return ts

    def _blob(self, value: Any) -> bytes:
        return bytes(value)

    def _bucket_expr(self, bucket_seconds: int, column: str = "start_time") -> str:
        b = int(bucket_seconds)
        return f"(CAST({column} / {b} AS INTEGER) * {b})"

    def _epoch(self, column: str) -> str:
        return column

    def _month_expr(self, column: str) -> str:
        return f"CAST(strftime('%s', {column}, 'unixepoch', 'start of month') AS INTEGER)"

    def _epoch_value(self, value: Any) -> float:
        return float(value)

    def _bool_param(self, value: bool) -> int:
        return 1 if value else 0

    def _delete_measurements(self, cur: Any, ids: Sequence[str]) -> None:
        for part in chunks(list(ids), 500):
            cur.execute(
                f"DELETE FROM measurements WHERE measurement_id IN ({','.join('?' * len(part))})",
                tuple(part),
            )

    def _insert_measurements(self, cur: Any, rows: Sequence[MeasurementRow]) -> InsertResult:
        # The write lock is held (BEGIN IMMEDIATE), so "select then insert" cannot race.
        stored: dict[str, bytes] = {}
        for part in chunks([r.measurement_id for r in rows], 500):
            marks = ",".join("?" * len(part))
            cur.execute(
                f"SELECT measurement_id, payload FROM measurements "
                f"WHERE measurement_id IN ({marks})",
                tuple(part),
            )
            stored.update((mid, bytes(p)) for mid, p in cur.fetchall())
        fresh = [r for r in rows if r.measurement_id not in stored]
        if fresh:
            cur.execute(_NEXT_ROWID)
            last = int(cur.fetchone()[0])
            cur.executemany(
                _INSERT_MEASUREMENT,
                [(last + i, *r.column_values(confirmed_as_int=True))
                 for i, r in enumerate(fresh, 1)],
            )
        dups = tuple(r.measurement_id for r in rows if r.measurement_id in stored)
        conflicts = tuple(
            r.measurement_id
            for r in rows
            if r.measurement_id in stored and stored[r.measurement_id] != r.payload
        )
        return InsertResult(new=len(fresh), duplicates=dups, conflicts=conflicts)

    def _upsert_activity(self, cur: Any, acts: Sequence[Activity]) -> None:
        cur.executemany(
            "INSERT INTO probe_activity (probe_id, last_start, last_received, measurements, "
            "probe_cc, probe_asn) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (probe_id) DO UPDATE SET "
            "probe_cc = CASE WHEN excluded.last_start >= probe_activity.last_start "
            "THEN excluded.probe_cc ELSE probe_activity.probe_cc END, "
            "probe_asn = CASE WHEN excluded.last_start >= probe_activity.last_start "
            "THEN excluded.probe_asn ELSE probe_activity.probe_asn END, "
            "last_start = MAX(probe_activity.last_start, excluded.last_start), "
            "last_received = MAX(probe_activity.last_received, excluded.last_received), "
            "measurements = probe_activity.measurements + excluded.measurements",
            [
                (a.probe_id, a.last_start, a.last_received, a.count, a.probe_cc, a.probe_asn)
                for a in acts
            ],
        )

    def _upsert_status(self, cur: Any, statuses: Sequence[StatusUpdate]) -> None:
        cur.executemany(
            "INSERT INTO probe_status (probe_id, state, payload, received_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (probe_id) DO UPDATE SET "
            "state = excluded.state, payload = excluded.payload, "
            "received_at = excluded.received_at "
            "WHERE excluded.received_at >= probe_status.received_at",
            [(s.probe_id, s.state, s.payload, s.received_ts) for s in statuses],
        )
        cur.executemany(
            "INSERT INTO probe_sightings (probe_id, t, kind) VALUES (?, ?, ?)",
            [(s.probe_id, s.received_ts, kind) for s, kind in sighting_kinds(statuses)],
        )

    def _add_rejections(self, cur: Any, counts: Mapping[str, int], now: float) -> None:
        cur.executemany(
            "INSERT INTO rejections (reason, count, last_at) VALUES (?, ?, ?) "
            "ON CONFLICT (reason) DO UPDATE SET count = rejections.count + excluded.count, "
            "last_at = excluded.last_at",
            [(reason, n, now) for reason, n in counts.items()],
        )

    def _insert_quarantine(self, cur: Any, items: Sequence[QuarantineItem]) -> None:
        cur.executemany(
            "INSERT INTO quarantine (reason, detail, topic, probe_id, size, sha256, raw, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(*quarantine_params(item), item.received_ts) for item in items],
        )
