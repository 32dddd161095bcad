"""The durable outbox: commit before publish, bounded with recorded drops, crash-proof."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agent import identity
from agent.errors import ConfigError, OutboxError, SchemaError
from agent.identity import Identity
from agent.uplink.outbox import (
    DB_FILE,
    DROP_REPORT_RESERVE,
    DROP_REPORT_TEST_NAME,
    KIND_DROP_REPORT,
    KIND_MEASUREMENT,
    Outbox,
    OutboxLimits,
    OutboxSink,
    limits_from_config,
    read_stats,
    refusal_backoff,
)
from agent.wire import envelope as wire
from lab.records import make_record

REPO = Path(__file__).resolve().parents[3]


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ident(tmp_path: Path) -> Identity:
    return identity.create(tmp_path / "state")


@pytest.fixture
def state(ident: Identity, tmp_path: Path) -> Path:
    return tmp_path / "state"


def open_outbox(state: Path, ident: Identity, **kw: object) -> Outbox:
    return Outbox(state, ident, **kw)  # type: ignore[arg-type]


def payload_of(ob: Outbox, envelope: bytes) -> dict[str, object]:
    env = wire.parse_envelope(envelope)
    data = wire.verify_envelope(env, ob.identity.public_key, ob.identity.probe_id)
    record: dict[str, object] = json.loads(data)
    wire.validate_record(record)
    return record


# ---- durability and format ----------------------------------------------------------------------
def test_enqueue_stores_the_signed_envelope_of_the_exact_record_bytes(
    state: Path, ident: Identity
) -> None:
    rec = make_record(ident.probe_id, 1)
    with open_outbox(state, ident) as ob:
        seq = ob.enqueue(rec)
        (item,) = ob.take(10)
    assert item.seq == seq and item.kind == KIND_MEASUREMENT
    assert item.measurement_id == rec.measurement_id
    env = wire.parse_envelope(item.envelope)
    assert env.keyid == ident.probe_id
    # The exact record, numbered by the outbox (probe_seq 1, 2, 3... per probe).
    assert wire.verify_envelope(env, ident.public_key, ident.probe_id) == wire.encode_record(
        replace(rec, probe_seq=1).to_json()
    )


def test_probe_seq_counts_up_across_restarts(state: Path, ident: Identity) -> None:
    with open_outbox(state, ident) as ob:
        ob.enqueue(make_record(ident.probe_id, 1))
        ob.enqueue(make_record(ident.probe_id, 2))
        ob.ack([item.seq for item in ob.take(10)])
    with open_outbox(state, ident) as ob:
        ob.enqueue(make_record(ident.probe_id, 3))
        items = ob.take(10)
    seqs = [json.loads(wire.parse_envelope(i.envelope).payload)["probe_seq"] for i in items]
    assert seqs == [3]


def test_database_is_wal_fsync_full_and_private(state: Path, ident: Identity) -> None:
    with open_outbox(state, ident) as ob:
        ob.enqueue(make_record(ident.probe_id))
        assert ob._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert stat.S_IMODE((state / DB_FILE).stat().st_mode) == 0o600


def test_rows_survive_reopen_in_order(state: Path, ident: Identity) -> None:
    recs = [make_record(ident.probe_id, i) for i in range(30)]
    with open_outbox(state, ident) as ob:
        for r in recs:
            ob.enqueue(r)
    with open_outbox(state, ident) as ob:
        assert len(ob) == 30
        items = ob.take(100)
        assert [i.measurement_id for i in items] == [r.measurement_id for r in recs]
        assert ob.stats().counters["enqueued"] == 30


def test_record_of_another_probe_is_refused_and_nothing_stored(
    state: Path, ident: Identity
) -> None:
    other = wire.probe_id_for(os.urandom(32))
    with open_outbox(state, ident) as ob:
        with pytest.raises(SchemaError, match="claims probe"):
            ob.enqueue(make_record(other))
        with pytest.raises(SchemaError, match="no strict JSON"):
            ob.enqueue(make_record(ident.probe_id, test_runtime=float("nan")))
        assert len(ob) == 0 and ob.take(10) == []


def test_disk_full_is_an_outbox_error_and_the_outbox_stays_usable(
    state: Path, ident: Identity
) -> None:
    with open_outbox(state, ident) as ob:
        ob.enqueue(make_record(ident.probe_id, 0))
        pages = ob._db.execute("PRAGMA page_count").fetchone()[0]
        ob._db.execute(f"PRAGMA max_page_count={pages + 1}")
        with pytest.raises(OutboxError, match="full"):
            ob.enqueue(make_record(ident.probe_id, 1, pad=200_000))
        assert len(ob) == 1
        ob._db.execute("PRAGMA max_page_count=1073741823")
        ob.enqueue(make_record(ident.probe_id, 2))
        assert len(ob) == 2 == len(ob.take(10))


# ---- publishing bookkeeping ---------------------------------------------------------------------
def test_take_pages_in_seq_order_and_ack_deletes(state: Path, ident: Identity) -> None:
    with open_outbox(state, ident) as ob:
        seqs = [ob.enqueue(make_record(ident.probe_id, i)) for i in range(10)]
        first = ob.take(4)
        assert [i.seq for i in first] == seqs[:4]
        assert [i.seq for i in ob.take(4, after_seq=first[-1].seq)] == seqs[4:8]
        assert ob.ack([seqs[0], seqs[1], 999_999]) == 2
        assert [i.seq for i in ob.take(100)] == seqs[2:]
        assert ob.stats().counters["published"] == 2
        assert len(ob) == 8
        assert ob.size_bytes == sum(i.size for i in ob.take(100))


def test_sequence_numbers_are_never_reused(state: Path, ident: Identity) -> None:
    """A late ack for a deleted row must never delete a newer row that got its number."""
    with open_outbox(state, ident) as ob:
        last = ob.enqueue(make_record(ident.probe_id, 0))
        ob.ack([last])
    with open_outbox(state, ident) as ob:
        assert ob.enqueue(make_record(ident.probe_id, 1)) > last


def test_refused_row_is_kept_and_backed_off(state: Path, ident: Identity) -> None:
    clock = Clock()
    with open_outbox(state, ident, clock=clock) as ob:
        a = ob.enqueue(make_record(ident.probe_id, 0))
        b = ob.enqueue(make_record(ident.probe_id, 1))
        ob.refused(a, 149, "packet too large")
        assert [i.seq for i in ob.take(10)] == [b]  # does not block the rows behind it
        assert ob.next_ready_at() == clock.now + refusal_backoff(1)
        clock.now += refusal_backoff(1)
        (again, _) = ob.take(10)
        assert again.seq == a and again.refusals == 1 and again.attempts == 1
        ob.refused(a, 149, "packet too large")
        assert ob.next_ready_at() == clock.now + refusal_backoff(2)
        assert ob.stats().counters["refused"] == 2
        row = ob._db.execute("SELECT last_error FROM outbox WHERE seq=?", (a,)).fetchone()
        assert row[0] == "149: packet too large"
    assert refusal_backoff(1) < refusal_backoff(2) < refusal_backoff(50) == 3600


def test_unrouted_and_failed_rows_are_kept(state: Path, ident: Identity) -> None:
    clock = Clock()
    with open_outbox(state, ident, clock=clock) as ob:
        a = ob.enqueue(make_record(ident.probe_id, 0))
        b = ob.enqueue(make_record(ident.probe_id, 1))
        ob.unrouted([a], 60)
        ob.failed([b], "connection lost")
        assert [i.seq for i in ob.take(10)] == [b]
        clock.now += 61
        assert [i.seq for i in ob.take(10)] == [a, b]
        c = ob.stats().counters
        assert (c["unrouted"], c["publish_errors"], c["published"]) == (1, 1, 0)


# ---- bounds and drop reports --------------------------------------------------------------------
def test_full_outbox_drops_the_oldest_and_reports_it(state: Path, ident: Identity) -> None:
    limits = OutboxLimits(max_count=20, max_bytes=10**9)
    recs = [make_record(ident.probe_id, i) for i in range(50)]
    with open_outbox(state, ident, limits=limits) as ob:
        for r in recs:
            ob.enqueue(r)
        assert len(ob) <= 20
        items = ob.take(100)
        reports = [i for i in items if i.kind == KIND_DROP_REPORT]
        kept = [i.measurement_id for i in items if i.kind == KIND_MEASUREMENT]
        assert len(reports) == 1
        assert kept == [r.measurement_id for r in recs[-len(kept):]]  # the newest survive
        counters = ob.stats().counters
    dropped_ids = [r.measurement_id for r in recs[: 50 - len(kept)]]
    assert counters["dropped"] == len(dropped_ids) and counters["drop_reports"] == 1
    report = payload_of(ob, reports[0].envelope)
    keys = report["test_keys"]
    assert isinstance(keys, dict)
    assert report["test_name"] == DROP_REPORT_TEST_NAME
    assert report["verdict"] == {"status": "inconclusive", "blocking": None,
                                 "reason": "outbox.dropped", "confirmed": False}
    assert report["probe_id"] == ident.probe_id
    assert keys["dropped_count"] == len(dropped_ids)
    assert keys["dropped_bytes"] == counters["dropped_bytes"] > 0
    assert keys["dropped_measurement_ids"] == dropped_ids
    assert keys["dropped_ids_truncated"] is False
    assert keys["oldest_dropped_start_time"] == recs[0].measurement_start_time
    assert keys["newest_dropped_start_time"] == recs[len(dropped_ids) - 1].measurement_start_time
    assert keys["outbox_max_count"] == 20


def test_byte_limit_holds_with_the_report(state: Path, ident: Identity) -> None:
    limits = OutboxLimits(max_count=10**6, max_bytes=DROP_REPORT_RESERVE + 60_000)
    with open_outbox(state, ident, limits=limits) as ob:
        for i in range(200):
            ob.enqueue(make_record(ident.probe_id, i, pad=1000))
            assert ob.size_bytes <= limits.max_bytes
        stats = ob.stats()
        assert stats.bytes == sum(i.size for i in ob.take(10_000)) <= limits.max_bytes
        assert stats.counters["dropped"] > 100


def test_one_open_report_grows_then_is_sealed_when_taken(state: Path, ident: Identity) -> None:
    limits = OutboxLimits(max_count=5, max_bytes=10**9)
    with open_outbox(state, ident, limits=limits) as ob:
        for i in range(8):
            ob.enqueue(make_record(ident.probe_id, i))
        taken = ob.take(100)
        (first,) = [i for i in taken if i.kind == KIND_DROP_REPORT]
        count_first = payload_of(ob, first.envelope)["test_keys"]["dropped_count"]  # type: ignore[index]
        for i in range(8, 20):
            ob.enqueue(make_record(ident.probe_id, i))
        reports = [i for i in ob.take(100) if i.kind == KIND_DROP_REPORT]
        assert len(reports) == 2
        assert reports[0].envelope == first.envelope  # sealed: never changed after taking
        second = payload_of(ob, reports[1].envelope)
        assert second["measurement_id"] != first.measurement_id
        total = count_first + second["test_keys"]["dropped_count"]  # type: ignore[index]
        assert total == ob.stats().counters["dropped"]
        assert ob.stats().counters["drop_reports"] == 2


def test_drop_reports_are_never_evicted(state: Path, ident: Identity) -> None:
    limits = OutboxLimits(max_count=3, max_bytes=10**9)
    with open_outbox(state, ident, limits=limits) as ob:
        for i in range(30):
            ob.enqueue(make_record(ident.probe_id, i))
            ob.take(1)  # seals the report (if it is first) now and then
        kinds = [i.kind for i in ob.take(100)]
        assert kinds.count(KIND_DROP_REPORT) == ob.stats().counters["drop_reports"]


def test_report_lists_at_most_100_ids_but_counts_all(state: Path, ident: Identity) -> None:
    limits = OutboxLimits(max_count=2, max_bytes=10**9)
    with open_outbox(state, ident, limits=limits) as ob:
        for i in range(150):
            ob.enqueue(make_record(ident.probe_id, i, pad=10))
        (report,) = [i for i in ob.take(100) if i.kind == KIND_DROP_REPORT]
        keys = payload_of(ob, report.envelope)["test_keys"]
        assert isinstance(keys, dict)
        assert len(keys["dropped_measurement_ids"]) == 100
        assert keys["dropped_ids_truncated"] is True
        assert keys["dropped_count"] == ob.stats().counters["dropped"] == 149
        assert report.size < DROP_REPORT_RESERVE


# ---- ownership, corruption, readers -------------------------------------------------------------
def test_second_owner_is_refused_until_the_first_closes(state: Path, ident: Identity) -> None:
    ob = open_outbox(state, ident)
    with pytest.raises(OutboxError, match="in use"):
        open_outbox(state, ident)
    ob.close()
    ob.close()  # idempotent
    open_outbox(state, ident).close()


def test_corrupt_database_is_moved_aside_not_deleted(state: Path, ident: Identity) -> None:
    (state / DB_FILE).write_bytes(b"this is not a database" * 100)
    with open_outbox(state, ident) as ob:
        assert ob.stats().counters["corrupt_recovered"] == 1
        ob.enqueue(make_record(ident.probe_id))
        assert len(ob) == 1
    aside = list(state.glob(f"{DB_FILE}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")


def test_newer_schema_is_refused(state: Path, ident: Identity) -> None:
    open_outbox(state, ident).close()
    db = sqlite3.connect(state / DB_FILE)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(OutboxError, match="newer"):
        open_outbox(state, ident)


def test_read_stats_from_another_connection(state: Path, ident: Identity) -> None:
    assert read_stats(state) is None
    with open_outbox(state, ident) as ob:
        ob.enqueue(make_record(ident.probe_id))
        live = read_stats(state)
        assert live is not None and live.count == 1 and live.counters["enqueued"] == 1
    after = read_stats(state)
    assert after is not None and after.count == 1
    assert after.to_json()["count"] == 1


async def test_sink_commits_then_notifies(state: Path, ident: Identity) -> None:
    calls: list[int] = []
    with open_outbox(state, ident) as ob:
        sink = OutboxSink(ob, on_commit=lambda: calls.append(len(ob)))
        await sink.put(make_record(ident.probe_id))
        await sink.put(make_record(ident.probe_id))
        assert calls == [1, 2]  # the record was on disk before the publisher was told


def test_limits_from_config() -> None:
    assert limits_from_config({}) == OutboxLimits()
    assert limits_from_config({"max_count": 10, "max_mb": 1.5}) == OutboxLimits(10, 1_572_864)
    for bad in ({"max_count": 0}, {"max_count": True}, {"max_mb": -1}, {"max_mb": "1"},
                {"maxcount": 3}):
        with pytest.raises(ConfigError):
            limits_from_config(bad)


# ---- kill -9 ------------------------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent import identity
    from agent.uplink.outbox import Outbox
    from lab.records import make_record

    state = Path(sys.argv[1])
    ident = identity.load(state)
    ob = Outbox(state, ident)
    i = 0
    while i < 100_000:
        rec = make_record(ident.probe_id, i, pad=2000)
        ob.enqueue(rec)
        print(rec.measurement_id, flush=True)  # only after the commit returned
        i += 1
    """
)


def test_sigkill_mid_write_loses_nothing_committed(state: Path, ident: Identity) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    committed: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while len(committed) < 300 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            committed.append(line.decode().strip())
        proc.send_signal(signal.SIGKILL)  # mid-write: it is enqueueing continuously
    finally:
        proc.kill()
        proc.wait(10)
        # lines the child printed before it died but the parent had not read yet are
        # acknowledged writes too
        committed += [ln.decode().strip() for ln in proc.stdout.read().splitlines() if ln.strip()]
        proc.stdout.close()
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert len(committed) >= 300, err
    with open_outbox(state, ident) as ob:
        assert ob._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = [i.measurement_id for i in ob.take(200_000)]
        assert stored[: len(committed)] == committed  # every acknowledged write, in order
        assert len(stored) - len(committed) <= 1  # at most one committed but not yet printed
        for item in ob.take(5):
            payload_of(ob, item.envelope)

