"""The storage contract every backend implements (SQLite embedded, PostgreSQL for scale).

The interface is synchronous on purpose: both backends are blocking drivers, and the ingest
loop runs every store call on one dedicated thread (``collector.store.aio.AsyncStore``) so
the event loop keeps reading the broker while a batch commits.  Keeping one interface and no
backend-specific calls outside ``collector/store/`` is what lets an operator move from one
file to a database server without touching the rest of the collector.

Failures the caller can do something about are typed:

    StoreError
    ├── StoreUnavailable    the database cannot be reached or written right now: retry later
    │                       (the ingest keeps the messages unacknowledged meanwhile)
    ├── ProbeExists         enrolling a probe id that is already enrolled (maybe with another key)
    └── UnknownProbe        revoking a probe id that was never enrolled
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from agent.errors import UsageError, VigilError
from collector.store.rollups import AggDimension, AggFilter, Aggregation

# A quarantined message keeps at most this many raw bytes (plus its full length and SHA-256):
# an attacker sending huge messages must not be able to fill the collector's disk.
QUARANTINE_MAX_RAW = 65_536
# Rejected messages whose bytes were not kept because the quarantine was full: counted among
# the rejection counters under this name (the message itself is counted under its reason).
QUARANTINE_DROPPED = "quarantine_dropped"


@dataclass(frozen=True, slots=True)
class QuarantineLimits:
    """Bounds of the quarantine, in rows and raw bytes, per probe and in total.

    A message over a bound is still counted under its rejection reason, and under
    ``quarantine_dropped``; only its bytes are not kept.  The first bytes kept are kept (drop
    newest): evidence of the start of an attack is worth more than its thousandth repeat.
    Worst case on disk: ``total_bytes`` plus about 1 kB of metadata per row.
    """

    per_probe_rows: int = 1_000
    per_probe_bytes: int = 8 * 1_048_576
    total_rows: int = 50_000
    total_bytes: int = 512 * 1_048_576


class StoreError(VigilError):
    """Something went wrong in the storage layer."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or written now; the operation may succeed later."""


class ProbeExists(StoreError, UsageError):
    """The probe id is already enrolled."""


class UnknownProbe(StoreError, UsageError):
    """The probe id is not enrolled."""


class Dimension(enum.StrEnum):
    """What ``count_by`` can group on; the values are the CLI/API names."""

    VERDICT = "verdict"  # verdict status: ok, blocked, throttled, down, inconclusive
    BLOCKING = "blocking"  # dns, tcp_ip, tls, ... ("" when not blocked)
    COUNTRY = "country"  # probe_cc
    NETWORK = "network"  # probe_asn
    DOMAIN = "domain"  # host of the tested URL
    PROBE = "probe"  # probe_id
    TEST = "test"  # test_name


def utc_from_ts(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """An enrolled probe.  ``public_key`` is the raw 32-byte Ed25519 key."""

    probe_id: str
    public_key: bytes
    note: str
    enrolled_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class MeasurementRow:
    """A verified measurement ready to store: indexed columns plus the signed bytes.

    ``payload`` are the record bytes exactly as signed and ``signature`` the raw Ed25519
    signature, so an exported row can be re-verified by anyone (agent.wire.envelope.pae).
    """

    measurement_id: str
    probe_id: str
    test_name: str
    input: str | None
    domain: str | None
    category_code: str | None
    probe_cc: str
    probe_asn: str
    probe_network_name: str
    status: str
    blocking: str | None
    reason: str
    confirmed: bool
    start_ts: float  # measurement_start_time, Unix seconds
    received_ts: float  # when the collector accepted it, Unix seconds
    payload_type: str
    payload: bytes
    signature: bytes
    probe_seq: int | None = None  # the probe's sequence number, when the record carries one

    def column_values(self, *, confirmed_as_int: bool = False) -> tuple[object, ...]:
        """The row's values in the ``measurements`` column order both stores write.

        One place keeps the order, so the SQLite insert and the PostgreSQL COPY cannot
        drift apart. ``confirmed_as_int`` stores the flag as 0/1 for SQLite, which has no
        boolean type; PostgreSQL's binary COPY wants a real bool.
        """
        return (
            self.measurement_id,
            self.probe_id,
            self.test_name,
            self.input,
            self.domain,
            self.category_code,
            self.probe_cc,
            self.probe_asn,
            self.probe_network_name,
            self.status,
            self.blocking,
            self.reason,
            (1 if self.confirmed else 0) if confirmed_as_int else self.confirmed,
            self.start_ts,
            self.received_ts,
            self.payload_type,
            self.payload,
            self.signature,
            self.probe_seq,
        )


@dataclass(frozen=True, slots=True)
class DeliveryGaps:
    """Per probe: the highest ``probe_seq`` stored, how many distinct numbers arrived, and how
    many below the highest never did (lost on the way, or dropped by a full probe outbox)."""

    probe_id: str
    last_seq: int
    received: int

    @property
    def missing(self) -> int:
        return max(0, self.last_seq - self.received)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A probe's status message ("online" with counters, or its Last Will "offline")."""

    probe_id: str
    state: str  # "online", "offline" or "unknown"
    payload: bytes
    received_ts: float


@dataclass(frozen=True, slots=True)
class QuarantineItem:
    """A rejected message, raw bytes kept (up to QUARANTINE_MAX_RAW) so nothing is lost."""

    reason: str
    detail: str
    topic: str
    raw: bytes
    received_ts: float
    probe_id: str | None = None  # the probe the topic names, if any (not proof of origin)


@dataclass(frozen=True, slots=True)
class QuarantinedRow:
    id: int
    reason: str
    detail: str
    topic: str
    probe_id: str | None
    size: int
    sha256: str
    raw: bytes  # possibly truncated: compare len(raw) with size
    received_at: datetime


@dataclass(frozen=True, slots=True)
class InsertResult:
    """Outcome of inserting a batch: how many rows were new, which ids were already stored.

    ``conflicts`` are duplicates whose stored bytes differ from the new ones (same
    measurement_id, different content): never overwritten, and quarantined by write_batch.
    """

    new: int
    duplicates: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IngestBatch:
    """Everything one ingest batch writes, committed in one transaction."""

    measurements: Sequence[MeasurementRow] = ()
    statuses: Sequence[StatusUpdate] = ()
    rejections: Sequence[QuarantineItem] = ()


@dataclass(frozen=True, slots=True)
class Filter:
    """Restricts queries; every field is optional and they combine with AND."""

    since: datetime | None = None  # measurement_start_time >= since
    until: datetime | None = None  # measurement_start_time < until
    probe_cc: str | None = None
    probe_asn: str | None = None
    domain: str | None = None
    status: str | None = None
    probe_id: str | None = None
    test_name: str | None = None
    blocking: str | None = None  # "dns", "tls", ...; "" matches measurements without blocking
    input: str | None = None  # the tested input, exactly
    category_code: str | None = None
    confirmed: bool | None = None
    probe_network_name: str | None = None
    failure: str | None = None  # verdict reason, exactly or as a dotted prefix ("tls")


@dataclass(frozen=True, slots=True)
class MeasurementSummary:
    """One stored measurement as listed by queries (without the raw bytes)."""

    measurement_id: str
    probe_id: str
    test_name: str
    input: str | None
    domain: str | None
    probe_cc: str
    probe_asn: str
    status: str
    blocking: str | None
    reason: str
    confirmed: bool
    start_time: datetime
    received_at: datetime


@dataclass(frozen=True, slots=True)
class StoredMeasurement:
    """A stored measurement with the signed bytes, for export and re-verification."""

    summary: MeasurementSummary
    payload_type: str
    payload: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class ProbeActivity:
    """When each probe was last heard from: the raw material of outage detection."""

    probe_id: str
    revoked: bool
    last_measurement_start: datetime | None
    last_received_at: datetime | None
    measurements: int
    status: str | None = None
    status_at: datetime | None = None
    probe_cc: str | None = None  # from the probe's latest measurement
    probe_asn: str | None = None


@dataclass(frozen=True, slots=True)
class ProbeSighting:
    """A sign of life or death at collector time ``t`` (Unix seconds), for outage detection.

    ``kind``: "heartbeat" (a status message), "measurement" (at most one per probe per bucket)
    or "offline" (the probe's Last Will or clean disconnect on the status topic).
    """

    probe_id: str
    t: float
    kind: str


@dataclass(frozen=True, slots=True)
class TimelineBucket:
    """Measurements per time bucket and group (e.g. per hour per network)."""

    bucket_start: datetime
    key: str
    total: int
    blocked: int  # status blocked or throttled
    down: int


@dataclass(frozen=True, slots=True)
class Overview:
    measurements: int
    probes: int
    quarantined: int
    rejections: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class Store(Protocol):
    """One storage backend.  Not thread-safe: use it from one thread at a time."""

    url: str

    # ---- lifecycle ----------------------------------------------------------------------
    def schema_version(self) -> int: ...
    def close(self) -> None: ...

    # ---- probes -------------------------------------------------------------------------
    def add_probe(self, probe_id: str, public_key: bytes, note: str = "") -> ProbeRecord: ...
    def list_probes(self) -> list[ProbeRecord]: ...
    def revoke_probe(self, probe_id: str) -> ProbeRecord: ...
    def get_probe(self, probe_id: str) -> ProbeRecord | None: ...

    # ---- ingest -------------------------------------------------------------------------
    def insert_measurements(self, rows: Sequence[MeasurementRow]) -> InsertResult: ...
    def quarantine(self, items: Sequence[QuarantineItem]) -> None: ...
    def count_rejections(self, counts: Mapping[str, int]) -> None: ...
    def write_batch(self, batch: IngestBatch) -> InsertResult: ...

    # ---- queries ------------------------------------------------------------------------
    def rejection_counts(self) -> dict[str, int]: ...

    def delivery_gaps(self) -> dict[str, DeliveryGaps]: ...
    def recent(self, limit: int = 20, where: Filter | None = None) -> list[MeasurementSummary]: ...
    def count_by(
        self, dimension: Dimension, where: Filter | None = None, limit: int = 50
    ) -> list[tuple[str, int]]: ...
    def measurement_count(self, where: Filter | None = None) -> int: ...
    def get_measurement(self, measurement_id: str) -> StoredMeasurement | None: ...
    def measurements_page(
        self,
        where: Filter | None = None,
        limit: int = 100,
        after: str | None = None,
        descending: bool = True,
    ) -> list[MeasurementSummary]: ...
    def export_page(
        self, where: Filter | None = None, limit: int = 500, after: str | None = None
    ) -> list[StoredMeasurement]: ...
    def quarantined(self, limit: int = 20, reason: str | None = None) -> list[QuarantinedRow]: ...
    def last_seen(self) -> list[ProbeActivity]: ...
    def timeline(
        self, bucket_seconds: int, dimension: Dimension, where: Filter | None = None
    ) -> list[TimelineBucket]: ...
    def sightings(
        self, since: datetime, until: datetime, bucket_seconds: int = 60
    ) -> list[ProbeSighting]: ...
    def overview(self) -> Overview: ...

    # ---- archive: aggregates, counts, retention ------------------------------------------
    def aggregate(
        self, dims: Sequence[AggDimension], where: AggFilter | None = None, limit: int = 1000
    ) -> Aggregation: ...
    def count_matching(
        self, where: Filter | None = None, cap: int = 100_000
    ) -> tuple[int, bool]: ...
    def prune(self, before: datetime, batch: int = 5000, max_batches: int = 1_000_000
              ) -> int: ...
    def fold_rollups(self, max_span: int = 50_000) -> int: ...
