"""The durable outbox: every measurement is on disk before anything tries to send it.

Measurements taken during a shutdown are the ones that matter, and they are taken exactly when
they cannot be uploaded.  So a record goes from the runner straight into a SQLite database
(WAL, ``synchronous=FULL``: the commit returns only after fsync), signed at that moment, and
leaves it only when a collector has committed it (a delivery receipt, agent.wire.receipts).
A broker's PUBACK only marks the row *sent*: Mosquitto keeps messages in memory between
snapshots and drops acknowledged ones beyond its queue limits, so a sent row without a receipt
is offered again after a timeout (doubling, at most an hour).  A crash, ``kill -9``, power loss
or a broker crash at any point loses nothing that was committed; at worst a record is sent
twice, and the collector deduplicates on ``measurement_id`` (and answers a duplicate with a
receipt too).  A record the collector *refuses* (bad signature, schema violation, ...) would be
refused again: it moves to the ``refused`` table (the newest 1000 are kept, with the reason)
and is counted, never resent.  With receipts off (``[mqtt] receipts = false``, for a collector
older than receipts) the PUBACK deletes the row, as before.

**A full disk never blocks delivery.**  Opening writes nothing when the schema is current,
reading never writes, and deleting delivered rows needs only a little room in the WAL, which a
pre-allocated reserve file (``outbox.reserve``) guarantees: it is released whenever the
filesystem is (nearly) full or a write fails with "disk full", and taken again once there is
room.  New records are refused while less than ``min_free`` bytes are free (StateDiskFull,
counted as ``disk_full_refused``), so the old ones drain first.

**Clock jumps.**  ``not_before`` times are wall-clock times; one further ahead than any delay
the outbox sets (:data:`MAX_DEFER_S`) means the clock went back, and the row is ready now.
Each row also keeps the boot id and the monotonic boot clock at commit, so the publisher can
tell the collector the record's true age (``vigil-age``) when the wall clock was wrong.

The outbox is bounded (count and bytes).  When full, the oldest measurements are dropped, and
the drop is itself recorded: persistent counters, a warning in the log, and a signed
*drop report* record (``test_name`` ``outbox_drop``, see docs/envelope-spec.md) queued like a
measurement, so the collector learns what it will never receive.  There is at most one open
drop report: later drops update it until the publisher takes it (then it is sealed, never
changed again, and the next drop opens a new one).

One process owns an outbox (an exclusive ``flock`` on ``outbox.lock``);
:func:`read_stats` lets other processes (``vigil-agent status``) look without taking it.

Rows::

    seq         AUTOINCREMENT: never reused, so a late ack can never delete a newer row
    sends       PUBACKed sends awaiting a receipt (0: not sent yet); > 0 means "sent"
    kind        'measurement' | 'drop_report'
    envelope    the signed DSSE envelope bytes, exactly as published
    attempts    publish attempts that did not end in an ack
    refusals    PUBACKs with an error reason code (135 not authorised, 149 too large, ...)
    not_before  do not offer before this time (backoff after refusals)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

from agent.errors import ConfigError, OutboxError, SchemaError, StateDiskFull
from agent.identity import Identity
from agent.wire import envelope as wire
from agent.wire.receipts import Receipt
from agent.wire.record import MeasurementRecord, Status, Verdict

log = logging.getLogger(__name__)

DB_FILE = "outbox.sqlite3"
LOCK_FILE = "outbox.lock"
RESERVE_FILE = "outbox.reserve"
SCHEMA_VERSION = 2
# No delay the outbox sets is longer than this: a not_before further ahead means the wall
# clock went back since it was set (a Pi syncing NTP), and the row is ready now.
MAX_DEFER_S = 2 * 3600.0
REFUSED_KEPT = 1000  # rows kept in the refused table (newest)

KIND_MEASUREMENT = "measurement"
KIND_DROP_REPORT = "drop_report"

DROP_REPORT_TEST_NAME = "outbox_drop"
DROP_REPORT_TEST_VERSION = "1.0.0"
DROP_REPORT_REASON = "outbox.dropped"
DROP_REPORT_MAX_IDS = 100  # ids listed in one report; the counts are always complete
# Room kept free for the open drop report when evicting: its envelope stays under this size
# (100 ids, the longest network name the schema allows), so the bytes limit holds with it.
DROP_REPORT_RESERVE = 12 * 1024

# Persistent counters (survive restarts; shown by `status` and on the MQTT status topic).
COUNTERS = (
    "enqueued",  # measurements committed
    "published",  # rows deleted after a broker ack (measurements and drop reports)
    "dropped",  # measurements dropped because the outbox was full
    "dropped_bytes",
    "drop_reports",  # drop reports created
    "refused",  # publishes the broker refused (PUBACK reason code >= 0x80)
    "unrouted",  # PUBACK 0x10: accepted but no subscriber (kept, offered again later)
    "publish_errors",  # publishes that ended without any ack (connection lost, timeout)
    "corrupt_recovered",  # corrupt databases moved aside at open
    "sent",  # PUBACKs that marked a row sent, awaiting its receipt (receipts on)
    "resent",  # rows offered again because no receipt came in time
    "receipted",  # rows deleted because a collector said it stored them
    "collector_refused",  # rows a collector refused for good (moved to the refused table)
    "collector_retry",  # "not now" answers from a collector (kept, backed off)
    "disk_full_refused",  # measurements refused because the state filesystem was full
    "reserve_released",  # times the disk reserve was released to keep the outbox working
    "released_on_puback",  # rows deleted on a PUBACK because no collector ever sent receipts
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('measurement', 'drop_report')),
    measurement_id TEXT NOT NULL,
    start_time TEXT NOT NULL,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    refusals INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    not_before REAL NOT NULL DEFAULT 0,
    sealed INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS outbox_deferred ON outbox (not_before);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS probe_sequence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS open_drop_report (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    state TEXT NOT NULL
);
"""
# Version 2: receipts (sends), the record's boot clock, the refused table.
_SCHEMA_V2 = """
ALTER TABLE outbox ADD COLUMN sends INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN sent_at REAL;
ALTER TABLE outbox ADD COLUMN first_sent_at REAL;
ALTER TABLE outbox ADD COLUMN boot_id TEXT;
ALTER TABLE outbox ADD COLUMN boot_ts REAL;
CREATE INDEX IF NOT EXISTS outbox_measurement ON outbox (measurement_id);
CREATE TABLE IF NOT EXISTS refused (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    measurement_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    refused_at REAL NOT NULL,
    envelope BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """Bounds of the outbox.  Defaults: days of measurements on a Raspberry Pi's SD card."""

    max_count: int = 200_000
    max_bytes: int = 512 * 1024 * 1024
    # The state filesystem: new records are refused while less than min_free_bytes are free
    # (old ones keep draining); reserve_bytes are kept allocated in outbox.reserve and released
    # when the disk is full, so opening the outbox and deleting delivered rows always work.
    min_free_bytes: int = 32 * 1024 * 1024
    reserve_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_count < 1 or self.max_bytes < 1:
            raise ValueError("outbox limits must be positive")
        if self.min_free_bytes < 0 or self.reserve_bytes < 0:
            raise ValueError("outbox free-space limits must not be negative")


@dataclass(frozen=True, slots=True)
class OutboxItem:
    seq: int
    kind: str
    measurement_id: str
    envelope: bytes
    attempts: int
    refusals: int
    sends: int = 0  # PUBACKed sends so far without a receipt
    age_s: float | None = None  # seconds since commit by the boot clock (same boot only)

    @property
    def size(self) -> int:
        return len(self.envelope)


@dataclass(frozen=True, slots=True)
class OutboxStats:
    count: int
    bytes: int
    oldest_created_at: float | None
    counters: dict[str, int] = field(default_factory=dict)
    awaiting_receipt: int = 0  # rows sent (PUBACKed) whose receipt has not come yet
    refused_kept: int = 0  # rows in the refused table
    disk_free: int | None = None  # bytes free on the state filesystem

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "bytes": self.bytes,
            "oldest_created_at": self.oldest_created_at,
            "awaiting_receipt": self.awaiting_receipt,
            "refused_kept": self.refused_kept,
            "disk_free": self.disk_free,
            **self.counters,
        }


def limits_from_config(section: Mapping[str, Any]) -> OutboxLimits:
    """``[outbox]`` of the agent config: ``max_count``, ``max_mb``, ``min_free_mb`` and
    ``reserve_mb`` (all optional)."""
    table = dict(section)
    unknown = sorted(set(table) - {"max_count", "max_mb", "min_free_mb", "reserve_mb"})
    if unknown:
        raise ConfigError(f"unknown key(s) in [outbox]: {', '.join(unknown)}")
    defaults = OutboxLimits()
    count = table.get("max_count", defaults.max_count)
    mb = table.get("max_mb", defaults.max_bytes / 1_048_576)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"[outbox] max_count must be a positive integer, not {count!r}")
    if isinstance(mb, bool) or not isinstance(mb, int | float) or not 0 < mb < 1e7:
        raise ConfigError(f"[outbox] max_mb must be a positive number, not {mb!r}")
    free: dict[str, int] = {}
    for key, attr in (("min_free_mb", "min_free_bytes"), ("reserve_mb", "reserve_bytes")):
        value = table.get(key, getattr(defaults, attr) / 1_048_576)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e6:
            raise ConfigError(f"[outbox] {key} must be a number >= 0, not {value!r}")
        free[attr] = int(value * 1_048_576)
    return OutboxLimits(max_count=count, max_bytes=int(mb * 1_048_576), **free)


def disk_free(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem (None: unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


@functools.cache
def boot_id() -> str:
    """This boot's id (Linux), "" when unknown: a boot clock reading is only comparable with
    another of the same boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text("ascii").strip()
    except OSError:
        return ""


def boot_clock() -> tuple[str, float]:
    """(this boot's id, seconds since boot including suspend): a clock NTP never moves."""
    try:
        return boot_id(), time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return boot_id(), time.monotonic()


def receipt_wait(sends: int, timeout: float, maximum: float) -> float:
    """Seconds to wait for a receipt after the ``sends``-th PUBACK: doubling, at most max."""
    return float(min(maximum, timeout * 2 ** max(0, min(sends - 1, 20))))


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def refusal_backoff(refusals: int) -> float:
    """Seconds before a refused row is offered again: 30 s doubling, at most an hour.

    A refusal is usually permanent (wrong credentials, too large) but may be fixed by the
    operator; retrying forever keeps the record, the backoff keeps it from blocking the rest.
    """
    return float(min(3600, 30 * 2 ** max(0, min(refusals - 1, 10))))


class Outbox:
    """The outbox of one probe.  Thread-safe; blocking (use the ``a*`` methods from asyncio)."""

    def __init__(
        self,
        state_dir: Path,
        identity: Identity,
        limits: OutboxLimits | None = None,
        *,
        clock: Callable[[], float] = time.time,
        boot: Callable[[], tuple[str, float]] = boot_clock,
        free: Callable[[Path], int | None] = disk_free,
    ) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_FILE
        self.reserve_path = state_dir / RESERVE_FILE
        self.identity = identity
        self.limits = limits or OutboxLimits()
        self._clock = clock
        self._boot = boot
        self._free = free
        self._lock = threading.RLock()
        self._unsaved: dict[str, int] = {}  # counts not yet written (the disk was full)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = self._take_lock(state_dir / LOCK_FILE)
        try:
            # Opening may need a little room (the WAL and its index): make it if it is short.
            if self._short_of_space():
                self._release_reserve("opening the outbox on a full filesystem")
            self._db = self._open_db()
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
            ).fetchone()
            self._count: int = int(count)
            self._bytes: int = int(size)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._keep_reserve()

    # ---- free space ------------------------------------------------------------------------
    def free_bytes(self) -> int | None:
        return self._free(self.state_dir)

    def _short_of_space(self) -> bool:
        free = self.free_bytes()
        return free is not None and free < self.limits.reserve_bytes

    def _release_reserve(self, why: str) -> bool:
        """Delete the reserve file (its blocks become free).  True if there was one."""
        try:
            os.unlink(self.reserve_path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("cannot release the disk reserve %s: %s", self.reserve_path, exc)
            return False
        log.warning("state filesystem full: released the %d-byte disk reserve (%s)",
                    self.limits.reserve_bytes, why)
        self._unsaved["reserve_released"] = self._unsaved.get("reserve_released", 0) + 1
        return True

    def _keep_reserve(self) -> None:
        """(Re)create the reserve file when it is missing and the filesystem has room."""
        size = self.limits.reserve_bytes
        if size <= 0 or self.reserve_path.exists():
            return
        free = self.free_bytes()
        if free is not None and free < size + self.limits.min_free_bytes:
            return
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, size)  # real blocks, not a sparse file
            os.fsync(fd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.reserve_path)
            return
        os.close(fd)

    def _check_room(self) -> None:
        """Refuse a new record (StateDiskFull) while the filesystem is nearly full."""
        free = self.free_bytes()
        if free is None or free >= self.limits.min_free_bytes:
            return
        if free < self.limits.reserve_bytes:
            self._release_reserve("the filesystem is nearly full")
        self._refuse_full(f"{free} bytes free < {self.limits.min_free_bytes}")

    def _refuse_full(self, why: str) -> NoReturn:
        with self._lock:
            self._unsaved["disk_full_refused"] = self._unsaved.get("disk_full_refused", 0) + 1
            total = self._unsaved["disk_full_refused"]
        if total == 1 or total % 100 == 0:
            log.error("state filesystem %s is full (%s): new measurements refused (%d so "
                      "far); the outbox keeps draining", self.state_dir, why, total)
        raise StateDiskFull(
            f"state filesystem full ({why}): measurement refused; stored ones still drain"
        )

    # ---- opening ---------------------------------------------------------------------------
    @staticmethod
    def _take_lock(path: Path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutboxError(
                f"{path.parent} is in use by another vigil-agent (outbox locked)"
            ) from None
        return fd

    def _open_db(self) -> sqlite3.Connection:
        try:
            return self._connect_and_check()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _looks_corrupt(exc):
                raise OutboxError(f"cannot open outbox {self.path}: {exc}") from None
            # A corrupt file is kept for manual recovery, never deleted; the agent goes on
            # measuring into a fresh outbox.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self._clock())}")
            log.error("outbox %s is corrupt (%s); moved aside to %s", self.path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, Path(str(aside) + suffix))
            try:
                db = self._connect_and_check()
            except sqlite3.DatabaseError as exc2:
                raise OutboxError(f"cannot create outbox {self.path}: {exc2}") from None
            self._bump_now(db, {"corrupt_recovered": 1})
            return db

    def _connect_and_check(self) -> sqlite3.Connection:
        # A new outbox is created 0600 before SQLite opens it (SQLite gives its -wal and -shm
        # files the database's mode): never readable by others, not even for a moment.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600))
        db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"outbox {self.path}: cannot enable WAL (got {mode})")
            db.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA journal_size_limit=67108864")
            # Debian builds zero every freed page (secure_delete on): deleting a delivered
            # row would then write more to the WAL than it frees, which a full disk refuses.
            db.execute("PRAGMA secure_delete=FAST")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox {self.path} has schema {version}, newer than this agent's "
                    f"{SCHEMA_VERSION}: upgrade vigil-agent"
                )
            # A current schema is opened without writing anything: on a full disk the
            # outbox must still open, so its records can drain.
            if version < SCHEMA_VERSION:
                self._migrate(db, version)
        except BaseException:
            db.close()
            raise
        # The WAL file was just created: make its directory entry durable too.
        _fsync_dir(self.state_dir)
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection, version: int) -> None:
        """Create or upgrade the schema.  ``_SCHEMA`` is idempotent (CREATE ... IF NOT
        EXISTS) and runs at every upgrade, so a table added to it is created in old outboxes
        too; the ALTERs of version 2 run once."""
        db.execute("BEGIN IMMEDIATE")
        script = _SCHEMA + (_SCHEMA_V2 if version < 2 else "")
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
        db.executemany(
            "INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)",
            [(c,) for c in COUNTERS],
        )
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")

    # ---- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction under the thread lock; errors become OutboxError.

        Counts that could not be written earlier (the disk was full) ride along.  "Disk full"
        becomes StateDiskFull, after releasing the reserve so that a retry can succeed.
        """
        with self._lock:
            db = self._db
            unsaved = dict(self._unsaved)
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    if unsaved:
                        self._bump(db, unsaved)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                if _is_full(exc):
                    self._release_reserve(f"write failed: {exc}")
                    raise StateDiskFull(f"outbox {self.path}: {exc}") from None
                raise OutboxError(f"outbox {self.path}: {exc}") from None
            for name, n in unsaved.items():
                left = self._unsaved.get(name, 0) - n
                if left > 0:
                    self._unsaved[name] = left
                else:
                    self._unsaved.pop(name, None)

    def _write(self, fn: Callable[[], Any]) -> Any:
        """Run a transaction that frees or marks rows; if the disk is full, once more after
        the reserve was released (deleting delivered rows must work on a full disk)."""
        try:
            result = fn()
        except StateDiskFull:
            result = fn()
        self._shrink_wal()
        return result

    def _shrink_wal(self) -> None:
        """Short of space: checkpoint and truncate the WAL after each write, so deletes give
        their room back at once (the automatic checkpoint waits for 4 MB of WAL)."""
        free = self.free_bytes()
        if free is None or free >= self.limits.min_free_bytes:
            return
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    @staticmethod
    def _bump(db: sqlite3.Connection, deltas: dict[str, int]) -> None:
        db.executemany(
            "UPDATE counters SET value = value + ? WHERE name = ?",
            [(v, k) for k, v in deltas.items() if v],
        )

    def _bump_now(self, db: sqlite3.Connection, deltas: dict[str, int]) -> None:
        db.execute("BEGIN IMMEDIATE")
        self._bump(db, deltas)
        db.execute("COMMIT")

    def sign(self, payload: bytes) -> bytes:
        return wire.sign_envelope(payload, self.identity.private_key, self.identity.probe_id)

    def enqueue(self, record: MeasurementRecord) -> int:
        """Sign the record and commit it durably; returns its sequence number.

        Raises SchemaError when the record has no JSON encoding (nothing is stored: there is
        nothing valid to store) and OutboxError when the disk refuses the write.
        """
        if record.probe_id != self.identity.probe_id:
            raise SchemaError(
                f"record claims probe {record.probe_id!r}, this probe is "
                f"{self.identity.probe_id!r}: the collector would reject it"
            )
        self._check_room()  # first: nothing is written for a record that will be refused
        if record.probe_seq is None:
            record = replace(record, probe_seq=self._next_probe_seq())
        payload = wire.encode_record(record.to_json())
        envelope = self.sign(payload)
        now = self._clock()
        boot_id, boot_ts = self._boot()
        with self._lock:  # the totals change with the commit, never without it
            try:
                seq, self._count, self._bytes = self._enqueue_tx(
                    record, envelope, now, boot_id, boot_ts
                )
            except StateDiskFull as exc:
                self._refuse_full(str(exc))
        return seq

    def _next_probe_seq(self) -> int:
        """The next per-probe sequence number (1, 2, 3, ...), durable across restarts: the
        collector counts the numbers it never received.  A number whose record then fails to
        be written is simply skipped (counted as missing)."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO probe_sequence (id, last) VALUES (1, 0)")
            db.execute("UPDATE probe_sequence SET last = last + 1 WHERE id = 1")
            return int(db.execute("SELECT last FROM probe_sequence WHERE id = 1").fetchone()[0])

    def _enqueue_tx(
        self, record: MeasurementRecord, envelope: bytes, now: float, boot_id: str,
        boot_ts: float,
    ) -> tuple[int, int, int]:
        """Insert (and evict) in one transaction; (seq, count, bytes) once committed."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO outbox (kind, measurement_id, start_time, created_at, size, "
                "envelope, boot_id, boot_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    KIND_MEASUREMENT,
                    record.measurement_id,
                    record.measurement_start_time,
                    now,
                    len(envelope),
                    envelope,
                    boot_id,
                    boot_ts,
                ),
            )
            seq = int(cur.lastrowid or 0)
            self._bump(db, {"enqueued": 1})
            count, size = self._count + 1, self._bytes + len(envelope)
            if count > self.limits.max_count or size > self.limits.max_bytes:
                count, size = self._evict(db, record, now, count, size, protect=seq)
        return seq, count, size

    def _evict(
        self,
        db: sqlite3.Connection,
        trigger: MeasurementRecord,
        now: float,
        count: int,
        size: int,
        protect: int,
    ) -> tuple[int, int]:
        """Drop the oldest measurements until within limits; record the drop.  In ``db``'s tx."""
        dropped: list[tuple[int, str, str, int]] = []
        cursor = db.execute(
            "SELECT seq, measurement_id, start_time, size FROM outbox "
            "WHERE kind = ? AND seq != ? ORDER BY seq",
            (KIND_MEASUREMENT, protect),
        )
        report = self._load_open_report(db)
        # Leave room for the drop report (a new row, or the open one growing).
        reserve_count = 0 if report is not None else 1
        for seq, mid, start, row_size in cursor:
            if (
                count + reserve_count <= self.limits.max_count
                and size + DROP_REPORT_RESERVE <= self.limits.max_bytes
            ):
                break
            dropped.append((seq, mid, start, row_size))
            count -= 1
            size -= row_size
        cursor.close()
        if not dropped:
            # Only the new record itself is over the limit (or everything else is a report):
            # keep it anyway; a single record never exceeds MAX_ENVELOPE_BYTES.
            return count, size
        db.executemany("DELETE FROM outbox WHERE seq = ?", [(d[0],) for d in dropped])
        dropped_bytes = sum(d[3] for d in dropped)
        self._bump(db, {"dropped": len(dropped), "dropped_bytes": dropped_bytes})
        state = report[1] if report is not None else {
            "report_id": wire.uuid7(int(now * 1000)),
            "dropped_count": 0,
            "dropped_bytes": 0,
            "first_dropped_at": rfc3339(now),
            "oldest_dropped_start_time": None,
            "newest_dropped_start_time": None,
            "dropped_measurement_ids": [],
            "dropped_ids_truncated": False,
        }
        before = int(state["dropped_count"])
        state["dropped_count"] += len(dropped)
        # Logged when a report opens and every 1000 drops after: a probe offline for days
        # would otherwise log a line per measurement.
        if before == 0 or before // 1000 != state["dropped_count"] // 1000:
            log.warning(
                "outbox full (max %d records / %d bytes): %d oldest measurement(s) dropped "
                "so far, reported in drop report %s",
                self.limits.max_count,
                self.limits.max_bytes,
                state["dropped_count"],
                state["report_id"],
            )
        state["dropped_bytes"] += dropped_bytes
        state["last_dropped_at"] = rfc3339(now)
        starts = [d[2] for d in dropped]
        oldest, newest = state["oldest_dropped_start_time"], state["newest_dropped_start_time"]
        state["oldest_dropped_start_time"] = min([*starts, *([oldest] if oldest else [])])
        state["newest_dropped_start_time"] = max([*starts, *([newest] if newest else [])])
        ids: list[str] = state["dropped_measurement_ids"]
        room = DROP_REPORT_MAX_IDS - len(ids)
        ids.extend(d[1] for d in dropped[: max(0, room)])
        if len(dropped) > room:
            state["dropped_ids_truncated"] = True
        envelope = self.sign(wire.encode_record(self._drop_record(state, trigger).to_json()))
        if report is None:
            cur = db.execute(
                "INSERT INTO outbox (kind, measurement_id, start_time, created_at, size, "
                "envelope, sealed) VALUES (?, ?, ?, ?, ?, ?, 0)",
                (
                    KIND_DROP_REPORT,
                    state["report_id"],
                    state["first_dropped_at"],
                    now,
                    len(envelope),
                    envelope,
                ),
            )
            report_seq = int(cur.lastrowid or 0)
            self._bump(db, {"drop_reports": 1})
            count += 1
            size += len(envelope)
        else:
            report_seq = report[0]
            old_size = db.execute("SELECT size FROM outbox WHERE seq = ?", (report_seq,))
            size += len(envelope) - int(old_size.fetchone()[0])
            db.execute(
                "UPDATE outbox SET envelope = ?, size = ? WHERE seq = ?",
                (envelope, len(envelope), report_seq),
            )
        db.execute(
            "INSERT OR REPLACE INTO open_drop_report (id, seq, state) VALUES (1, ?, ?)",
            (report_seq, json.dumps(state)),
        )
        return count, size

    @staticmethod
    def _load_open_report(db: sqlite3.Connection) -> tuple[int, dict[str, Any]] | None:
        row = db.execute("SELECT seq, state FROM open_drop_report WHERE id = 1").fetchone()
        if row is None:
            return None
        state: dict[str, Any] = json.loads(row[1])
        return int(row[0]), state

    def _drop_record(self, state: dict[str, Any], trigger: MeasurementRecord) -> MeasurementRecord:
        """The drop report as a measurement record: flows, is verified and stored like one."""
        return MeasurementRecord(
            measurement_id=state["report_id"],
            test_name=DROP_REPORT_TEST_NAME,
            test_version=DROP_REPORT_TEST_VERSION,
            input=None,
            category_code=None,
            probe_id=self.identity.probe_id,
            probe_asn=trigger.probe_asn,
            probe_cc=trigger.probe_cc,
            probe_network_name=trigger.probe_network_name,
            resolver_asn=trigger.resolver_asn,
            measurement_start_time=state["first_dropped_at"],
            test_runtime=0.0,
            software_name=trigger.software_name,
            software_version=trigger.software_version,
            test_keys={
                "reason": "outbox_full",
                "outbox_max_count": self.limits.max_count,
                "outbox_max_bytes": self.limits.max_bytes,
                **{k: v for k, v in state.items() if k != "report_id"},
            },
            verdict=Verdict(status=Status.INCONCLUSIVE, reason=DROP_REPORT_REASON),
            annotations={"record_kind": "outbox_drop_report"},
        )

    # ---- reading for the publisher ---------------------------------------------------------
    def take(self, limit: int, after_seq: int = 0) -> list[OutboxItem]:
        """The next ``limit`` rows ready to publish, oldest first, with ``seq > after_seq``.

        Taking an open drop report seals it: from now on it is immutable (what the broker may
        already hold must not change), and the next drop opens a new report.
        """
        now = self._clock()
        boot_id, boot_now = self._boot()
        with self._lock:
            # Read-only (works on a full disk).  "+not_before": walk the primary key in seq
            # order, do not use the index.  A not_before beyond MAX_DEFER_S: the clock went
            # back since it was set; the row is ready.
            rows = self._db.execute(
                "SELECT seq, kind, measurement_id, envelope, attempts, refusals, sealed, "
                "sends, boot_id, boot_ts FROM outbox WHERE seq > ? AND "
                "(+not_before <= ? OR +not_before > ?) ORDER BY seq LIMIT ?",
                (after_seq, now, now + MAX_DEFER_S, limit),
            ).fetchall()
            unsealed = [r[0] for r in rows if not r[6]]
            if unsealed:
                self._write(lambda: self._seal(unsealed))
        return [
            OutboxItem(
                r[0], r[1], r[2], bytes(r[3]), r[4], r[5], sends=r[7],
                age_s=(max(0.0, boot_now - r[9])
                       if boot_id and r[8] == boot_id and r[9] is not None else None),
            )
            for r in rows
        ]

    def _seal(self, seqs: list[int]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE outbox SET sealed = 1 WHERE seq = ?", [(q,) for q in seqs])
            db.execute("DELETE FROM open_drop_report")

    # ---- receipts ----------------------------------------------------------------------------
    def mark_sent(
        self, seqs: Iterable[int], timeout: float, maximum: float, fallback: float = 0.0
    ) -> int:
        """The broker PUBACKed these rows: *sent*, held until a receipt; offered again if
        none comes within receipt_wait(sends) seconds.

        ``fallback`` > 0: while this outbox has never had an answer from a collector (no
        receipt at all: a collector older than receipts, or a broker ACL without the
        receipts topic), a row first sent at least ``fallback`` seconds ago is deleted on
        its PUBACK, as before receipts, and counted as ``released_on_puback``.  Returns how
        many rows were released so.
        """
        seqs = list(seqs)
        released = 0
        for i in range(0, len(seqs), 500):  # stay under SQLite's variable limit
            chunk = seqs[i : i + 500]
            released += int(self._write(
                partial(self._mark_sent_tx, chunk, timeout, maximum, fallback)
            ))
        return released

    def _mark_sent_tx(
        self, seqs: list[int], timeout: float, maximum: float, fallback: float
    ) -> int:
        now = self._clock()
        with self._lock:
            with self._tx() as db:
                rows = db.execute(
                    "SELECT seq, sends, size, COALESCE(first_sent_at, ?) FROM outbox "
                    f"WHERE seq IN ({','.join('?' * len(seqs))})",
                    [now, *seqs],
                ).fetchall()
                release: list[tuple[int, int]] = []
                if fallback > 0 and rows and not self._ever_answered(db):
                    release = [(q, size) for q, _, size, first in rows if first + fallback <= now]
                gone = {q for q, _ in release}
                db.executemany(
                    "UPDATE outbox SET sends = ?, sent_at = ?, not_before = ?, "
                    "first_sent_at = COALESCE(first_sent_at, ?) WHERE seq = ?",
                    [(n + 1, now, now + receipt_wait(n + 1, timeout, maximum), now, q)
                     for q, n, _, _ in rows if q not in gone],
                )
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(q,) for q in gone])
                self._bump(db, {"sent": len(rows), "resent": sum(1 for _, n, _, _ in rows if n),
                                "released_on_puback": len(gone), "published": len(gone)})
            self._count -= len(release)
            self._bytes -= sum(size for _, size in release)
        if release:
            log.warning("no collector has ever sent a receipt to this probe: %d record(s) "
                        "released on the broker's PUBACK alone (is the collector older than "
                        "receipts, or the broker ACL without the receipts topic?)", len(release))
        return len(release)

    @staticmethod
    def _ever_answered(db: sqlite3.Connection) -> bool:
        row = db.execute(
            "SELECT COALESCE(SUM(value), 0) FROM counters WHERE name IN "
            "('receipted', 'collector_refused', 'collector_retry')"
        ).fetchone()
        return bool(row[0])

    def apply_receipt(self, receipt: Receipt, lag: float = 120.0) -> dict[str, int]:
        """A collector's receipt: delete what it stored, move what it refused to the refused
        table, back off what it asked to retry.  Ids not held here are ignored (a duplicate's
        receipt).  Returns counts by outcome.

        A receipt also shows the collectors are back: a row sent more than ``lag`` seconds
        before the oldest row receipted now, and still without its receipt, was lost (a
        broker queue is first in, first out) and is made ready at once ("pulled") instead of
        waiting out its doubled receipt timeout.
        """
        ids = [*receipt.stored, *receipt.refused, *receipt.retry]
        if not ids:
            return {"stored": 0, "refused": 0, "retry": 0, "pulled": 0}
        return dict(self._write(lambda: self._receipt_tx(receipt, ids, lag)))

    def _receipt_tx(self, receipt: Receipt, ids: list[str], lag: float) -> dict[str, int]:
        now = self._clock()
        out = {"stored": 0, "refused": 0, "retry": 0, "pulled": 0}
        oldest_sent: float | None = None
        with self._lock:
            freed = removed = 0
            with self._tx() as db:
                held: dict[str, list[tuple[int, int, int, float | None]]] = {}
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    for seq, mid, size, refusals, sent_at in db.execute(
                        "SELECT seq, measurement_id, size, refusals, sent_at FROM outbox "
                        f"WHERE measurement_id IN ({','.join('?' * len(chunk))})",
                        chunk,
                    ):
                        held.setdefault(mid, []).append((seq, size, refusals, sent_at))
                gone: list[int] = []
                for mid in receipt.stored:
                    for seq, size, _, sent_at in held.pop(mid, []):
                        if sent_at is not None:
                            oldest_sent = min(sent_at, oldest_sent or sent_at)
                        gone.append(seq)
                        freed += size
                        out["stored"] += 1
                for mid, why in receipt.refused.items():
                    for seq, size, _, _ in held.pop(mid, []):
                        db.execute(
                            "INSERT OR REPLACE INTO refused (seq, kind, measurement_id, reason, "
                            "refused_at, envelope) SELECT seq, kind, measurement_id, ?, ?, "
                            "envelope FROM outbox WHERE seq = ?",
                            (why, now, seq),
                        )
                        gone.append(seq)
                        freed += size
                        out["refused"] += 1
                        log.error("collector %s refused measurement %s for good: %s; moved "
                                  "to the refused table", receipt.by or "?", mid, why)
                for mid, why in receipt.retry.items():
                    for seq, _, refusals, _ in held.pop(mid, []):
                        db.execute(
                            "UPDATE outbox SET refusals = ?, last_error = ?, not_before = ? "
                            "WHERE seq = ?",
                            (refusals + 1, f"collector: {why}"[:200],
                             now + refusal_backoff(refusals + 1), seq),
                        )
                        out["retry"] += 1
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(q,) for q in gone])
                if oldest_sent is not None:
                    out["pulled"] = db.execute(
                        "UPDATE outbox SET not_before = ? WHERE sends > 0 AND sent_at < ? "
                        "AND not_before > ?", (now, oldest_sent - lag, now),
                    ).rowcount
                removed = len(gone)
                if out["refused"]:
                    db.execute(
                        "DELETE FROM refused WHERE seq NOT IN "
                        "(SELECT seq FROM refused ORDER BY seq DESC LIMIT ?)", (REFUSED_KEPT,)
                    )
                self._bump(db, {"receipted": out["stored"], "published": out["stored"],
                                "collector_refused": out["refused"],
                                "collector_retry": out["retry"]})
            self._count -= removed
            self._bytes -= freed
        if removed:
            self._keep_reserve()
        return out

    def awaiting_receipt(self) -> int:
        """Rows sent (PUBACKed) and not yet receipted."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox WHERE sends > 0")
                       .fetchone()[0])

    def ack(self, seqs: Iterable[int]) -> int:
        """The broker acknowledged these rows: delete them (one transaction).  Returns deleted."""
        seqs = list(seqs)
        if not seqs:
            return 0
        deleted = int(self._write(partial(self._ack_tx, seqs)))
        if deleted:
            self._keep_reserve()
        return deleted

    def _ack_tx(self, seqs: list[int]) -> int:
        deleted = freed = 0
        with self._lock:  # the totals change with the commit, never without it
            with self._tx() as db:
                for i in range(0, len(seqs), 500):  # stay under SQLite's variable limit
                    chunk = seqs[i : i + 500]
                    q = ",".join("?" * len(chunk))
                    count, size = db.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox "
                        f"WHERE seq IN ({q})",
                        chunk,
                    ).fetchone()
                    db.execute(f"DELETE FROM outbox WHERE seq IN ({q})", chunk)
                    deleted += int(count)
                    freed += int(size)
                self._bump(db, {"published": deleted})
            self._count -= deleted
            self._bytes -= freed
        return deleted

    def refused(self, seq: int, reason_code: int, why: str) -> None:
        """The broker refused this row (PUBACK reason code >= 0x80): keep it, back off."""
        self._write(partial(self._refused_tx, seq, reason_code, why))

    def _refused_tx(self, seq: int, reason_code: int, why: str) -> None:
        with self._tx() as db:
            row = db.execute("SELECT refusals FROM outbox WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return
            refusals = int(row[0]) + 1
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, refusals = ?, last_error = ?, "
                "not_before = ? WHERE seq = ?",
                (refusals, f"{reason_code}: {why}", self._clock() + refusal_backoff(refusals), seq),
            )
            self._bump(db, {"refused": 1})

    def unrouted(self, seqs: Iterable[int], delay: float) -> None:
        """PUBACK 0x10 (no matching subscribers): the broker would drop them.  Keep, retry later."""
        self._retry_later(seqs, "16: no matching subscribers", delay, "unrouted")

    def failed(self, seqs: Iterable[int], why: str, delay: float = 0.0) -> None:
        """Publishing ended without an ack (connection lost, timeout): keep; count."""
        self._retry_later(seqs, why[:200], delay, "publish_errors")

    def _retry_later(self, seqs: Iterable[int], error: str, delay: float, counter: str) -> None:
        """Keep the records, note the attempt and ``error``, hold them back ``delay`` seconds."""
        seqs = list(seqs)
        if seqs:
            self._write(partial(self._retry_tx, seqs, error, delay, counter))

    def _retry_tx(self, seqs: list[int], error: str, delay: float, counter: str) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, not_before = ? "
                "WHERE seq = ?",
                [(error, self._clock() + delay, s) for s in seqs],
            )
            self._bump(db, {counter: len(seqs)})

    # ---- looking -----------------------------------------------------------------------------
    def stats(self) -> OutboxStats:
        """Cheap: totals are kept in memory, only the counters are read."""
        with self._lock:
            row = self._db.execute(
                "SELECT created_at FROM outbox ORDER BY seq LIMIT 1"
            ).fetchone()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            for name, n in self._unsaved.items():
                counters[name] = counters.get(name, 0) + n
            awaiting, refused = _receipt_counts(self._db)
            return OutboxStats(
                self._count, self._bytes, None if row is None else row[0], counters,
                awaiting_receipt=awaiting, refused_kept=refused, disk_free=self.free_bytes(),
            )

    def has_ready(self) -> bool:
        """Whether some row may be offered now (read-only, unlike take())."""
        with self._lock:
            now = self._clock()
            row = self._db.execute(
                "SELECT 1 FROM outbox WHERE +not_before <= ? OR +not_before > ? LIMIT 1",
                (now, now + MAX_DEFER_S),
            ).fetchone()
        return row is not None

    def next_ready_at(self) -> float | None:
        """When the earliest deferred row becomes ready (None when nothing is deferred)."""
        with self._lock:
            now = self._clock()
            row = self._db.execute(
                "SELECT MIN(not_before) FROM outbox WHERE not_before > ? AND not_before <= ?",
                (now, now + MAX_DEFER_S),
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    # ---- asyncio front ---------------------------------------------------------------------
    async def aenqueue(self, record: MeasurementRecord) -> int:
        return await asyncio.to_thread(self.enqueue, record)

    async def atake(self, limit: int, after_seq: int = 0) -> list[OutboxItem]:
        return await asyncio.to_thread(self.take, limit, after_seq)

    async def aack(self, seqs: Iterable[int]) -> int:
        return await asyncio.to_thread(self.ack, list(seqs))

    # ---- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._lock_fd < 0:
                return
            if self._unsaved:  # counts the full disk kept from being written, if it can now
                with contextlib.suppress(OutboxError), self._tx():
                    pass
            self._db.close()
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _receipt_counts(db: sqlite3.Connection) -> tuple[int, int]:
    """(rows awaiting a receipt, rows in the refused table); zeros for a schema-1 outbox."""
    try:
        awaiting = db.execute("SELECT COUNT(*) FROM outbox WHERE sends > 0").fetchone()[0]
        refused = db.execute("SELECT COUNT(*) FROM refused").fetchone()[0]
    except sqlite3.OperationalError:  # written by an agent older than receipts
        return 0, 0
    return int(awaiting), int(refused)


def _stats(db: sqlite3.Connection, state_dir: Path) -> OutboxStats:
    count, size, oldest = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created_at) FROM outbox"
    ).fetchone()
    counters = {name: int(value) for name, value in db.execute("SELECT name, value FROM counters")}
    awaiting, refused = _receipt_counts(db)
    return OutboxStats(int(count), int(size), oldest, counters, awaiting_receipt=awaiting,
                       refused_kept=refused, disk_free=disk_free(state_dir))


def read_stats(state_dir: Path) -> OutboxStats | None:
    """Stats of another process's outbox, read-only (None when there is no outbox yet)."""
    path = state_dir / DB_FILE
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot read outbox {path}: {exc}") from None
    try:
        return _stats(db, state_dir)
    except sqlite3.Error as exc:
        if "no such table: outbox" in str(exc):
            return None  # being created by the agent this very moment
        raise OutboxError(f"cannot read outbox {path}: {exc}") from None
    finally:
        db.close()


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(exc).lower() or (
        isinstance(getattr(exc, "__cause__", None), OSError)
        and getattr(exc.__cause__, "errno", None) == errno.ENOSPC
    )


def _looks_corrupt(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutboxSink:
    """The runner's RecordSink: ``await put(record)`` returns once the record is on disk.

    ``on_commit`` (e.g. ``Publisher.notify``) is called on the event loop after each commit so
    the publisher sends without polling.
    """

    def __init__(self, outbox: Outbox, on_commit: Callable[[], None] | None = None) -> None:
        self.outbox = outbox
        self._on_commit = on_commit

    async def put(self, record: MeasurementRecord) -> None:
        await self.outbox.aenqueue(record)
        if self._on_commit is not None:
            self._on_commit()
