"""docs/scaling.md's monthly partitioning of the PostgreSQL measurements table on its UUIDv7
primary key, run as written (the month names moved to the current month): the collector's
store works unchanged on the partitioned table: rows land in their month's partition,
deduplication still spans every partition, counts, pages and prune behave."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from collector.store import Store, open_store
from lab.probes import TestProbe
from tests.integration.test_store import Rows

pytestmark = pytest.mark.postgres

DOC = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


def doc_sql(month: datetime) -> str:
    """The doc's SQL block with its example month replaced by ``month``."""
    [sql] = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)
    nxt = (month + timedelta(days=32)).replace(day=1)
    return (sql.replace("measurements_2026_06", f"measurements_{month:%Y_%m}")
            .replace("'2026-06-01'", f"'{month:%Y-%m-%d}'")
            .replace("'2026-07-01'", f"'{nxt:%Y-%m-%d}'"))


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    s = open_store(pg_url)
    try:
        yield s
    finally:
        s.close()


def test_the_documented_partitioning_keeps_the_store_working(store: Store, pg_url: str) -> None:
    p = TestProbe.new()
    rows = Rows(p)
    rows.enrol(store)
    before = [rows.make(p) for _ in range(30)]
    assert store.insert_measurements(before).new == 30
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(doc_sql(month))  # type: ignore[arg-type]  # the doc's SQL, as written
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'measurements'"
                            ).fetchone()
    assert kind == ("p",)  # partitioned
    after = [rows.make(p) for _ in range(20)]
    result = store.insert_measurements([*after, *before[:5]])
    assert result.new == 20  # dedup spans the partitions (the copied rows are found)
    assert set(result.duplicates) == {r.measurement_id for r in before[:5]}
    assert store.measurement_count() == 50
    with psycopg.connect(pg_url) as conn:
        where: dict[str, int] = dict(conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM measurements GROUP BY 1").fetchall())
    assert where == {f"measurements_{month:%Y_%m}": 50}  # this month's ids, this month's table
    assert {m.measurement_id for m in store.recent(100)} == {
        r.measurement_id for r in before + after}
    # prune still works row by row (and keeps the aggregates exact)
    pruned = store.prune(datetime.now(UTC) + timedelta(minutes=5))
    assert store.measurement_count() == 0, pruned
