"""The PostgreSQL store (psycopg 3), for operators who outgrow one machine.

Several collector processes may write concurrently: dedup relies on the primary key and
``INSERT ... ON CONFLICT DO NOTHING RETURNING``, so two collectors racing on the same
measurement store it once.  A batch is inserted with one statement over ``unnest`` arrays
(one round trip per batch).  Migrations take an advisory lock so two collectors starting at
once do not both migrate.

A lost connection is reported as :class:`StoreUnavailable` and re-opened on the next call:
the ingest keeps its batch unacknowledged and retries, so a database restart loses nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import psycopg

from collector.store import sequences
from collector.store.base import (
    Filter,
    InsertResult,
    MeasurementRow,
    QuarantineItem,
    StatusUpdate,
    StoreError,
    StoreUnavailable,
)
from collector.store.rollups import (
    DERIVED,
    ROLLUP_DOMAIN,
    Grain,
    RollupTable,
    backfill_statements,
    create_statements,
    derived_backfill_statements,
    pivot_backfill_statement,
    pivot_create_statement,
)
from collector.store.sqlbase import (
    Activity,
    Migration,
    SqlStore,
    page_index_statements,
    pending_migrations,
    quarantine_params,
    sighting_kinds,
)

_MIGRATION_LOCK = 0x76696769  # "vigi": pg_advisory_xact_lock key for schema migrations

_PG_BUCKETS = {
    Grain.HOUR: "(floor(extract(epoch FROM start_time) / 3600) * 3600)::bigint",
    Grain.DAY: "(floor(extract(epoch FROM start_time) / 86400) * 86400)::bigint",
    Grain.MONTH: "extract(epoch FROM date_trunc('month', start_time AT TIME ZONE 'UTC') "
                 "AT TIME ZONE 'UTC')::bigint",
}


def _folded(alias: str, mark: str) -> str:
    """SQL: the row ``alias`` is in the rollups: numbered up to the watermark ``mark``, or
    stored before sequence numbers existed (NULL: folded at ingest then)."""
    return f"({alias}.seq <= {mark} OR {alias}.seq IS NULL)"


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "probes, measurements, activity, status, rejections, quarantine",
        (
            """CREATE TABLE probes (
                probe_id    text PRIMARY KEY,
                public_key  bytea NOT NULL,
                note        text NOT NULL DEFAULT '',
                enrolled_at timestamptz NOT NULL,
                revoked_at  timestamptz
            )""",
            """CREATE TABLE measurements (
                measurement_id     uuid PRIMARY KEY,
                probe_id           text NOT NULL,
                test_name          text NOT NULL,
                input              text,
                domain             text,
                category_code      text,
                probe_cc           text NOT NULL,
                probe_asn          text NOT NULL,
                probe_network_name text NOT NULL,
                status             text NOT NULL,
                blocking           text,
                reason             text NOT NULL,
                confirmed          boolean NOT NULL,
                start_time         timestamptz NOT NULL,
                received_at        timestamptz NOT NULL,
                payload_type       text NOT NULL,
                payload            bytea NOT NULL,
                signature          bytea NOT NULL
            )""",
            "CREATE INDEX measurements_received ON measurements (received_at)",
            "CREATE INDEX measurements_probe_time ON measurements (probe_id, start_time)",
            "CREATE INDEX measurements_cc_time ON measurements (probe_cc, start_time)",
            "CREATE INDEX measurements_asn_time ON measurements (probe_asn, start_time)",
            "CREATE INDEX measurements_domain ON measurements (domain, start_time)",
            """CREATE TABLE probe_activity (
                probe_id      text PRIMARY KEY,
                last_start    timestamptz NOT NULL,
                last_received timestamptz NOT NULL,
                measurements  bigint NOT NULL,
                probe_cc      text,
                probe_asn     text
            )""",
            """CREATE TABLE probe_status (
                probe_id    text PRIMARY KEY,
                state       text NOT NULL,
                payload     bytea NOT NULL,
                received_at timestamptz NOT NULL
            )""",
            """CREATE TABLE probe_sightings (
                probe_id text NOT NULL,
                t        timestamptz NOT NULL,
                kind     text NOT NULL
            )""",
            "CREATE INDEX probe_sightings_t ON probe_sightings (t)",
            """CREATE TABLE rejections (
                reason  text PRIMARY KEY,
                count   bigint NOT NULL,
                last_at timestamptz NOT NULL
            )""",
            """CREATE TABLE quarantine (
                id          bigserial PRIMARY KEY,
                received_at timestamptz NOT NULL,
                reason      text NOT NULL,
                detail      text NOT NULL,
                topic       text NOT NULL,
                probe_id    text,
                size        integer NOT NULL,
                sha256      text NOT NULL,
                raw         bytea NOT NULL
            )""",
            "CREATE INDEX quarantine_reason ON quarantine (reason, id)",
        ),
    ),
    Migration(
        2,
        "quarantine usage per probe (bounded quarantine); per-probe sequence numbers",
        (
            """CREATE TABLE quarantine_usage (
                probe_id text PRIMARY KEY,
                n_rows   bigint NOT NULL,
                n_bytes  bigint NOT NULL
            )""",
            "INSERT INTO quarantine_usage (probe_id, n_rows, n_bytes) "
            "SELECT COALESCE(probe_id, ''), COUNT(*), SUM(LENGTH(raw)) FROM quarantine "
            "GROUP BY COALESCE(probe_id, '')",
            "ALTER TABLE measurements ADD COLUMN probe_seq bigint",
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
            *create_statements("bigint", "bigint"),
            *backfill_statements(_PG_BUCKETS),
        ),
    ),
    Migration(
        4,
        "all-time rollup of domains by country, network, category and test (the domain x "
        "network matrix); monthly rollup without domains; indexes for pages filtered on "
        "rare verdicts, failures, blocking and category",
        (
            pivot_create_statement("bigint"),
            *create_statements("bigint", "bigint", tables=DERIVED),
            *derived_backfill_statements(),
            pivot_backfill_statement(),
            *page_index_statements("confirmed"),
        ),
    ),
    Migration(
        5,
        "rollups folded after the ingest, by a sequence number, up to a watermark "
        "(rollup_state)",
        (
            # Not a serial or identity column: the sequence stands on its own, so the table
            # can be recreated around it (docs/scaling.md's partitioning keeps the numbers).
            "CREATE SEQUENCE measurements_seq_seq",
            # Rows stored so far keep NULL (no table rewrite): they are in the rollups already.
            "ALTER TABLE measurements ADD COLUMN seq bigint",
            "ALTER TABLE measurements ALTER COLUMN seq SET DEFAULT nextval('measurements_seq_seq')",
            "CREATE INDEX measurements_seq ON measurements (seq)",
            """CREATE TABLE rollup_state (
                id     integer PRIMARY KEY CHECK (id = 1),
                folded bigint NOT NULL
            )""",
            "INSERT INTO rollup_state (id, folded) VALUES (1, 0)",
        ),
    ),
    Migration(
        6,
        "delivery gaps per probe kept by the folder (probe_sequences), so /probes does not "
        "count every numbered row",
        (
            sequences.create_statement("bigint"),
            sequences.backfill_statement(
                _folded, "(SELECT folded FROM rollup_state WHERE id = 1)"),
        ),
    ),
)


# A batch is COPYed (binary) into a per-connection temporary table, then moved with one
# INSERT ... ON CONFLICT DO NOTHING RETURNING: psycopg's C copy path adapts the rows, where
# executemany or unnest arrays spent most of the store thread's time (and the GIL) in Python.
_INCOMING = """
CREATE TEMPORARY TABLE IF NOT EXISTS vigil_incoming (
    m text, p text, t text, i text, d text, c text, cc text, asn text, nn text, st text,
    bl text, rs text, cf boolean, s float8, r float8, pt text, pl bytea, sg bytea, q int8
) ON COMMIT DELETE ROWS
"""
_INCOMING_TYPES = (
    ["text"] * 12 + ["bool", "float8", "float8", "text", "bytea", "bytea", "int8"]
)
_COPY_INCOMING = "COPY vigil_incoming FROM STDIN (FORMAT BINARY)"
# Rows taken in id order: two collectors storing the same ids (a replay on both) lock them in
# one order, so neither waits on the other in a cycle (a deadlock, seen with batches of the
# same ids in opposite orders).
_MOVE_INCOMING = """
INSERT INTO measurements (measurement_id, probe_id, test_name, input, domain, category_code,
    probe_cc, probe_asn, probe_network_name, status, blocking, reason, confirmed, start_time,
    received_at, payload_type, payload, signature, probe_seq)
SELECT m::uuid, p, t, i, d, c, cc, asn, nn, st, bl, rs, cf, to_timestamp(s), to_timestamp(r),
       pt, pl, sg, q
FROM vigil_incoming
ORDER BY m
ON CONFLICT (measurement_id) DO NOTHING
RETURNING measurement_id
"""


# Where the folder may fold up to, and who could still commit rows numbered below it: the
# highest committed sequence number, and the transactions (virtual ids) writing to the
# measurements at that moment.  A writer locks the table before it draws a number, so a
# transaction holding a number below the highest committed one is in that list until it ends.
_FOLD_CANDIDATE = """
SELECT (SELECT max(seq) FROM measurements),
       ARRAY(SELECT DISTINCT virtualtransaction FROM pg_locks
             WHERE locktype = 'relation' AND mode = 'RowExclusiveLock'
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND relation = 'measurements'::regclass AND pid <> pg_backend_pid())
"""
_STILL_RUNNING = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'virtualxid' AND virtualxid = ANY(%s)"
)


def _unavailable(exc: Exception) -> bool:
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class PostgresStore(SqlStore):
    """Store in a PostgreSQL database.  Open with :func:`collector.store.open_store`."""

    _seq = "seq"
    _bucket_sql = _PG_BUCKETS
    _greatest = "GREATEST"

    def _folded(self, alias: str, mark: str) -> str:
        return _folded(alias, mark)

    def __init__(self, url: str, *, connect_timeout: int = 10) -> None:
        self.url = url
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        # The last fold candidate: (highest committed number, writers then in flight).
        self._fold_candidate: tuple[int, list[str]] | None = None
        try:
            self._migrate()
        except BaseException:
            self._drop()
            raise

    # ---- connection ---------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._drop()
        try:
            self._conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                options="-c timezone=UTC",
                # Notice a dead server or network within seconds, not the kernel's 2 hours.
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                tcp_user_timeout=30_000,
            )
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {_describe(exc)}") from exc
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()

    def _fail(self, exc: psycopg.Error) -> StoreError:
        if _unavailable(exc):
            self._drop()
            return StoreUnavailable(f"PostgreSQL unavailable: {_describe(exc)}")
        return StoreError(f"PostgreSQL error: {_describe(exc)}")

    def _migrate(self) -> None:
        conn = self._connection()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                    "description text NOT NULL, applied_at timestamptz NOT NULL)"
                )
                row = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
                ).fetchone()
                for m in pending_migrations(MIGRATIONS, int(row[0]) if row else 0):
                    for statement in m.statements:
                        conn.execute(statement.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations VALUES (%s, %s, now())",
                        (m.version, m.description),
                    )
        except psycopg.Error as exc:
            raise self._fail(exc) from exc

    def schema_version(self) -> int:
        return int(self._query("SELECT MAX(version) FROM schema_migrations")[0][0])

    def close(self) -> None:
        self._drop()

    # ---- backend hooks ------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                yield _Cursor(cur)
        except psycopg.Error as exc:
            raise self._fail(exc) from exc

    @contextmanager
    def _snapshot(self) -> Iterator[Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]]:
        """A REPEATABLE READ, READ ONLY transaction (it works on a hot standby too)."""
        conn = self._connection()

        def query(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
            return conn.execute(self._sql(sql).encode(), tuple(params)).fetchall()

        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield query
        except psycopg.Error as exc:
            raise self._fail(exc) from exc

    def _fold_state(self, cur: Any, wait: bool) -> int | None:
        """The watermark row, locked: folders and prune take turns; a folder that finds it
        taken skips this round (SKIP LOCKED) instead of waiting behind another collector."""
        cur.execute("SELECT folded FROM rollup_state WHERE id = 1 FOR UPDATE"
                    + ("" if wait else " SKIP LOCKED"))
        row = cur.fetchone()
        return None if row is None else int(row[0])

    def _fold_horizon(self, cur: Any) -> int | None:
        """Several collectors commit in any order, so the highest committed number is not a
        horizon by itself: rows below it may still be in flight.  Each call notes the
        highest committed number with the writers then in flight; a later call folds up to
        it once those writers have ended (at once when none was writing)."""
        ready = None
        if self._fold_candidate is not None:
            top, writers = self._fold_candidate
            running = 0
            if writers:
                cur.execute(_STILL_RUNNING, (writers,))
                running = int(cur.fetchone()[0])
            if running == 0:
                ready = top
        cur.execute(_FOLD_CANDIDATE)
        top_now, writers_now = cur.fetchone()
        if top_now is None:
            self._fold_candidate = None
            return ready
        if not writers_now:
            self._fold_candidate = None
            return int(top_now)
        self._fold_candidate = (int(top_now), [str(w) for w in writers_now])
        return ready

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self._connection()
        try:
            return conn.execute(self._sql(sql).encode(), tuple(params)).fetchall()
        except psycopg.Error as exc:
            raise self._fail(exc) from exc

    def _ts(self, value: datetime) -> datetime:
        return value

    def _dt(self, value: Any) -> datetime:
        if not isinstance(value, datetime):
            raise StoreError(f"expected a timestamp from PostgreSQL, got {value!r}")
        return value.astimezone(UTC)

    def _now_param(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, UTC)

    def _blob(self, value: Any) -> bytes:
        return bytes(value)

    def _bucket_expr(self, bucket_seconds: int, column: str = "start_time") -> str:
        b = int(bucket_seconds)
        return f"(floor(extract(epoch FROM {column}) / {b}) * {b})"

    def _epoch(self, column: str) -> str:
        return f"extract(epoch FROM {column})"

    def _month_expr(self, column: str) -> str:
        return (f"extract(epoch FROM date_trunc('month', {column} AT TIME ZONE 'UTC') "
                "AT TIME ZONE 'UTC')")

    def _epoch_value(self, value: Any) -> float:
        return self._dt(value).timestamp()

    def _bool_param(self, value: bool) -> bool:
        return value

    def _is_true(self, column: str) -> str:
        return column

    def _not_indexed(self, column: str) -> str:
        return column  # the planner's statistics choose

    def _window_first(self, where: Filter | None, descending: bool) -> bool:
        """A window that ends before the newest rows (or, oldest first, starts after the
        oldest), with a filter whose index leads with it and the time: the planner, taking
        matches to be spread evenly over the ids, walks the primary key from the newest id
        and reads every row after the window first (seconds at 10 million rows; the ids
        follow time).  Fenced (OFFSET 0), it reads the window's matches from the filter's
        index and sorts them."""
        if where is None or (where.until if descending else where.since) is None:
            return False
        return bool(where.category_code is not None or where.blocking or where.domain)

    def _delete_measurements(self, cur: Any, ids: Sequence[str]) -> None:
        cur.execute("DELETE FROM measurements WHERE measurement_id = ANY(?::uuid[])",
                    (list(ids),))

    def get_measurement(self, measurement_id: str) -> Any:
        try:
            uuid.UUID(measurement_id)
        except ValueError:
            return None
        return super().get_measurement(measurement_id)

    def _insert_measurements(self, cur: Any, rows: Sequence[MeasurementRow]) -> InsertResult:
        if not rows:
            return InsertResult(new=0)
        cur.execute(_INCOMING)
        with cur.copy(_COPY_INCOMING) as copy:
            copy.set_types(_INCOMING_TYPES)
            for r in rows:
                copy.write_row(r.column_values())
        cur.execute(_MOVE_INCOMING)
        inserted = {str(row[0]) for row in cur.fetchall()}
        dups = [r for r in rows if r.measurement_id not in inserted]
        conflicts: list[str] = []
        if dups:
            cur.execute(
                "SELECT measurement_id, payload FROM measurements "
                "WHERE measurement_id = ANY(%s::uuid[])",
                ([r.measurement_id for r in dups],),
            )
            stored = {str(mid): bytes(p) for mid, p in cur.fetchall()}
            conflicts = [
                r.measurement_id for r in dups if stored.get(r.measurement_id) != r.payload
            ]
        return InsertResult(
            new=len(inserted),
            duplicates=tuple(r.measurement_id for r in dups),
            conflicts=tuple(conflicts),
        )

    def _upsert_rollup(self, cur: Any, t: RollupTable, params: Sequence[tuple[object, ...]]
                       ) -> None:
        """One statement over arrays (one round trip, no per-row statement): the keys are
        distinct, so no row is updated twice; sorted, so two collectors lock in one order."""
        columns = list(zip(*params, strict=True))
        types = ["bigint", *(["text"] * len(t.columns)), "bigint"]
        names = ["bucket", *t.columns, "n"]
        arrays = ", ".join(f"?::{ty}[]" for ty in types)
        cur.execute(
            f"INSERT INTO {t.name} ({', '.join(names)}) SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT ({', '.join(t.key)}) DO UPDATE SET n = {t.name}.n + excluded.n",
            [list(c) for c in columns],
        )

    def _upsert_pivot(self, cur: Any, params: Sequence[tuple[object, ...]]) -> None:
        """rollup_domain's rows in one statement over arrays, as for the other rollups."""
        t = ROLLUP_DOMAIN
        columns = list(zip(*params, strict=True))
        types = [*(["text"] * len(t.columns)), *(["bigint"] * len(t.counts))]
        arrays = ", ".join(f"?::{ty}[]" for ty in types)
        adds = ", ".join(f"{c} = {t.name}.{c} + excluded.{c}" for c in t.counts)
        cur.execute(
            f"INSERT INTO {t.name} ({', '.join((*t.columns, *t.counts))}) "
            f"SELECT * FROM unnest({arrays}) ON CONFLICT ({', '.join(t.columns)}) "
            f"DO UPDATE SET {adds}",
            [list(c) for c in columns],
        )

    def _upsert_activity(self, cur: Any, acts: Sequence[Activity]) -> None:
        cur.executemany(
            "INSERT INTO probe_activity (probe_id, last_start, last_received, measurements, "
            "probe_cc, probe_asn) VALUES (%s, to_timestamp(%s), to_timestamp(%s), %s, %s, %s) "
            "ON CONFLICT (probe_id) DO UPDATE SET "
            "probe_cc = CASE WHEN excluded.last_start >= probe_activity.last_start "
            "THEN excluded.probe_cc ELSE probe_activity.probe_cc END, "
            "probe_asn = CASE WHEN excluded.last_start >= probe_activity.last_start "
            "THEN excluded.probe_asn ELSE probe_activity.probe_asn END, "
            "last_start = GREATEST(probe_activity.last_start, excluded.last_start), "
            "last_received = GREATEST(probe_activity.last_received, excluded.last_received), "
            "measurements = probe_activity.measurements + excluded.measurements",
            [
                (a.probe_id, a.last_start, a.last_received, a.count, a.probe_cc, a.probe_asn)
                for a in sorted(acts, key=lambda a: a.probe_id)  # fixed lock order: no deadlock
            ],
        )

    def _upsert_status(self, cur: Any, statuses: Sequence[StatusUpdate]) -> None:
        cur.executemany(
            "INSERT INTO probe_status (probe_id, state, payload, received_at) "
            "VALUES (%s, %s, %s, to_timestamp(%s)) ON CONFLICT (probe_id) DO UPDATE SET "
            "state = excluded.state, payload = excluded.payload, "
            "received_at = excluded.received_at "
            "WHERE excluded.received_at >= probe_status.received_at",
            [
                (s.probe_id, s.state, s.payload, s.received_ts)
                for s in sorted(statuses, key=lambda s: (s.probe_id, s.received_ts))
            ],
        )
        cur.executemany(
            "INSERT INTO probe_sightings (probe_id, t, kind) VALUES (%s, to_timestamp(%s), %s)",
            [(s.probe_id, s.received_ts, kind) for s, kind in sighting_kinds(statuses)],
        )

    def _add_rejections(self, cur: Any, counts: Mapping[str, int], now: float) -> None:
        cur.executemany(
            "INSERT INTO rejections (reason, count, last_at) VALUES (%s, %s, to_timestamp(%s)) "
            "ON CONFLICT (reason) DO UPDATE SET count = rejections.count + excluded.count, "
            "last_at = excluded.last_at",
            [(reason, n, now) for reason, n in sorted(counts.items())],
        )

    def _insert_quarantine(self, cur: Any, items: Sequence[QuarantineItem]) -> None:
        cur.executemany(
            "INSERT INTO quarantine (reason, detail, topic, probe_id, size, sha256, raw, "
            "received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, to_timestamp(%s))",
            [(*quarantine_params(item), item.received_ts) for item in items],
        )


class _Cursor:
    """A psycopg cursor that accepts the shared ``?``-placeholder SQL of SqlStore."""

    def __init__(self, cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cur.execute(sql.replace("?", "%s").encode(), tuple(params))

    def copy(self, statement: str) -> Any:
        return self._cur.copy(statement.encode())

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self._cur.executemany(sql.replace("?", "%s").encode(), params)

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cur.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"
