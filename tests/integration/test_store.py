"""The Store contract, run against SQLite and a real PostgreSQL server alike."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent.errors import ConfigError
from collector.ingest.verify import Accepted, KeyTable, Verifier
from collector.store import (
    IngestBatch,
    ProbeExists,
    QuarantineItem,
    StatusUpdate,
    Store,
    StoreError,
    StoreUnavailable,
    UnknownProbe,
    describe_url,
    open_store,
)
from collector.store.aio import AsyncStore
from collector.store.base import QUARANTINE_MAX_RAW, Dimension, Filter, MeasurementRow
from collector.store.keys import StoreProbeKeys
from lab.probes import TestProbe

NOW = time.time()


class Rows:
    """Measurement rows as the ingest makes them: signed, verified, converted."""

    def __init__(self, *probes: TestProbe) -> None:
        self.probes = probes
        self.keys = KeyTable()
        self.verifier = Verifier(self.keys)

    def enrol(self, store: Store) -> None:
        for p in self.probes:
            store.add_probe(p.probe_id, p.public_raw, f"note {p.probe_id[:4]}")
        self.keys.load(store.list_probes())

    def make(self, probe: TestProbe, received: float = NOW, **fields: Any) -> MeasurementRow:
        outcome = self.verifier.check(probe.topic, probe.envelope(**fields), received)
        assert isinstance(outcome, Accepted), outcome
        return outcome.row


# ---- lifecycle ----------------------------------------------------------------------------------
def test_migrations_are_versioned_and_idempotent(store_url: str, store: Store) -> None:
    assert store.schema_version() == 6
    again = open_store(store_url)  # reopening does not re-run or fail
    try:
        assert again.schema_version() == 6
    finally:
        again.close()


def test_a_newer_schema_is_refused(store_url: str, store: Store) -> None:
    if store_url.startswith("sqlite"):
        db = sqlite3.connect(store_url[len("sqlite://"):])
        db.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
        db.commit()
        db.close()
    else:
        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', now())")
    with pytest.raises(StoreError, match="newer"):
        open_store(store_url)


def test_unknown_url_kinds_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        open_store("mysql://localhost/db")
    with pytest.raises(ConfigError):
        open_store("sqlite://")


def test_passwords_are_hidden_in_descriptions() -> None:
    assert describe_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert describe_url("sqlite:///x.db") == "sqlite:///x.db"


# ---- probes -------------------------------------------------------------------------------------
def test_probe_enrolment_and_revocation(store: Store) -> None:
    a, b = TestProbe.new(), TestProbe.new()
    rec = store.add_probe(a.probe_id, a.public_raw, "Tehran")
    assert (rec.probe_id, rec.public_key, rec.note, rec.revoked) == (
        a.probe_id, a.public_raw, "Tehran", False
    )
    store.add_probe(b.probe_id, b.public_raw)
    assert {p.probe_id for p in store.list_probes()} == {a.probe_id, b.probe_id}
    with pytest.raises(ProbeExists):
        store.add_probe(a.probe_id, a.public_raw)
    with pytest.raises(ProbeExists, match="different key"):
        store.add_probe(a.probe_id, b.public_raw)
    revoked = store.revoke_probe(a.probe_id)
    assert revoked.revoked and revoked.revoked_at is not None
    assert store.revoke_probe(a.probe_id).revoked_at == revoked.revoked_at  # idempotent
    got = store.get_probe(a.probe_id)
    assert got is not None and got.revoked
    assert store.get_probe("nope") is None
    with pytest.raises(UnknownProbe):
        store.revoke_probe("nope")


# ---- ingest -------------------------------------------------------------------------------------
def test_dedup_on_measurement_id(store: Store) -> None:
    p = TestProbe.new()
    rows = Rows(p)
    rows.enrol(store)
    batch = [rows.make(p) for _ in range(5)]
    first = store.insert_measurements(batch)
    assert (first.new, first.duplicates) == (5, ())
    again = store.insert_measurements([*batch[:2], rows.make(p)])
    assert again.new == 1
    assert set(again.duplicates) == {batch[0].measurement_id, batch[1].measurement_id}
    inside = rows.make(p)
    twice = store.insert_measurements([inside, inside])  # repeated inside one batch
    assert (twice.new, twice.duplicates) == (1, (inside.measurement_id,))
    assert store.measurement_count() == 7
    assert store.rejection_counts() == {"duplicate": 3}


def test_write_batch_is_one_transaction_of_everything(store: Store) -> None:
    p = TestProbe.new()
    rows = Rows(p)
    rows.enrol(store)
    batch = IngestBatch(
        measurements=[rows.make(p), rows.make(p)],
        statuses=[StatusUpdate(p.probe_id, "online", b'{"state":"online"}', NOW)],
        rejections=[
            QuarantineItem("bad_signature", "no valid signature", p.topic, b"raw1", NOW,
                           p.probe_id),
            QuarantineItem("malformed_json", "x", p.topic, b"raw2", NOW, p.probe_id),
            QuarantineItem("bad_signature", "again", p.topic, b"raw3", NOW, None),
        ],
    )
    result = store.write_batch(batch)
    assert result.new == 2
    assert store.rejection_counts() == {"bad_signature": 2, "malformed_json": 1}
    q = store.quarantined(10)
    assert [x.raw for x in q] == [b"raw3", b"raw2", b"raw1"]  # newest first
    assert [x.reason for x in store.quarantined(10, reason="malformed_json")] == ["malformed_json"]
    overview = store.overview()
    assert (overview.measurements, overview.probes, overview.quarantined) == (2, 1, 3)


def test_quarantine_caps_raw_bytes_but_keeps_size_and_hash(store: Store) -> None:
    big = bytes(range(256)) * 1000  # 256 kB
    store.quarantine([QuarantineItem("oversized", "too big", "t", big, NOW)])
    store.count_rejections({"oversized": 2, "ignored": 0})
    [row] = store.quarantined()
    assert row.size == len(big) and len(row.raw) == QUARANTINE_MAX_RAW
    assert row.raw == big[:QUARANTINE_MAX_RAW]
    assert row.sha256 == hashlib.sha256(big).hexdigest()
    assert store.rejection_counts() == {"oversized": 3}


def test_stored_bytes_round_trip_for_reverification(store: Store) -> None:
    p = TestProbe.new()
    rows = Rows(p)
    rows.enrol(store)
    row = rows.make(p)
    store.insert_measurements([row])
    got = store.get_measurement(row.measurement_id)
    assert got is not None
    assert (got.payload, got.signature, got.payload_type) == (
        row.payload, row.signature, row.payload_type
    )
    assert got.summary.measurement_id == row.measurement_id
    assert store.get_measurement("not-a-uuid") is None
    assert store.get_measurement("01900000-0000-7000-8000-000000000000") is None


# ---- queries ------------------------------------------------------------------------------------
def _scenario(store: Store) -> tuple[TestProbe, TestProbe]:
    ir, pk = TestProbe.new(), TestProbe.new()
    rows = Rows(ir, pk)
    rows.enrol(store)
    hour = 3600.0
    base = (NOW // hour) * hour - 10 * hour
    ok = {"status": "ok", "blocking": None, "reason": "", "confirmed": False}
    down = {"status": "down", "blocking": None, "reason": "site.down", "confirmed": False}
    batch = [
        rows.make(ir, base + 10, start=base + 1),
        rows.make(ir, base + 20, start=base + 2, input="https://twitter.com/"),
        rows.make(ir, base + 30, start=base + hour + 5, verdict=ok),
        rows.make(pk, base + 40, start=base + 3, probe_cc="PK", probe_asn="AS17557",
                  input="https://twitter.com/x", verdict=down),
        rows.make(pk, base + 50, start=base + hour + 7, probe_cc="PK", probe_asn="AS17557",
                  verdict=ok, input=None),
    ]
    store.insert_measurements(batch)
    return ir, pk


def test_recent_and_filters(store: Store) -> None:
    ir, pk = _scenario(store)
    recent = store.recent(3)
    assert [m.probe_id for m in recent] == [pk.probe_id, pk.probe_id, ir.probe_id]
    assert recent[0].received_at > recent[1].received_at > recent[2].received_at
    assert recent[1].domain == "twitter.com" and recent[1].status == "down"
    only_ir = store.recent(10, Filter(probe_cc="IR"))
    assert len(only_ir) == 3 and {m.probe_cc for m in only_ir} == {"IR"}
    assert store.measurement_count(Filter(domain="twitter.com")) == 2
    assert store.measurement_count(Filter(status="ok", probe_asn="AS17557")) == 1
    assert store.measurement_count(Filter(probe_id=ir.probe_id, status="blocked")) == 2
    first = min(m.start_time for m in store.recent(10))
    assert store.measurement_count(Filter(since=first + timedelta(minutes=30))) == 2
    assert store.measurement_count(Filter(until=first + timedelta(minutes=30))) == 3


def test_counts_by_every_dimension(store: Store) -> None:
    ir, pk = _scenario(store)
    assert store.count_by(Dimension.VERDICT) == [("blocked", 2), ("ok", 2), ("down", 1)]
    assert store.count_by(Dimension.COUNTRY) == [("IR", 3), ("PK", 2)]
    assert store.count_by(Dimension.NETWORK) == [("AS44244", 3), ("AS17557", 2)]
    assert store.count_by(Dimension.DOMAIN) == [
        ("twitter.com", 2), ("www.example.com", 2), ("", 1)
    ]
    assert store.count_by(Dimension.BLOCKING) == [("", 3), ("tls", 2)]
    assert dict(store.count_by(Dimension.PROBE)) == {ir.probe_id: 3, pk.probe_id: 2}
    assert store.count_by(Dimension.TEST) == [("web_connectivity", 5)]
    assert store.count_by(Dimension.VERDICT, Filter(probe_cc="PK"), limit=1) == [("down", 1)]


def test_last_seen_per_probe_for_outages(store: Store) -> None:
    ir, pk = _scenario(store)
    silent = TestProbe.new()
    store.add_probe(silent.probe_id, silent.public_raw)
    store.write_batch(IngestBatch(statuses=[
        StatusUpdate(pk.probe_id, "online", b"online", NOW - 100),
        StatusUpdate(pk.probe_id, "offline", b"offline", NOW - 50),
        StatusUpdate(pk.probe_id, "online", b"online", NOW - 200),  # late, older: ignored
    ]))
    seen = {a.probe_id: a for a in store.last_seen()}
    assert set(seen) == {ir.probe_id, pk.probe_id, silent.probe_id}
    assert seen[silent.probe_id].measurements == 0
    assert seen[silent.probe_id].last_received_at is None
    assert seen[ir.probe_id].measurements == 3 and seen[ir.probe_id].probe_cc == "IR"
    p = seen[pk.probe_id]
    assert (p.measurements, p.probe_cc, p.probe_asn, p.status) == (2, "PK", "AS17557", "offline")
    assert p.status_at is not None and abs(p.status_at.timestamp() - (NOW - 50)) < 1e-3
    hour = 3600.0
    base = (NOW // hour) * hour - 10 * hour
    assert p.last_measurement_start is not None and p.last_received_at is not None
    assert p.last_measurement_start.timestamp() == pytest.approx(base + hour + 7)
    assert p.last_received_at.timestamp() == pytest.approx(base + 50)


def test_timeline_and_sightings(store: Store) -> None:
    ir, pk = _scenario(store)
    buckets = store.timeline(3600, Dimension.COUNTRY)
    assert [(b.key, b.total, b.blocked, b.down) for b in buckets] == [
        ("IR", 2, 2, 0), ("PK", 1, 0, 1), ("IR", 1, 0, 0), ("PK", 1, 0, 0)
    ]
    assert buckets[0].bucket_start.timestamp() % 3600 == 0
    assert buckets[2].bucket_start - buckets[0].bucket_start == timedelta(hours=1)
    store.write_batch(IngestBatch(statuses=[
        StatusUpdate(pk.probe_id, "online", b"online", NOW - 20),
        StatusUpdate(pk.probe_id, "offline", b"offline", NOW - 10),
        StatusUpdate(pk.probe_id, "cleared", b"", NOW - 5),  # not a sighting
    ]))
    since = datetime.fromtimestamp(NOW - 11 * 3600, UTC)
    until = datetime.fromtimestamp(NOW + 1, UTC)
    sightings = store.sightings(since, until, bucket_seconds=3600)
    kinds = [(s.probe_id, s.kind) for s in sightings]
    # received at base+10..+50 (same hour bucket): one measurement sighting per probe
    assert kinds.count((ir.probe_id, "measurement")) == 1
    assert kinds.count((pk.probe_id, "measurement")) == 1
    assert kinds[-2:] == [(pk.probe_id, "heartbeat"), (pk.probe_id, "offline")]
    assert [s.t for s in sightings] == sorted(s.t for s in sightings)
    with pytest.raises(ValueError):
        store.timeline(0, Dimension.COUNTRY)


# ---- concurrency and availability ----------------------------------------------------------------
def test_two_writers_racing_store_each_measurement_once(store_url: str, store: Store) -> None:
    p = TestProbe.new()
    rows = Rows(p)
    rows.enrol(store)
    batch = [rows.make(p) for _ in range(300)]
    results: list[int] = []
    errors: list[BaseException] = []

    def write(part: list[MeasurementRow]) -> None:
        s = open_store(store_url, busy_timeout_ms=20_000)
        try:
            for i in range(0, len(part), 50):
                results.append(s.insert_measurements(part[i:i + 50]).new)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=write, args=(batch[::-1] if i else batch,))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sum(results) == 300
    assert store.measurement_count() == 300
    assert store.rejection_counts()["duplicate"] == 300


def test_sqlite_locked_is_unavailable_then_recovers(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/c.db"
    store = open_store(url, busy_timeout_ms=100)
    p = TestProbe.new()
    rows = Rows(p)
    rows.enrol(store)
    blocker = sqlite3.connect(str(tmp_path / "c.db"), isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable):
            store.insert_measurements([rows.make(p)])
        blocker.execute("ROLLBACK")
        assert store.insert_measurements([rows.make(p)]).new == 1
    finally:
        blocker.close()
        store.close()


@pytest.mark.postgres
def test_postgres_connection_lost_is_unavailable_then_reconnects(pg_url: str) -> None:
    store = open_store(pg_url)
    p = TestProbe.new()
    rows = Rows(p)
    rows.enrol(store)
    try:
        pid = store._query("SELECT pg_backend_pid()")[0][0]  # type: ignore[attr-defined]
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StoreUnavailable):
            store.insert_measurements([rows.make(p)])
        assert store.insert_measurements([rows.make(p)]).new == 1  # reconnected
    finally:
        store.close()


def test_postgres_unreachable_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        open_store("postgresql://postgres@127.0.0.1:9/none", connect_timeout=2)


# ---- async wrapper and the helper's key source -------------------------------------------------
async def test_async_store_and_probe_keys(store_url: str) -> None:
    astore = await AsyncStore.open(store_url)
    try:
        a = TestProbe.new()
        await astore.call(astore.store.add_probe, a.probe_id, a.public_raw)
        keys = StoreProbeKeys(astore, ttl_s=0.05)
        found = await keys.lookup(a.probe_id)
        assert found is not None
        public_key, revoked = found
        assert not revoked and public_key.public_bytes_raw() == a.public_raw
        assert await keys.lookup("unknownprobeidxxxxxxxxxxxx") is None
        await astore.call(astore.store.revoke_probe, a.probe_id)
        time_limit = time.monotonic() + 5
        while time.monotonic() < time_limit:
            found = await keys.lookup(a.probe_id)
            if found is not None and found[1]:
                break
            await asyncio.sleep(0.02)
        assert found is not None and found[1], "revocation not visible to the helper"
    finally:
        await astore.close()
