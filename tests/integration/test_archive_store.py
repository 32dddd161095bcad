"""Rollups, aggregation, the new filters, bounded counts and retention, in both stores.

The archive is synthetic but signed and schema-shaped (lab.archive); every expected number is
computed here from the rows that were written, by plain Python over the rows, never typed in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from collector.store import open_store
from collector.store.base import Filter, IngestBatch, MeasurementRow, Store
from collector.store.rollups import (
    DIMENSION_COLUMN,
    AggDimension,
    AggFilter,
    Grain,
    PlanError,
    bucket_start,
)
from collector.store.sqlbase import page_index_statements
from lab.archive import Archive, generate

D = AggDimension
UNTIL = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def archive() -> Archive:
    # 75 days ending in March: spans three calendar months.
    return generate(900, days=75, until=UNTIL, seed=7)


@pytest.fixture
def store(store_url: str, archive: Archive) -> Iterator[Store]:
    s = open_store(store_url)
    try:
        for p in archive.probes.values():
            s.add_probe(p.probe_id, p.public_raw)
        rows = archive.rows
        for i in range(0, len(rows), 250):
            s.write_batch(IngestBatch(measurements=rows[i : i + 250]))
        # Replays (inside a batch and across batches) must not be counted twice.
        s.write_batch(IngestBatch(measurements=[*rows[:40], *rows[:5]]))
        yield s
    finally:
        s.close()


def value(r: MeasurementRow, d: AggDimension) -> object:
    if d.is_time:
        return datetime.fromtimestamp(bucket_start(r.start_ts, Grain(d.value)), UTC)
    v = getattr(r, DIMENSION_COLUMN[d])
    return "" if v is None else v


def expected(rows: list[MeasurementRow], dims: tuple[AggDimension, ...], where: AggFilter,
             since: datetime | None, until: datetime | None) -> dict[tuple[object, ...],
                                                                     Counter[str]]:
    out: dict[tuple[object, ...], Counter[str]] = {}
    for r in rows:
        if since is not None and r.start_ts < since.timestamp():
            continue
        if until is not None and r.start_ts >= until.timestamp():
            continue
        skip = False
        for col in ("probe_cc", "probe_asn", "domain", "category_code", "test_name"):
            want = getattr(where, col)
            if want is not None and getattr(r, col) != want:
                skip = True
        if where.blocking is not None and (r.blocking or "") != where.blocking:
            skip = True
        if skip:
            continue
        out.setdefault(tuple(value(r, d) for d in dims), Counter())[r.status] += 1
    return out


def at(days_before_end: float) -> datetime:
    return datetime.fromtimestamp(UNTIL - days_before_end * 86400, UTC)


CASES: list[tuple[tuple[AggDimension, ...], AggFilter]] = [
    ((D.DAY, D.COUNTRY), AggFilter()),
    ((D.DAY, D.NETWORK), AggFilter(probe_cc="IR", since=at(40), until=at(10))),
    ((D.NETWORK, D.BLOCKING), AggFilter(since=at(50) + timedelta(hours=5))),
    ((D.DOMAIN, D.NETWORK), AggFilter(probe_cc="IQ")),
    ((D.MONTH, D.CATEGORY), AggFilter(blocking="dns")),
    ((D.HOUR, D.TEST), AggFilter(since=at(3) + timedelta(minutes=7), until=at(1))),
    ((D.DAY, D.BLOCKING), AggFilter(domain="telegram.org", since=at(20) + timedelta(hours=3))),
    ((D.COUNTRY,), AggFilter(blocking="", test_name="web_connectivity")),
    ((D.CATEGORY, D.COUNTRY), AggFilter(category_code="COMT")),
    ((D.TEST,), AggFilter(since=at(9) + timedelta(hours=2), until=at(2))),
    ((D.DOMAIN, D.NETWORK), AggFilter()),
    ((D.NETWORK,), AggFilter(domain="telegram.org")),
    ((D.DOMAIN, D.TEST), AggFilter(probe_asn="AS44244", test_name="web_connectivity")),
]


@pytest.mark.parametrize(("dims", "where"), CASES, ids=[
    "-".join(d.value for d in c[0]) + f"-{i}" for i, c in enumerate(CASES)])
def test_aggregation_matches_the_rows(store: Store, archive: Archive,
                                      dims: tuple[AggDimension, ...], where: AggFilter) -> None:
    got = store.aggregate(dims, where, limit=10_000)
    want = expected(archive.rows, dims, where, got.plan.since, got.plan.until)
    assert {r.keys: Counter(r.counts) for r in got.rows} == want
    assert got.total == sum(sum(c.values()) for c in want.values())
    assert got.groups == len(want)
    assert want, "the case must count something"
    # The bounds actually counted contain the ones asked for.
    if where.since is not None and got.plan.since is not None:
        assert got.plan.since <= where.since
    if where.until is not None and got.plan.until is not None:
        assert got.plan.until >= where.until


def test_techniques_and_shares(store: Store, archive: Archive) -> None:
    got = store.aggregate((D.DOMAIN, D.NETWORK), AggFilter(probe_cc="IR"))
    row = next(r for r in got.rows if r.keys == ("twitter.com", "AS44244"))
    rows = [r for r in archive.rows if r.domain == "twitter.com" and r.probe_asn == "AS44244"]
    blocked = [r for r in rows if r.status in ("blocked", "throttled")]
    assert row.techniques == dict(Counter(r.blocking for r in blocked))
    assert row.share("blocked", "throttled") == round(len(blocked) / len(rows), 6)


def test_limit_keeps_the_largest_groups_and_orders_series_by_time(store: Store) -> None:
    everything = store.aggregate((D.DOMAIN,), limit=10_000)
    top = store.aggregate((D.DOMAIN,), limit=3)
    assert [r.keys for r in top.rows] == [r.keys for r in everything.rows[:3]]
    assert top.groups == everything.groups and top.total == everything.total
    series = store.aggregate((D.DAY, D.COUNTRY), limit=10_000)
    times = [r.keys[0] for r in series.rows]
    assert times == sorted(times)


@pytest.mark.parametrize(("dims", "where", "param"), [
    ((D.HOUR, D.DOMAIN), AggFilter(since=at(2)), "by"),
    ((D.DAY, D.CATEGORY), AggFilter(), "by"),
    ((D.DAY, D.HOUR), AggFilter(), "by"),
    ((D.HOUR,), AggFilter(), "since"),
    ((D.HOUR,), AggFilter(since=at(60)), "until"),
    ((D.COUNTRY, D.COUNTRY), AggFilter(), "by"),
])
def test_questions_no_rollup_answers_are_refused(
        store: Store, dims: tuple[AggDimension, ...], where: AggFilter, param: str) -> None:
    with pytest.raises(PlanError) as info:
        store.aggregate(dims, where)
    assert info.value.param == param and info.value.detail


def test_new_filters_on_measurement_pages(store: Store, archive: Archive) -> None:
    rows = archive.rows
    first = rows[0]
    cases = [
        (Filter(input="https://telegram.org/"), lambda r: r.input == "https://telegram.org/"),
        (Filter(category_code="NEWS"), lambda r: r.category_code == "NEWS"),
        (Filter(confirmed=True), lambda r: r.confirmed),
        (Filter(confirmed=False, probe_cc="IR"), lambda r: not r.confirmed and
         r.probe_cc == "IR"),
        (Filter(probe_network_name=first.probe_network_name),
         lambda r: r.probe_network_name == first.probe_network_name),
        (Filter(failure="tls"), lambda r: r.reason == "tls" or r.reason.startswith("tls.")),
        (Filter(failure="dns.injected"), lambda r: r.reason == "dns.injected"),
        (Filter(failure="dns.inj"), lambda r: False),
    ]
    for where, pred in cases:
        want = sorted((r.measurement_id for r in rows if pred(r)), reverse=True)
        got = [m.measurement_id for m in store.measurements_page(where, limit=10_000)]
        assert got == want, where
        assert store.measurement_count(where) == len(want)
        assert store.count_matching(where) == (len(want), False)


def test_count_matching_stops_at_its_cap(store: Store, archive: Archive) -> None:
    assert store.count_matching(None, cap=100) == (100, True)
    assert store.count_matching(None, cap=len(archive.rows)) == (len(archive.rows), False)


def test_prune_keeps_rollups_exact(store: Store, archive: Archive) -> None:
    cutoff = at(30) + timedelta(hours=7, minutes=13)
    gone = [r for r in archive.rows if r.start_ts < cutoff.timestamp()]
    kept = [r for r in archive.rows if r.start_ts >= cutoff.timestamp()]
    assert store.prune(cutoff, batch=97) == len(gone)
    assert store.measurement_count() == len(kept)
    for dims, where in CASES[:5]:
        got = store.aggregate(dims, where, limit=10_000)
        want = expected(kept, dims, where, got.plan.since, got.plan.until)
        assert {r.keys: Counter(r.counts) for r in got.rows} == want
    assert store.prune(cutoff) == 0


def test_rollups_are_built_for_an_archive_stored_before_they_existed(
        tmp_path: Path, archive: Archive) -> None:
    """Opening a store of schema version 2 fills the rollups from the stored rows."""
    import sqlite3

    path = tmp_path / "old.db"
    s = open_store(f"sqlite://{path}")
    s.write_batch(IngestBatch(measurements=archive.rows[:300]))
    want = s.aggregate((D.MONTH, D.DOMAIN), limit=10_000)
    s.close()
    db = sqlite3.connect(path)
    for table in ("rollup_hour", "rollup_day", "rollup_month_domain", "rollup_domain",
                  "rollup_month", "rollup_state", "probe_sequences"):
        db.execute(f"DROP TABLE {table}")
    for statement in page_index_statements("confirmed = 1"):
        if statement.startswith("CREATE INDEX"):
            db.execute(f"DROP INDEX {statement.split()[2]}")
    db.execute("CREATE INDEX measurements_domain ON measurements (domain, start_time)")
    db.execute("DROP INDEX measurements_cc_id")
    db.execute("DROP INDEX measurements_asn_id")
    db.execute("CREATE INDEX measurements_cc_time ON measurements (probe_cc, start_time)")
    db.execute("CREATE INDEX measurements_asn_time ON measurements (probe_asn, start_time)")
    db.execute("DELETE FROM schema_migrations WHERE version >= 3")
    db.commit()
    db.close()
    s = open_store(f"sqlite://{path}")
    try:
        got = s.aggregate((D.MONTH, D.DOMAIN), limit=10_000)
        assert got.rows == want.rows and got.total == 300
    finally:
        s.close()


def test_domain_questions_over_the_whole_archive_read_the_pivoted_rollup(store: Store) -> None:
    """The matrix and other all-time domain questions read rollup_domain; a time window, a
    blocking filter or dimension, or a time dimension go to the tables that keep them."""
    assert store.aggregate((D.DOMAIN, D.NETWORK), AggFilter(probe_cc="IR")).plan.source \
        == "rollup_domain"
    assert store.aggregate((D.CATEGORY,), AggFilter(domain="twitter.com")).plan.source \
        == "rollup_domain"
    for dims, where in [((D.DOMAIN, D.NETWORK), AggFilter(since=at(20))),
                        ((D.DOMAIN, D.BLOCKING), AggFilter()),
                        ((D.DOMAIN,), AggFilter(blocking="dns")),
                        ((D.MONTH, D.DOMAIN), AggFilter())]:
        assert store.aggregate(dims, where).plan.source == "rollup_month_domain", dims
    for dims, where in [((D.MONTH, D.CATEGORY), AggFilter(probe_cc="IR")),
                        ((D.CATEGORY, D.NETWORK), AggFilter(since=at(20))),
                        ((D.MONTH, D.COUNTRY), AggFilter())]:
        assert store.aggregate(dims, where).plan.source == "rollup_month", dims


def matches(r: MeasurementRow, where: Filter) -> bool:
    """A measurement against a filter, in plain Python (the reference for the pages)."""
    if where.since is not None and r.start_ts < where.since.timestamp():
        return False
    if where.until is not None and r.start_ts >= where.until.timestamp():
        return False
    if where.failure is not None and not (
            r.reason == where.failure or r.reason.startswith(where.failure + ".")):
        return False
    if where.blocking is not None and (r.blocking or "") != where.blocking:
        return False
    return all(getattr(where, col) is None or getattr(r, col) == getattr(where, col)
               for col in ("probe_cc", "probe_asn", "domain", "status", "category_code",
                           "confirmed", "test_name"))


def test_filtered_pages_walk_to_the_same_rows_as_a_plain_scan(
        store: Store, archive: Archive) -> None:
    """Every filter with an index of its own (verdicts other than ok by country or network,
    blocking and category in a window, failures, confirmed), paged with cursors both ways,
    gives exactly the matching rows in id order."""
    rows = archive.rows
    lo, hi = at(40) + timedelta(hours=3), at(8)
    cases = [
        Filter(probe_asn="AS44244", status="blocked"),
        Filter(probe_asn="AS44244", status="ok"),
        Filter(probe_cc="IR", status="down"),
        Filter(status="inconclusive"),
        Filter(status="throttled", since=lo),
        Filter(blocking="dns", since=lo, until=hi),
        Filter(blocking="tls", probe_cc="IQ"),
        Filter(blocking="http-diff", probe_asn="AS44244", until=hi),
        Filter(category_code="NEWS", since=lo, until=hi),
        Filter(failure="tls", probe_cc="IR"),
        Filter(failure="site", probe_asn="AS44244"),
        Filter(failure="dns.injected", since=lo),
        Filter(confirmed=True, probe_cc="IR", since=lo),
        Filter(confirmed=True),
        Filter(confirmed=False, status="blocked", probe_cc="IR"),
    ]
    for where in cases:
        want = sorted((r.measurement_id for r in rows if matches(r, where)), reverse=True)
        assert want, where
        for descending in (True, False):
            got: list[str] = []
            after: str | None = None
            for _ in range(len(want) // 7 + 2):
                page = store.measurements_page(where, limit=7, after=after,
                                               descending=descending)
                got += [m.measurement_id for m in page]
                if len(page) < 7:
                    break
                after = page[-1].measurement_id
            assert got == (want if descending else want[::-1]), (where, descending)
        assert store.count_matching(where) == (len(want), False)
