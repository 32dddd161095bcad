"""The outbox's delivery rules: receipts, refusals, clock jumps, free space, schema upgrade."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent import identity
from agent.errors import StateDiskFull
from agent.identity import Identity
from agent.uplink.outbox import (
    DB_FILE,
    MAX_DEFER_S,
    SCHEMA_VERSION,
    Outbox,
    OutboxLimits,
    read_stats,
    receipt_wait,
)
from agent.wire.receipts import Receipt
from lab.records import make_record

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Boot:
    """The boot clock: (boot id, seconds since boot); NTP never moves it."""

    def __init__(self) -> None:
        self.boot_id = "boot-1"
        self.t = 100.0

    def __call__(self) -> tuple[str, float]:
        return self.boot_id, self.t


class Disk:
    """Free bytes on the state filesystem, as the test says."""

    def __init__(self, free: int | None = 10**10) -> None:
        self.free = free

    def __call__(self, path: Path) -> int | None:
        return self.free


@pytest.fixture
def ident(tmp_path: Path) -> Identity:
    return identity.create(tmp_path / "state")


def outbox(tmp_path: Path, ident: Identity, clock: Clock, boot: Boot | None = None,
           disk: Disk | None = None, limits: OutboxLimits | None = None) -> Outbox:
    return Outbox(tmp_path / "state", ident, limits, clock=clock, boot=boot or Boot(),
                  free=disk or Disk())


def fill(ob: Outbox, ident: Identity, n: int) -> list[str]:
    ids = []
    for i in range(n):
        rec = make_record(ident.probe_id, i)
        ob.enqueue(rec)
        ids.append(rec.measurement_id)
    return ids


@pytest.mark.parametrize(
    ("sends", "wait"), [(1, 120.0), (2, 240.0), (3, 480.0), (6, 3600.0), (40, 3600.0)]
)
def test_receipt_wait_doubles_up_to_the_maximum(sends: int, wait: float) -> None:
    assert receipt_wait(sends, 120.0, 3600.0) == wait


def test_sent_rows_wait_for_their_receipt_then_go_again(tmp_path: Path, ident: Identity) -> None:
    clock = Clock()
    with outbox(tmp_path, ident, clock) as ob:
        ids = fill(ob, ident, 3)
        items = ob.take(10)
        ob.mark_sent([i.seq for i in items], 60.0, 600.0)
        assert len(ob) == 3 and ob.awaiting_receipt() == 3
        assert ob.take(10) == []  # held: a receipt is due
        clock.now += 61
        again = ob.take(10)
        assert [i.measurement_id for i in again] == ids and {i.sends for i in again} == {1}
        ob.mark_sent([again[0].seq], 60.0, 600.0)
        clock.now += 61
        assert [i.measurement_id for i in ob.take(10)] == ids[1:]  # the resent one waits 120 s
        done = ob.apply_receipt(Receipt(stored=(ids[0], ids[1], "not-ours")))
        assert done == {"stored": 2, "refused": 0, "retry": 0, "pulled": 0}
        assert len(ob) == 1
        counters = ob.stats().counters
        assert counters["sent"] == 4 and counters["resent"] == 1
        assert counters["receipted"] == 2 and counters["published"] == 2


def test_a_receipt_for_an_unsent_row_deletes_it(tmp_path: Path, ident: Identity) -> None:
    """A copy sent before a restart may be receipted before this process sends it."""
    with outbox(tmp_path, ident, Clock()) as ob:
        (mid,) = fill(ob, ident, 1)
        assert ob.apply_receipt(Receipt(stored=(mid,)))["stored"] == 1
        assert len(ob) == 0 and ob.size_bytes == 0


def test_refused_rows_leave_for_the_refused_table(tmp_path: Path, ident: Identity) -> None:
    with outbox(tmp_path, ident, Clock()) as ob:
        ids = fill(ob, ident, 3)
        done = ob.apply_receipt(Receipt(refused={ids[0]: "schema_violation"},
                                        retry={ids[1]: "unknown_key"}))
        assert done == {"stored": 0, "refused": 1, "retry": 1, "pulled": 0}
        assert [i.measurement_id for i in ob.take(10)] == [ids[2]]  # the retry is backed off
        stats = ob.stats()
        assert stats.count == 2 and stats.refused_kept == 1
        assert stats.counters["collector_refused"] == 1 and stats.counters["collector_retry"] == 1
    db = sqlite3.connect(tmp_path / "state" / DB_FILE)
    (mid, reason, env), = db.execute("SELECT measurement_id, reason, envelope FROM refused")
    db.close()
    assert (mid, reason) == (ids[0], "schema_violation") and env.startswith(b"{")


@pytest.mark.parametrize("jump", [-3 * 86400.0, -MAX_DEFER_S - 60, +5 * 86400.0])
def test_clock_jumps_never_strand_a_row(tmp_path: Path, ident: Identity, jump: float) -> None:
    clock = Clock()
    with outbox(tmp_path, ident, clock) as ob:
        fill(ob, ident, 2)
        first, second = ob.take(10)
        ob.mark_sent([first.seq], 600.0, 3600.0)  # awaits its receipt for 10 min
        ob.refused(second.seq, 135, "not authorised")  # backed off by the broker's refusal
        assert ob.take(10) == []
        clock.now += jump
        # Back: every deferral points further ahead than the outbox ever defers; forward:
        # every deferral has passed.  Either way the rows are offered now.
        assert len(ob.take(10)) == 2 and ob.has_ready()


def test_a_short_jump_back_only_delays(tmp_path: Path, ident: Identity) -> None:
    clock = Clock()
    with outbox(tmp_path, ident, clock) as ob:
        fill(ob, ident, 1)
        ob.mark_sent([i.seq for i in ob.take(10)], 60.0, 60.0)
        clock.now -= 600  # NTP steps back ten minutes
        assert ob.take(10) == [] and ob.next_ready_at() == pytest.approx(T0 + 60)
        clock.now = T0 + 61
        assert len(ob.take(10)) == 1


def test_age_comes_from_the_boot_clock(tmp_path: Path, ident: Identity) -> None:
    clock, boot = Clock(), Boot()
    with outbox(tmp_path, ident, clock, boot) as ob:
        fill(ob, ident, 1)
        boot.t += 42.0
        clock.now += 10 * 86400  # the wall clock jumps: the age does not care
        (item,) = ob.take(1)
        assert item.age_s == pytest.approx(42.0)
        boot.boot_id = "boot-2"  # rebooted: the age is unknown
        (item,) = ob.take(1)
        assert item.age_s is None


def test_nearly_full_disk_refuses_new_records_and_keeps_draining(
    tmp_path: Path, ident: Identity
) -> None:
    disk = Disk()
    limits = OutboxLimits(min_free_bytes=10_000, reserve_bytes=4096)
    with outbox(tmp_path, ident, Clock(), disk=disk, limits=limits) as ob:
        assert ob.reserve_path.stat().st_size == 4096
        ids = fill(ob, ident, 2)
        disk.free = 9_999
        with pytest.raises(StateDiskFull, match="refused"):
            ob.enqueue(make_record(ident.probe_id))
        assert ob.reserve_path.exists()  # not short of the reserve yet
        disk.free = 10
        with pytest.raises(StateDiskFull):
            ob.enqueue(make_record(ident.probe_id))
        assert not ob.reserve_path.exists()  # released for the drain
        assert ob.apply_receipt(Receipt(stored=tuple(ids)))["stored"] == 2
        assert ob.stats().counters["disk_full_refused"] == 2
        assert not ob.reserve_path.exists()  # no room to take it back yet
        disk.free = 10**9
        ob.enqueue(make_record(ident.probe_id))
        ob.ack([i.seq for i in ob.take(1)])
        assert ob.reserve_path.stat().st_size == 4096  # taken again once there is room
    stats = read_stats(tmp_path / "state")
    assert stats is not None and stats.counters["disk_full_refused"] == 2
    assert stats.counters["reserve_released"] == 1


def test_opening_a_current_outbox_writes_nothing(tmp_path: Path, ident: Identity) -> None:
    with outbox(tmp_path, ident, Clock()) as ob:
        fill(ob, ident, 3)
    db_file = tmp_path / "state" / DB_FILE
    before = db_file.read_bytes()
    db_file.chmod(0o400)  # a write would fail now
    try:
        with Outbox(tmp_path / "state", ident, OutboxLimits(reserve_bytes=0)) as ob:
            assert len(ob) == 3 and len(ob.take(10)) == 3
    finally:
        db_file.chmod(0o600)
    assert db_file.read_bytes() == before


def test_schema_1_outbox_is_upgraded_in_place(tmp_path: Path, ident: Identity) -> None:
    """An outbox written by an agent older than receipts keeps its rows and counters."""
    state = tmp_path / "state"
    with outbox(tmp_path, ident, Clock()) as ob:
        ids = fill(ob, ident, 2)
    db = sqlite3.connect(state / DB_FILE)
    db.executescript(
        "CREATE TABLE old AS SELECT seq, kind, measurement_id, start_time, created_at, size, "
        "envelope, attempts, refusals, last_error, not_before, sealed FROM outbox;"
        "DROP TABLE outbox; DROP TABLE refused; DROP TABLE open_drop_report;"
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
        "measurement_id TEXT NOT NULL, start_time TEXT NOT NULL, created_at REAL NOT NULL, "
        "size INTEGER NOT NULL, envelope BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, "
        "refusals INTEGER NOT NULL DEFAULT 0, last_error TEXT, "
        "not_before REAL NOT NULL DEFAULT 0, sealed INTEGER NOT NULL DEFAULT 1);"
        "INSERT INTO outbox SELECT * FROM old; DROP TABLE old; PRAGMA user_version=1;"
    )
    db.close()
    old = read_stats(state)
    assert old is not None and old.count == 2 and old.awaiting_receipt == 0
    with outbox(tmp_path, ident, Clock()) as ob:
        assert [i.measurement_id for i in ob.take(10)] == ids
        ob.mark_sent([i.seq for i in ob.take(10)], 60.0, 60.0)
        assert ob.awaiting_receipt() == 2
    db = sqlite3.connect(state / DB_FILE)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    # every table of the base schema exists after an upgrade, even one added since
    assert {"outbox", "counters", "open_drop_report", "refused"} <= tables


def test_free_space_settings_from_config() -> None:
    from agent.errors import ConfigError
    from agent.uplink.outbox import limits_from_config

    limits = limits_from_config({"min_free_mb": 1, "reserve_mb": 0.5})
    assert (limits.min_free_bytes, limits.reserve_bytes) == (1_048_576, 524_288)
    assert limits_from_config({"reserve_mb": 0}).reserve_bytes == 0  # no reserve file
    for bad in ({"min_free_mb": -1}, {"reserve_mb": "8"}, {"reserve_mb": True}):
        with pytest.raises(ConfigError):
            limits_from_config(bad)


def test_receipt_settings_from_config() -> None:
    from agent.errors import ConfigError
    from agent.uplink.publisher import settings_from_config

    s = settings_from_config({"host": "b", "password": "x", "receipts": False,
                              "receipt_timeout": 30, "receipt_timeout_max": 600})
    assert s is not None and not s.receipts and s.receipt_timeout == 30.0
    assert settings_from_config({"host": "b", "password": "x"}).receipts  # type: ignore[union-attr]
    off = settings_from_config({"host": "b", "password": "x", "receipt_fallback": 0})
    assert off is not None and off.receipt_fallback == 0.0
    for bad in ({"receipts": "no"}, {"receipts": 0}, {"receipt_timeout": -1},
                {"receipt_timeout": 0}, {"receipt_fallback": -1}):
        with pytest.raises(ConfigError):
            settings_from_config({"host": "b", "password": "x", **bad})


def test_rows_older_than_a_receipted_one_are_sent_again_at_once(
    tmp_path: Path, ident: Identity
) -> None:
    """Receipts for rows sent at T0+1000 while rows sent at T0 never got one: the broker lost
    those (its queue is first in, first out); they go again now, not after an hour."""
    clock = Clock()
    with outbox(tmp_path, ident, clock) as ob:
        ids = fill(ob, ident, 4)
        items = ob.take(10)
        ob.mark_sent([i.seq for i in items[:2]], 3600.0, 3600.0)
        clock.now += 1000
        ob.mark_sent([i.seq for i in items[2:]], 3600.0, 3600.0)
        assert ob.take(10) == []
        done = ob.apply_receipt(Receipt(stored=(ids[3],)), lag=120.0)
        assert done == {"stored": 1, "refused": 0, "retry": 0, "pulled": 2}
        assert [i.measurement_id for i in ob.take(10)] == ids[:2]  # ids[2]: sent with ids[3]


def test_never_any_receipt_falls_back_to_the_puback_after_the_fallback(
    tmp_path: Path, ident: Identity
) -> None:
    """A collector older than receipts never answers: after ``fallback`` seconds from a row's
    first send, its next PUBACK deletes it, as before receipts."""
    clock = Clock()
    with outbox(tmp_path, ident, clock) as ob:
        fill(ob, ident, 2)
        assert ob.mark_sent([i.seq for i in ob.take(10)], 60.0, 600.0, fallback=3600.0) == 0
        clock.now += 3599
        assert ob.mark_sent([i.seq for i in ob.take(10)], 60.0, 600.0, fallback=3600.0) == 0
        clock.now += 601
        assert ob.mark_sent([i.seq for i in ob.take(10)], 60.0, 600.0, fallback=3600.0) == 2
        assert len(ob) == 0 and ob.size_bytes == 0
        counters = ob.stats().counters
        assert counters["released_on_puback"] == 2 and counters["published"] == 2


def test_no_fallback_once_a_collector_has_answered(tmp_path: Path, ident: Identity) -> None:
    """Receipts were seen: a missing one means a lost record, never "an old collector"."""
    clock = Clock()
    with outbox(tmp_path, ident, clock) as ob:
        ids = fill(ob, ident, 2)
        ob.apply_receipt(Receipt(stored=(ids[0],)))
        ob.mark_sent([i.seq for i in ob.take(10)], 60.0, 600.0, fallback=10.0)
        clock.now += 10 * 86400
        assert ob.mark_sent([i.seq for i in ob.take(10)], 60.0, 600.0, fallback=10.0) == 0
        assert len(ob) == 1 and ob.awaiting_receipt() == 1


@pytest.mark.parametrize(
    ("topic", "ours"),
    [
        ("vigil/v1/probes/{id}/receipts", True),
        ("edge/vigil/v1/probes/{id}/receipts", True),  # delivered with a mount point left on
        ("vigil/v1/probes/{id}/commands", False),
        ("vigil/v1/probes/other{id}/receipts", False),
        ("xvigil/v1/probes/{id}/receipts", False),
    ],
)
def test_publisher_knows_its_receipts_topic(
    tmp_path: Path, ident: Identity, topic: str, ours: bool
) -> None:
    from agent.uplink.publisher import Publisher, PublisherSettings

    with outbox(tmp_path, ident, Clock()) as ob:
        pub = Publisher(ob, PublisherSettings(host="127.0.0.1", password="x"))
        assert pub._is_receipts(topic.format(id=ident.probe_id)) is ours
