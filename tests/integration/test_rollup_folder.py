"""The rollups folded after the ingest (Store.fold_rollups) stay exact, in both stores.

The ingest stores measurements only; a folder adds the rows numbered after the watermark to
the rollups in its own transactions.  These tests hold it to "every stored measurement
counted exactly once": answers before, during and after folding, a fold that dies half way
(a process killed inside the transaction), duplicates, prune of folded and unfolded rows, and
on PostgreSQL several collectors writing and folding at once, committing out of order.
Expected numbers are computed from the rows written, by plain Python.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from collector.store import open_store
from collector.store.base import IngestBatch, MeasurementRow, Store
from collector.store.rollups import (
    FOLDED,
    ROLLUP_DOMAIN,
    ROLLUP_MONTH,
    AggFilter,
    Fact,
    delta_params,
    derive,
    fold,
    pivot,
    pivot_params,
)
from lab.archive import Archive, generate
from tests.integration.test_archive_store import CASES, UNTIL, expected
from tests.support.collector import overlapping_collectors

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def archive() -> Archive:
    return generate(600, days=75, until=UNTIL, seed=11)


@pytest.fixture
def store(store_url: str, archive: Archive) -> Iterator[Store]:
    s = open_store(store_url)
    try:
        for p in archive.probes.values():
            s.add_probe(p.probe_id, p.public_raw)
        yield s
    finally:
        s.close()


def write(s: Store, rows: list[MeasurementRow], size: int = 100) -> None:
    for i in range(0, len(rows), size):
        s.write_batch(IngestBatch(measurements=rows[i : i + size]))


def fold_all(s: Store, rounds: int = 10) -> None:
    """Fold until caught up (PostgreSQL may need a second call to pass a horizon)."""
    for _ in range(rounds):
        if s.fold_rollups() == 0 and _unfolded(s) == 0:
            return
    raise AssertionError(f"still {_unfolded(s)} rows after the watermark")


def _q(s: Store, sql: str) -> Any:
    return s._query(sql)[0][0]  # type: ignore[attr-defined]


def _unfolded(s: Store) -> int:
    seq = s._seq  # type: ignore[attr-defined]
    return int(_q(s, f"SELECT COUNT(*) FROM measurements WHERE {seq} > "
                     "(SELECT folded FROM rollup_state WHERE id = 1)"))


# Every rollup table the folder fills (rollup_domain's ``n`` is its total too).
ROLLUPS = (*(t.name for t in FOLDED), ROLLUP_DOMAIN.name)


def folded_counts(s: Store) -> dict[str, int]:
    """How many measurements each rollup table counts (without the unfolded tail)."""
    return {t: int(_q(s, f"SELECT COALESCE(SUM(n), 0) FROM {t}")) for t in ROLLUPS}


def assert_derived_rollups(s: Store, rows: list[MeasurementRow]) -> None:
    """rollup_month and rollup_domain, row by row and column by column, are what prune's
    subtraction (rollups.derive, rollups.pivot) takes them to hold for these rows."""
    unique = list({r.measurement_id: r for r in rows}.values())
    delta = fold(Fact(r.start_ts, r.probe_cc, r.probe_asn, r.domain, r.category_code,
                      r.test_name, r.blocking, r.status) for r in unique)
    t = ROLLUP_MONTH
    month = s._query(  # type: ignore[attr-defined]
        f"SELECT bucket, {', '.join(t.columns)}, n FROM {t.name} "
        f"ORDER BY bucket, {', '.join(t.columns)}")
    assert sorted(tuple(int(x) if i in (0, len(r) - 1) else x for i, x in enumerate(r))
                  for r in month) == delta_params(derive(delta), t)
    d = ROLLUP_DOMAIN
    domain = s._query(  # type: ignore[attr-defined]
        f"SELECT {', '.join((*d.columns, *d.counts))} FROM {d.name}")
    assert sorted((*r[:len(d.columns)], *(int(x) for x in r[len(d.columns):]))
                  for r in domain) == pivot_params(pivot(delta))


def assert_answers(s: Store, rows: list[MeasurementRow]) -> None:
    for dims, where in CASES:
        got = s.aggregate(dims, where, limit=10_000)
        want = expected(rows, dims, where, got.plan.since, got.plan.until)
        assert {r.keys: Counter(r.counts) for r in got.rows} == want, (dims, where)
        assert got.total == sum(sum(c.values()) for c in want.values())


def test_answers_count_the_unfolded_tail(store: Store, archive: Archive) -> None:
    rows = archive.rows
    write(store, rows)
    assert folded_counts(store) == {t: 0 for t in ROLLUPS}  # nothing folded yet
    assert _unfolded(store) == len(rows)
    assert_answers(store, rows)  # all from the tail
    assert store.fold_rollups(max_span=250) > 0  # part folded, part in the tail
    part = folded_counts(store)
    assert 0 < part["rollup_day"] < len(rows)
    assert set(part.values()) == {part["rollup_day"]}
    assert_answers(store, rows)
    fold_all(store)
    assert folded_counts(store) == {t: len(rows) for t in ROLLUPS}
    assert_derived_rollups(store, rows)
    assert_answers(store, rows)  # all from the rollups
    assert store.fold_rollups() == 0
    assert folded_counts(store) == {t: len(rows) for t in ROLLUPS}  # nothing twice


def test_duplicates_are_folded_once(store: Store, archive: Archive) -> None:
    rows = archive.rows[:300]
    write(store, rows)
    fold_all(store)
    write(store, [*rows[:50], *rows[:50], *rows[250:]])  # replays, folded and not
    write(store, rows[250:])
    fold_all(store)
    assert folded_counts(store) == {t: 300 for t in ROLLUPS}
    assert_answers(store, rows)


_KILL_MID_FOLD = """
import os, sys
from collector.store import open_store
s = open_store(sys.argv[1])
real = s._transaction
def dying():
    cm = real()
    cur = cm.__enter__()
    class Cur:
        n = 0
        def __getattr__(self, name):
            return getattr(cur, name)
        def execute(self, sql, params=()):
            cur.execute(sql, params)
            if sql.startswith("INSERT INTO rollup_"):
                Cur.n += 1
                if Cur.n == 2:  # one rollup table written, another half way: die here
                    os._exit(9)
    class Ctx:
        def __enter__(self):
            return Cur()
        def __exit__(self, *exc):
            return cm.__exit__(*exc)
    return Ctx()
s._transaction = dying
s.fold_rollups()
"""


def test_a_fold_killed_half_way_counts_nothing_and_the_next_counts_once(
        store: Store, store_url: str, archive: Archive) -> None:
    rows = archive.rows
    write(store, rows[:200])
    fold_all(store)
    write(store, rows[200:])  # a second batch of rows, then a folder dies inside its fold
    before = folded_counts(store)
    store.close()
    proc = subprocess.run([sys.executable, "-c", _KILL_MID_FOLD, store_url], cwd=REPO,
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 9, proc.stderr.decode()
    s = open_store(store_url)
    try:
        assert folded_counts(s) == before == {t: 200 for t in ROLLUPS}
        assert _unfolded(s) == len(rows) - 200
        assert_answers(s, rows)
        fold_all(s)
        assert folded_counts(s) == {t: len(rows) for t in ROLLUPS}
        assert_answers(s, rows)
    finally:
        s.close()


def test_prune_of_folded_and_unfolded_rows_keeps_answers_exact(
        store: Store, archive: Archive) -> None:
    rows = archive.rows
    half = len(rows) // 2
    write(store, rows[:half])
    fold_all(store)
    write(store, rows[half:])  # not folded when prune runs
    cutoff = datetime.fromtimestamp(UNTIL, UTC) - timedelta(days=30, hours=5)
    kept = [r for r in rows if r.start_ts >= cutoff.timestamp()]
    assert store.prune(cutoff, batch=37) == len(rows) - len(kept)
    assert_answers(store, kept)
    fold_all(store)
    assert folded_counts(store) == {t: len(kept) for t in ROLLUPS}
    assert_derived_rollups(store, kept)
    assert_answers(store, kept)


def test_rows_stored_after_the_newest_were_pruned_are_still_folded(
        store: Store, archive: Archive) -> None:
    """Prune may delete the newest (highest numbered) rows; the next ones must be numbered
    after the watermark all the same (SQLite would reuse the rowids)."""
    rows = sorted(archive.rows, key=lambda r: r.start_ts)
    recent, old = rows[-100:], rows[:100]
    write(store, recent)
    write(store, old)  # stored last, so numbered highest
    fold_all(store)
    assert store.prune(datetime.fromtimestamp(old[-1].start_ts + 1, UTC)) == len(old)
    more = rows[200:300]
    write(store, more)
    fold_all(store)
    assert folded_counts(store) == {t: len(recent) + len(more) for t in ROLLUPS}
    assert_answers(store, recent + more)


@pytest.mark.postgres
def test_collectors_committing_out_of_order_are_folded_once(
        pg_url: str, archive: Archive) -> None:
    """Collector A holds numbers it has not committed while B commits higher ones and folds:
    the fold must stop below A's rows, and count them once A commits."""
    a, b = open_store(pg_url), open_store(pg_url)
    try:
        for p in archive.probes.values():
            a.add_probe(p.probe_id, p.public_raw)
        rows = archive.rows
        write(a, rows[:100])
        fold_all(b)
        with a._transaction() as cur:  # type: ignore[attr-defined]
            a._insert_measurements(cur, rows[100:200])  # type: ignore[attr-defined]
            write(b, rows[200:300])  # numbered after A's, committed first
            for _ in range(3):
                b.fold_rollups()
            assert folded_counts(b)["rollup_day"] == 100  # not past A's uncommitted rows
            assert_answers(b, rows[:100] + rows[200:300])  # what is committed, exactly
        assert_answers(b, rows[:300])
        fold_all(b)
        assert folded_counts(b) == {t: 300 for t in ROLLUPS}
        assert_answers(a, rows[:300])
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
def test_concurrent_collectors_writing_and_folding(pg_url: str, archive: Archive) -> None:
    """Two collectors (threads, one connection each) store interleaved, overlapping batches
    and fold after each; a third prunes meanwhile: every kept row counted once."""
    setup = open_store(pg_url)
    for p in archive.probes.values():
        setup.add_probe(p.probe_id, p.public_raw)
    rows = archive.rows
    cutoff = datetime.fromtimestamp(UNTIL, UTC) - timedelta(days=60)
    try:
        errors = overlapping_collectors(pg_url, rows, lambda: setup.prune(cutoff, batch=10))
        assert not errors, errors
        setup.prune(cutoff, batch=10)  # what arrived after the first prune
        fold_all(setup)
        kept = [r for r in rows if r.start_ts >= cutoff.timestamp()]
        assert setup.measurement_count() == len(kept)
        assert folded_counts(setup) == {t: len(kept) for t in ROLLUPS}
        assert_answers(setup, kept)
    finally:
        setup.close()


def test_the_watermark_survives_reopening(store: Store, store_url: str,
                                          archive: Archive) -> None:
    rows = archive.rows[:250]
    write(store, rows)
    fold_all(store)
    store.close()
    s = open_store(store_url)
    try:
        assert s.fold_rollups() == 0
        assert folded_counts(s) == {t: 250 for t in ROLLUPS}
        got = s.aggregate(CASES[0][0], AggFilter(), limit=10_000)
        assert got.total == 250
    finally:
        s.close()
