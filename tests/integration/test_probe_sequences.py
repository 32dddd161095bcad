"""Delivery gaps kept by the folder (collector.store.sequences) equal a count from scratch.

``Store.delivery_gaps`` reads ``probe_sequences`` plus the rows after the watermark; these
tests hold it, in both stores, to what ``MAX(probe_seq), COUNT(DISTINCT probe_seq)`` over
every stored row says, at every step: before any fold, with part folded, after folding;
with gaps, resent records (same id), numbers stored twice under different ids (a probe that
lost its outbox and numbered from 1 again), collectors restarting between batches, prune of
folded and unfolded rows, the migration that adds the table to a store with rows, and on
PostgreSQL two collectors writing, folding and pruning at once.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from collector.store import open_store, postgres, sqlite
from collector.store.base import DeliveryGaps, IngestBatch, MeasurementRow, Store
from tests.support.collector import overlapping_collectors

T0 = 1_780_000_000.0


def row(i: int, probe: str, seq: int | None, payload: bytes | None = None) -> MeasurementRow:
    """Measurement ``i`` (its id and time follow ``i``) of ``probe`` numbered ``seq``."""
    return MeasurementRow(
        measurement_id=str(uuid.UUID(int=(0x0190 << 112) | (7 << 76) | i)), probe_id=probe,
        test_name="web_connectivity", input="https://example.org/", domain="example.org",
        category_code="NEWS", probe_cc="IR", probe_asn="AS64500", probe_network_name="Net",
        status="ok", blocking=None, reason="", confirmed=False, start_ts=T0 + i,
        received_ts=T0 + i + 1, payload_type="application/vnd.vigil.measurement+json",
        payload=payload if payload is not None else b'{"i": %d}' % i, signature=b"sig",
        probe_seq=seq)


def stream(seed: int, n: int = 600) -> list[MeasurementRow]:
    """Rows of four probes in arrival order: numbers with gaps, some out of order, some
    records resent (same id and bytes), a probe that starts numbering again from 1 halfway
    (new ids, numbers it used before), and unnumbered rows (older agents)."""
    rng = random.Random(seed)
    nxt = {"pa": 1, "pb": 1, "pc": 1, "pd": 1}
    rows: list[MeasurementRow] = []
    for i in range(n):
        probe = rng.choice(sorted(nxt))
        if probe == "pd":
            rows.append(row(i, probe, None))  # an agent without sequence numbers
            continue
        if probe == "pc" and i == n // 2:
            nxt[probe] = 1  # lost its outbox: numbers again from 1
        nxt[probe] += rng.choice((1, 1, 1, 2, 5))  # gaps: records lost on the way
        rows.append(row(i, probe, nxt[probe] - 1))
        if rng.random() < 0.1 and rows:
            rows.append(rng.choice(rows))  # a resend of something already sent
    # Some arrive late, out of order.
    for _ in range(n // 20):
        a, b = rng.randrange(len(rows)), rng.randrange(len(rows))
        rows[a], rows[b] = rows[b], rows[a]
    return rows


def from_scratch(s: Store) -> dict[str, DeliveryGaps]:
    """What counting every stored row says (the query delivery_gaps replaced)."""
    rows = s._query(  # type: ignore[attr-defined]
        "SELECT probe_id, MAX(probe_seq), COUNT(DISTINCT probe_seq) FROM measurements "
        "WHERE probe_seq IS NOT NULL GROUP BY probe_id")
    return {str(p): DeliveryGaps(str(p), int(top), int(n)) for p, top, n in rows}


def kept(s: Store) -> dict[str, tuple[int, int]]:
    return {str(p): (int(top), int(n)) for p, top, n in s._query(  # type: ignore[attr-defined]
        "SELECT probe_id, last_seq, received FROM probe_sequences")}


def unfolded(s: Store) -> int:
    seq = s._seq  # type: ignore[attr-defined]
    return int(s._query(  # type: ignore[attr-defined]
        f"SELECT COUNT(*) FROM measurements WHERE {seq} > "
        "(SELECT folded FROM rollup_state WHERE id = 1)")[0][0])


def fold_all(s: Store, rounds: int = 20) -> None:
    for _ in range(rounds):
        if s.fold_rollups() == 0 and unfolded(s) == 0:
            return
    raise AssertionError(f"still {unfolded(s)} rows after the watermark")


def write(s: Store, rows: list[MeasurementRow], size: int) -> None:
    for i in range(0, len(rows), size):
        s.write_batch(IngestBatch(measurements=rows[i : i + size]))


def test_counts_match_a_count_from_scratch_at_every_step(store: Store) -> None:
    rows = stream(1)
    write(store, rows[:150], 25)
    assert kept(store) == {}  # nothing folded yet: every answer is the tail
    want = from_scratch(store)
    assert want and any(g.missing for g in want.values())  # the stream has gaps
    assert store.delivery_gaps() == want
    for i in range(150, len(rows), 40):
        write(store, rows[i : i + 40], 13)
        store.fold_rollups(max_span=17)  # a part folded, the rest in the tail
        assert store.delivery_gaps() == from_scratch(store)
    fold_all(store)
    assert store.delivery_gaps() == from_scratch(store)
    assert kept(store) == {p: (g.last_seq, g.received) for p, g in from_scratch(store).items()}
    assert "pd" not in store.delivery_gaps()  # never numbered


def test_numbers_stored_twice_are_counted_once(store: Store) -> None:
    # pa sends 1..3; its outbox is lost; it numbers 1..2 again under new ids; one resend.
    rows = [row(1, "pa", 1), row(2, "pa", 2), row(3, "pa", 3), row(4, "pa", 1),
            row(5, "pa", 2), row(3, "pa", 3), row(6, "pb", 4)]
    write(store, rows[:3], 3)
    fold_all(store)
    write(store, rows[3:], 2)  # the repeated numbers in the tail, then folded
    assert store.delivery_gaps()["pa"] == DeliveryGaps("pa", 3, 3)
    fold_all(store)
    assert store.delivery_gaps() == {"pa": DeliveryGaps("pa", 3, 3),
                                     "pb": DeliveryGaps("pb", 4, 1)}
    assert store.delivery_gaps()["pb"].missing == 3
    # The same number twice in one batch, and in one fold.
    write(store, [row(7, "pc", 9), row(8, "pc", 9), row(9, "pc", 10)], 3)
    fold_all(store)
    assert store.delivery_gaps()["pc"] == DeliveryGaps("pc", 10, 2)
    assert store.delivery_gaps() == from_scratch(store)


def test_collectors_restarting_between_batches(store_url: str) -> None:
    """Each round a new collector (a new connection) stores and folds part of the stream."""
    rows = stream(2)
    for i in range(0, len(rows), 120):
        s = open_store(store_url)
        try:
            write(s, rows[i : i + 120], 30)
            s.fold_rollups(max_span=50)  # leaves a tail for the next collector
            assert s.delivery_gaps() == from_scratch(s)
        finally:
            s.close()
    s = open_store(store_url)
    try:
        fold_all(s)
        assert s.delivery_gaps() == from_scratch(s)
    finally:
        s.close()


def test_prune_of_folded_and_unfolded_rows_keeps_the_counts_exact(store: Store) -> None:
    rows = stream(3)
    write(store, rows[:400], 50)
    fold_all(store)
    write(store, rows[400:], 50)  # unfolded when prune runs
    # Numbers that survive in a later row (renumbered probe) and the highest numbers go too.
    cutoff = datetime.fromtimestamp(T0 + 450, UTC)
    assert store.prune(cutoff, batch=37) > 0
    assert store.delivery_gaps() == from_scratch(store)
    fold_all(store)
    assert store.delivery_gaps() == from_scratch(store)
    assert kept(store) == {p: (g.last_seq, g.received) for p, g in from_scratch(store).items()}
    # Everything pruned: nothing left to report.
    store.prune(datetime.fromtimestamp(T0 + 10_000, UTC), batch=100)
    assert store.delivery_gaps() == {} == from_scratch(store)
    assert kept(store) == {}


def test_prune_keeps_a_number_another_folded_row_still_carries(store: Store) -> None:
    write(store, [row(1, "pa", 1), row(2, "pa", 2), row(50, "pa", 1), row(51, "pa", 2)], 4)
    fold_all(store)
    store.prune(datetime.fromtimestamp(T0 + 10, UTC))  # rows 1 and 2 go, 50 and 51 stay
    assert store.delivery_gaps() == {"pa": DeliveryGaps("pa", 2, 2)} == from_scratch(store)
    write(store, [row(60, "pa", 7)], 1)
    fold_all(store)
    store.prune(datetime.fromtimestamp(T0 + 55, UTC))  # the highest stays, 1 and 2 go
    assert store.delivery_gaps() == {"pa": DeliveryGaps("pa", 7, 1)} == from_scratch(store)


def fold_as_schema_5(s: Store, max_span: int) -> None:
    """The folder before probe_sequences existed: the rollups and the watermark only."""
    with s._transaction() as cur:  # type: ignore[attr-defined]
        folded = s._fold_state(cur, wait=False)  # type: ignore[attr-defined]
        horizon = s._fold_horizon(cur)  # type: ignore[attr-defined]
        if horizon is None or horizon <= folded:
            return
        hi = min(horizon, folded + max_span)
        s._fold_range(cur, folded, hi)  # type: ignore[attr-defined]
        cur.execute("UPDATE rollup_state SET folded = ? WHERE id = 1", (hi,))


@pytest.mark.parametrize("folded_before", [0, 200, 600])
def test_migration_fills_the_table_from_an_existing_store(
        store_url: str, monkeypatch: pytest.MonkeyPatch, folded_before: int) -> None:
    """A store at schema 5 with rows, some folded: the migration counts the folded ones,
    the rest is the tail until folded."""
    module = sqlite if store_url.startswith("sqlite") else postgres
    before = tuple(m for m in module.MIGRATIONS if m.version < 6)
    assert len(before) == len(module.MIGRATIONS) - 1
    rows = stream(4)
    with monkeypatch.context() as m:
        m.setattr(module, "MIGRATIONS", before)
        old = open_store(store_url)
        try:
            assert old.schema_version() == 5
            write(old, rows, 50)
            if folded_before:
                for _ in range(2):  # PostgreSQL: the second passes the horizon
                    fold_as_schema_5(old, folded_before)
            want = from_scratch(old)
        finally:
            old.close()
    s = open_store(store_url)
    try:
        assert s.schema_version() == 6
        assert s.delivery_gaps() == want
        folded = sum(n for _, n in kept(s).values())
        assert (folded == 0) == (folded_before == 0)
        fold_all(s)
        assert s.delivery_gaps() == want
        assert kept(s) == {p: (g.last_seq, g.received) for p, g in want.items()}
    finally:
        s.close()


@pytest.mark.postgres
def test_rows_from_before_sequence_numbers_count_as_folded(pg_url: str) -> None:
    """PostgreSQL rows stored before migration 5 have no ``seq`` (NULL): they were in the
    rollups already, so the migration counts them and a later copy of a number is not new."""
    s = open_store(pg_url)
    try:
        write(s, [row(1, "pa", 1), row(2, "pa", 2)], 2)
        s._query("UPDATE measurements SET seq = NULL RETURNING 1")  # type: ignore[attr-defined]
        s._query("DELETE FROM probe_sequences RETURNING 1")  # type: ignore[attr-defined]
        s._query("INSERT INTO probe_sequences (probe_id, last_seq, received) "  # type: ignore[attr-defined]
                 "VALUES ('pa', 2, 2) RETURNING 1")
        write(s, [row(3, "pa", 2), row(4, "pa", 3)], 2)
        assert s.delivery_gaps() == {"pa": DeliveryGaps("pa", 3, 3)} == from_scratch(s)
        fold_all(s)
        assert kept(s) == {"pa": (3, 3)}
        s.prune(datetime.fromtimestamp(T0 + 1.5, UTC))  # a NULL-numbered row goes
        assert s.delivery_gaps() == {"pa": DeliveryGaps("pa", 3, 2)} == from_scratch(s)
    finally:
        s.close()


@pytest.mark.postgres
def test_concurrent_collectors_writing_folding_and_pruning(pg_url: str) -> None:
    rows = stream(5, n=900)
    setup = open_store(pg_url)
    try:
        errors = overlapping_collectors(
            pg_url, rows, lambda: setup.prune(datetime.fromtimestamp(T0 + 200, UTC), batch=10))
        assert not errors, errors
        assert setup.delivery_gaps() == from_scratch(setup)
        fold_all(setup)
        want = from_scratch(setup)
        assert setup.delivery_gaps() == want
        assert kept(setup) == {p: (g.last_seq, g.received) for p, g in want.items()}
    finally:
        setup.close()


def test_sqlite_reads_the_rows_after_the_watermark_by_rowid(tmp_path: Path) -> None:
    """The tail of a question (delivery gaps, an aggregation filtered on an indexed column)
    is a rowid range: SQLite must not walk the probe_seq or the country's index over every
    row to find the few after the watermark."""
    from collector.store.rollups import AggDimension, AggFilter

    s = open_store(f"sqlite://{tmp_path}/collector.db")
    try:
        write(s, stream(6, n=300), 50)
        s.fold_rollups(max_span=200)
        seen: list[tuple[str, tuple[object, ...]]] = []
        query = s._query  # type: ignore[attr-defined]

        def spy(sql: str, params: Any = ()) -> Any:
            seen.append((sql, tuple(params)))
            return query(sql, params)

        s._query = spy  # type: ignore[attr-defined]
        assert s.delivery_gaps() == from_scratch(s)
        s.aggregate((AggDimension.DOMAIN, AggDimension.NETWORK), AggFilter(probe_cc="IR"))
        s.aggregate((AggDimension.DAY, AggDimension.NETWORK), AggFilter(probe_cc="IR"))
        tails = [(sql, p) for sql, p in seen if "rowid >" in sql]
        assert len(tails) >= 3
        for sql, params in tails:
            plan = " | ".join(str(r[3]) for r in query("EXPLAIN QUERY PLAN " + sql, params))
            assert "INTEGER PRIMARY KEY (rowid>" in plan, plan
            assert "measurements_cc_id" not in plan and "SCAN m USING" not in plan, plan
    finally:
        s.close()
