"""Aggregates kept beside the measurements, so "how much was blocked, where, since when"
answers in milliseconds however large the archive grows.

Five rollup tables count measurements per group.  The ingest only stores measurements; each
gets a sequence number that only grows (``seq`` on PostgreSQL, the rowid on SQLite), and the
ingest's folder (``Store.fold_rollups``, a task of the collector's ingest) adds the rows
numbered after the watermark ``rollup_state.folded`` to every rollup (FOLDED and
ROLLUP_DOMAIN) in larger batches, in SQL, moving the watermark in the same transaction: a
crash never counts a row twice or loses one.  Questions read the rollups plus the rows after
the watermark (the not-yet-folded tail, a few seconds of ingest) in one snapshot, so answers
are exact at any moment, and ``prune`` subtracts the folded rows it deletes:

    rollup_hour          hour  x country, network, test, blocking, status
    rollup_day           day   x country, network, test, blocking, status
    rollup_month_domain  month x country, network, domain, category, test, blocking, status
    rollup_month         month x country, network, category, test, blocking, status
    rollup_domain        all time: domain, network, country, category, test; one column per
                         status and per technique

Domain and category multiply the number of groups by the size of the test lists, so they are
kept per calendar month: a time series for *one* domain is read from the measurements
themselves (the ``domain`` index makes that a small range scan).  Questions about domains
over the whole archive (the domain x network matrix, a country's domains) read
``rollup_domain``: one row per group, already pivoted, so the answer is a scan of as many
rows as it has groups, with no statuses or months to add up.  :func:`plan` picks the source
for a question, or says why none fits.

Everything here is pure (no database): the folding, the bucket arithmetic and the planning;
the stores run the SQL it writes.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

HOUR = 3600
DAY = 86400
# Longest span an hour-grain question may cover (744 buckets per group at most).
MAX_HOUR_SPAN = timedelta(days=31)
STATUSES = ("ok", "blocked", "throttled", "down", "inconclusive")


class Grain(enum.StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class AggDimension(enum.StrEnum):
    """What ``/api/v1/aggregation`` can group by (at most two, at most one of them time)."""

    HOUR = "hour"
    DAY = "day"
    MONTH = "month"
    COUNTRY = "country"
    NETWORK = "network"
    DOMAIN = "domain"
    CATEGORY = "category"
    TEST = "test"
    BLOCKING = "blocking"

    @property
    def is_time(self) -> bool:
        return self in (AggDimension.HOUR, AggDimension.DAY, AggDimension.MONTH)


# Group dimensions and the column each reads (the same name in rollups and measurements).
DIMENSION_COLUMN: Mapping[AggDimension, str] = {
    AggDimension.COUNTRY: "probe_cc",
    AggDimension.NETWORK: "probe_asn",
    AggDimension.DOMAIN: "domain",
    AggDimension.CATEGORY: "category_code",
    AggDimension.TEST: "test_name",
    AggDimension.BLOCKING: "blocking",
}
# Columns that may be NULL in measurements and are '' in the rollups.
NULLABLE = frozenset({"domain", "category_code", "blocking"})


@dataclass(frozen=True, slots=True)
class RollupTable:
    name: str
    grain: Grain
    columns: tuple[str, ...]  # group columns after ``bucket``; the count is ``n``
    # How many group columns come before ``bucket`` in the primary key: 0 when questions are
    # mostly time ranges (hour, day), 2 (country, network) for the monthly domain table,
    # whose questions are mostly "this country's domains".
    leading: int = 0

    @property
    def key(self) -> tuple[str, ...]:
        return (*self.columns[: self.leading], "bucket", *self.columns[self.leading :])


ROLLUP_HOUR = RollupTable(
    "rollup_hour", Grain.HOUR, ("probe_cc", "probe_asn", "test_name", "blocking", "status")
)
ROLLUP_DAY = RollupTable(
    "rollup_day", Grain.DAY, ("probe_cc", "probe_asn", "test_name", "blocking", "status")
)
ROLLUP_MONTH_DOMAIN = RollupTable(
    "rollup_month_domain",
    Grain.MONTH,
    ("probe_cc", "probe_asn", "domain", "category_code", "test_name", "blocking", "status"),
    leading=2,
)
TABLES: tuple[RollupTable, ...] = (ROLLUP_HOUR, ROLLUP_DAY, ROLLUP_MONTH_DOMAIN)
# rollup_month_domain without the domain (a hundredth of its rows with a thousand domains):
# months and categories by country or network.  Its rows are derived from the monthly domain
# counts of a batch (derive), not counted from the facts again.
ROLLUP_MONTH = RollupTable(
    "rollup_month", Grain.MONTH,
    ("probe_cc", "probe_asn", "category_code", "test_name", "blocking", "status"), leading=1)
DERIVED: tuple[RollupTable, ...] = (ROLLUP_MONTH,)
RAW = "measurements"
TECHNIQUES = ("dns", "tcp_ip", "tls", "http-failure", "http-diff", "throttling")


@dataclass(frozen=True, slots=True)
class PivotTable:
    """A rollup without time whose rows hold one count per verdict status and, of the
    blocked or throttled measurements, one per technique (``counts``, after the total ``n``).
    Its primary key is ``columns`` in that order."""

    name: str
    columns: tuple[str, ...]
    counts: tuple[str, ...]


PIVOT_COUNTS = ("n", *(f"n_{s}" for s in STATUSES),
                *(f"t_{t.replace('-', '_')}" for t in TECHNIQUES))
# Keyed domain then network: the matrix groups (domain, network) in key order, without a
# sort (a country's matrix reads the whole table, a few rows per domain and network).
ROLLUP_DOMAIN = PivotTable(
    "rollup_domain", ("domain", "probe_asn", "probe_cc", "category_code", "test_name"),
    PIVOT_COUNTS)
# The rollups with a time bucket that the folder counts from the measurements, every one
# from the rows themselves (rollup_month too: derive() is prune's way, from a delta).
FOLDED: tuple[RollupTable, ...] = (*TABLES, *DERIVED)


# ---- time buckets ---------------------------------------------------------------------------
def bucket_start(ts: float, grain: Grain) -> int:
    """Start of the UTC hour, day or calendar month holding ``ts``, as Unix seconds."""
    if grain is Grain.HOUR:
        return int(ts // HOUR) * HOUR
    if grain is Grain.DAY:
        return int(ts // DAY) * DAY
    when = datetime.fromtimestamp(ts, UTC)
    return int(datetime(when.year, when.month, 1, tzinfo=UTC).timestamp())


def bucket_end(start: int, grain: Grain) -> int:
    """The start of the bucket after the one starting at ``start``."""
    if grain is Grain.HOUR:
        return start + HOUR
    if grain is Grain.DAY:
        return start + DAY
    when = datetime.fromtimestamp(start, UTC)
    year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


def widen(since: datetime | None, until: datetime | None, grain: Grain
          ) -> tuple[datetime | None, datetime | None]:
    """Bounds rounded outwards to whole buckets: what a rollup of that grain can answer."""
    lo = None if since is None else datetime.fromtimestamp(
        bucket_start(since.timestamp(), grain), UTC)
    hi = None
    if until is not None:
        start = bucket_start(until.timestamp(), grain)
        hi_ts = start if start == until.timestamp() else bucket_end(start, grain)
        hi = datetime.fromtimestamp(hi_ts, UTC)
    return lo, hi


# ---- folding new rows -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fact:
    """The columns of one measurement the rollups count."""

    start_ts: float
    probe_cc: str
    probe_asn: str
    domain: str | None
    category_code: str | None
    test_name: str
    blocking: str | None
    status: str


RollupDelta = dict[str, Counter[tuple[object, ...]]]
PivotDelta = dict[tuple[str, ...], list[int]]
_STATUS_SLOT = {s: 1 + i for i, s in enumerate(STATUSES)}
_TECHNIQUE_SLOT = {t: 1 + len(STATUSES) + i for i, t in enumerate(TECHNIQUES)}


def fold(facts: Iterable[Fact], sign: int = 1) -> RollupDelta:
    """Per table, ``(bucket, *group values) -> count`` for these measurements (``sign`` -1
    to subtract pruned ones): what ``prune`` takes off the rollups for the folded rows it
    deletes.  The key orders are those of ROLLUP_HOUR/DAY/MONTH_DOMAIN.columns."""
    hour: Counter[tuple[object, ...]] = Counter()
    day: Counter[tuple[object, ...]] = Counter()
    month: Counter[tuple[object, ...]] = Counter()
    month_of_day: dict[int, int] = {}
    for f in facts:
        ts = f.start_ts
        tail = (f.test_name, f.blocking or "", f.status)
        d = int(ts // DAY) * DAY
        hour[(int(ts // HOUR) * HOUR, f.probe_cc, f.probe_asn, *tail)] += sign
        day[(d, f.probe_cc, f.probe_asn, *tail)] += sign
        m = month_of_day.get(d)
        if m is None:
            m = month_of_day[d] = bucket_start(ts, Grain.MONTH)
        month[(m, f.probe_cc, f.probe_asn, f.domain or "", f.category_code or "", *tail)] += sign
    return {ROLLUP_HOUR.name: hour, ROLLUP_DAY.name: day, ROLLUP_MONTH_DOMAIN.name: month}


def derive(delta: RollupDelta) -> RollupDelta:
    """The rows of the DERIVED tables for a folded batch: rollup_month summed from the
    monthly domain counts."""
    month: Counter[tuple[object, ...]] = Counter()
    for (m, cc, asn, _, cat, test, blocking, status), n in \
            delta[ROLLUP_MONTH_DOMAIN.name].items():
        month[(m, cc, asn, cat, test, blocking, status)] += n
    return {ROLLUP_MONTH.name: month}


def derived_backfill_statements() -> list[str]:
    """Fill the DERIVED tables from rollup_month_domain (a pass over it, not the rows)."""
    t = ROLLUP_MONTH
    cols = ", ".join(("bucket", *t.columns))
    return [f"INSERT INTO {t.name} ({cols}, n) SELECT {cols}, SUM(n) "
            f"FROM {ROLLUP_MONTH_DOMAIN.name} GROUP BY {cols}"]


def pivot(delta: RollupDelta) -> PivotDelta:
    """The ``rollup_domain`` rows of a folded batch: its monthly domain counts summed over
    months and spread into one column per status and technique."""
    out: PivotDelta = {}
    width = len(PIVOT_COUNTS)
    monthly = delta[ROLLUP_MONTH_DOMAIN.name]
    for (_, cc, asn, dom, cat, test, blocking, status), n in monthly.items():
        key = (str(dom), str(asn), str(cc), str(cat), str(test))
        row = out.get(key)
        if row is None:
            row = out[key] = [0] * width
        row[0] += n
        slot = _STATUS_SLOT.get(str(status))
        if slot is not None:
            row[slot] += n
        if status in ("blocked", "throttled"):
            tslot = _TECHNIQUE_SLOT.get(str(blocking))
            if tslot is not None:
                row[tslot] += n
    return out


def pivot_params(delta: PivotDelta) -> list[tuple[object, ...]]:
    """Rows for :func:`pivot_upsert_sql` in key order (a fixed lock order), empty ones left
    out."""
    return [(*key, *row) for key, row in sorted(delta.items()) if any(row)]


def pivot_create_statement(count_type: str, suffix: str = "") -> str:
    t = ROLLUP_DOMAIN
    cols = ", ".join(f"{c} text NOT NULL" for c in t.columns)
    counts = ", ".join(f"{c} {count_type} NOT NULL" for c in t.counts)
    return (f"CREATE TABLE {t.name} ({cols}, {counts}, "
            f"PRIMARY KEY ({', '.join(t.columns)})){suffix}")


def pivot_backfill_statement() -> str:
    """Fill ``rollup_domain`` from ``rollup_month_domain`` (which counts the same rows per
    month, status and technique): a pass over the monthly rollup, not the measurements."""
    t = ROLLUP_DOMAIN
    sums = pivot_columns("n")
    return (f"INSERT INTO {t.name} ({', '.join((*t.columns, *t.counts))}) "
            f"SELECT {', '.join(t.columns)}, {', '.join(sums)} FROM {ROLLUP_MONTH_DOMAIN.name} "
            f"GROUP BY {', '.join(t.columns)}")


def pivot_upsert_sql() -> str:
    t = ROLLUP_DOMAIN
    cols = (*t.columns, *t.counts)
    adds = ", ".join(f"{c} = {t.name}.{c} + excluded.{c}" for c in t.counts)
    return (f"INSERT INTO {t.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT ({', '.join(t.columns)}) DO UPDATE SET {adds}")


def create_statements(bucket_type: str, count_type: str, suffix: str = "",
                      tables: Sequence[RollupTable] = TABLES) -> list[str]:
    """DDL for the rollup tables (types differ a little between backends; SQLite adds
    ``WITHOUT ROWID`` so each table is one B-tree).  The primary key is the only index: it
    leads with the bucket (or country and network, then bucket: RollupTable.leading), so a
    question is one range scan, and every write at ingest touches one tree per table."""
    out: list[str] = []
    for t in tables:
        cols = ", ".join(f"{c} text NOT NULL" for c in t.columns)
        key = ", ".join(t.key)
        out.append(
            f"CREATE TABLE {t.name} (bucket {bucket_type} NOT NULL, {cols}, "
            f"n {count_type} NOT NULL, PRIMARY KEY ({key})){suffix}"
        )
    return out


def _counted(t: RollupTable, bucket_sql: Mapping[Grain, str], where: str,
             source: str = "measurements") -> str:
    """SELECT of ``t``'s rows (bucket, group columns, count) from ``source`` ``where``."""
    values = [f"COALESCE({c}, '')" if c in NULLABLE else c for c in t.columns]
    groups = ", ".join(str(i + 1) for i in range(len(t.columns) + 1))
    return (f"SELECT {bucket_sql[t.grain]}, {', '.join(values)}, COUNT(*) FROM {source} "
            f"WHERE {where} GROUP BY {groups}")


def _upsert_counted(t: RollupTable, select: str) -> str:
    return (f"INSERT INTO {t.name} (bucket, {', '.join(t.columns)}, n) {select} "
            f"ON CONFLICT ({', '.join(t.key)}) DO UPDATE SET n = {t.name}.n + excluded.n")


def backfill_statements(bucket_sql: Mapping[Grain, str]) -> list[str]:
    """Fill the rollups from measurements already stored (the migration that adds them)."""
    return [f"INSERT INTO {t.name} (bucket, {', '.join(t.columns)}, n) "
            f"{_counted(t, bucket_sql, 'true')}" for t in TABLES]


def _pivot_values() -> list[str]:
    """The measurements' columns as ``rollup_domain``'s key (NULL as '')."""
    return [f"COALESCE({c}, '')" if c in NULLABLE else c for c in ROLLUP_DOMAIN.columns]


def _pivot_counted(where: str, source: str = "measurements") -> str:
    """SELECT of ``rollup_domain``'s rows (key, counts) from ``source`` ``where``: the same
    counts :func:`pivot` makes of a delta, per status and, of the blocked or throttled, per
    technique."""
    sums = [c.replace("blocking = ", "COALESCE(blocking, '') = ") for c in pivot_columns("1")]
    groups = ", ".join(str(i + 1) for i in range(len(ROLLUP_DOMAIN.columns)))
    return (f"SELECT {', '.join(_pivot_values())}, {', '.join(sums)} FROM {source} "
            f"WHERE {where} GROUP BY {groups}")


def _upsert_pivot_counted(select: str) -> str:
    t = ROLLUP_DOMAIN
    adds = ", ".join(f"{c} = {t.name}.{c} + excluded.{c}" for c in t.counts)
    return (f"INSERT INTO {t.name} ({', '.join((*t.columns, *t.counts))}) {select} "
            f"ON CONFLICT ({', '.join(t.columns)}) DO UPDATE SET {adds}")


def fold_statements(bucket_sql: Mapping[Grain, str], seq: str) -> list[str]:
    """Add the measurements numbered ``lo < seq <= hi`` (parameters ``lo, hi``) to every
    rollup (FOLDED, then ROLLUP_DOMAIN): one INSERT ... SELECT ... GROUP BY per table, so the
    database counts and no row crosses into Python; the groups are distinct, so no rollup row
    is updated twice."""
    where = f"{seq} > ? AND {seq} <= ?"
    return [*(_upsert_counted(t, _counted(t, bucket_sql, where)) for t in FOLDED),
            _upsert_pivot_counted(_pivot_counted(where))]


# The columns the rollups count, as staged for a fold (staged_fold_statements).
FACT_COLUMNS = ("start_time", "probe_cc", "probe_asn", "domain", "category_code", "test_name",
                "blocking", "status")


def staged_fold_statements(bucket_sql: Mapping[Grain, str], seq: str, staging: str
                           ) -> tuple[str, list[str]]:
    """:func:`fold_statements` reading the measurements once: a statement copying the
    counted columns of rows ``lo < seq <= hi`` into the table ``staging`` (FACT_COLUMNS),
    and one per rollup counting from there.  For SQLite, where a measurement's row is a few
    kB read back from its pages and reading the range three times cost more than counting."""
    cols = ", ".join(FACT_COLUMNS)
    stage = (f"INSERT INTO {staging} ({cols}) SELECT {cols} FROM measurements "
             f"WHERE {seq} > ? AND {seq} <= ?")
    return stage, [*(_upsert_counted(t, _counted(t, bucket_sql, "true", staging))
                     for t in FOLDED),
                   _upsert_pivot_counted(_pivot_counted("true", staging))]


def tail_select(t: RollupTable, bucket_sql: Mapping[Grain, str], seq: str,
                source: str = "measurements") -> str:
    """The measurements numbered after ``?`` (the watermark) shaped as rows of ``t``
    (bucket, group columns, ``n`` = 1): what a question adds to the rollup's counts.
    ``source`` names the measurements read by their sequence numbers (SQLite: ``NOT
    INDEXED``, else a question's filter pushed into the tail, ``probe_cc = ?``, walks that
    column's index over every row of the country to find the few after the watermark)."""
    values = [f"COALESCE({c}, '') AS {c}" if c in NULLABLE else c for c in t.columns]
    return (f"SELECT {bucket_sql[t.grain]} AS bucket, {', '.join(values)}, 1 AS n "
            f"FROM {source} WHERE {seq} > ?")


def pivot_tail_select(seq: str, source: str = "measurements") -> str:
    """The measurements numbered after ``?`` (the watermark) shaped as rows of
    ``rollup_domain`` (key columns, then its counts: 1 or 0 each); ``source`` as for
    :func:`tail_select`."""
    counts = ["1 AS n"]
    counts += [f"CASE WHEN status = '{s}' THEN 1 ELSE 0 END AS {c}"
               for s, c in zip(STATUSES, PIVOT_COUNTS[1:1 + len(STATUSES)], strict=True)]
    counts += [f"CASE WHEN status IN ('blocked', 'throttled') AND blocking = '{t}' "
               f"THEN 1 ELSE 0 END AS {c}"
               for t, c in zip(TECHNIQUES, PIVOT_COUNTS[1 + len(STATUSES):], strict=True)]
    keys = [f"{v} AS {c}" for v, c in zip(_pivot_values(), ROLLUP_DOMAIN.columns, strict=True)]
    return f"SELECT {', '.join((*keys, *counts))} FROM {source} WHERE {seq} > ?"


def upsert_sql(t: RollupTable) -> str:
    cols = ", ".join(("bucket", *t.columns, "n"))
    marks = ", ".join("?" * (len(t.columns) + 2))
    key = ", ".join(("bucket", *t.columns))
    return (
        f"INSERT INTO {t.name} ({cols}) VALUES ({marks}) ON CONFLICT ({key}) "
        f"DO UPDATE SET n = {t.name}.n + excluded.n"
    )


def delta_params(delta: RollupDelta, t: RollupTable) -> list[tuple[object, ...]]:
    """Rows for :func:`upsert_sql`, in key order (a fixed lock order: no deadlock between
    two collectors writing at once)."""
    return [(*key, n) for key, n in sorted(delta[t.name].items()) if n != 0]


# ---- answering questions --------------------------------------------------------------------
class PlanError(ValueError):
    """The question cannot be answered as asked; the text says what to ask instead."""

    def __init__(self, param: str, detail: str) -> None:
        super().__init__(detail)
        self.param = param
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AggFilter:
    since: datetime | None = None
    until: datetime | None = None
    probe_cc: str | None = None
    probe_asn: str | None = None
    domain: str | None = None
    category_code: str | None = None
    test_name: str | None = None
    blocking: str | None = None  # "" = not blocked


AGG_FILTER_COLUMNS = ("probe_cc", "probe_asn", "domain", "category_code", "test_name",
                      "blocking")


@dataclass(frozen=True, slots=True)
class Plan:
    source: str  # a rollup table name or RAW
    grain: Grain | None  # the time dimension's grain, if any
    since: datetime | None  # bounds actually counted (rounded to the source's buckets)
    until: datetime | None


def plan(dims: Sequence[AggDimension], where: AggFilter) -> Plan:
    """Which table answers ``dims`` under ``where``, and over which exact time range."""
    if not 1 <= len(dims) <= 2 or len(set(dims)) != len(dims):
        raise PlanError("by", "give one or two different dimensions")
    times = [d for d in dims if d.is_time]
    if len(times) > 1:
        raise PlanError("by", "at most one time dimension (hour, day or month)")
    grain = Grain(times[0].value) if times else None
    wants_domain = (AggDimension.DOMAIN in dims or AggDimension.CATEGORY in dims
                    or where.category_code is not None)
    if ((wants_domain or where.domain is not None) and grain is None and where.since is None
            and where.until is None and where.blocking is None
            and AggDimension.BLOCKING not in dims):
        # Domains over the whole archive: one pivoted row per group.
        return Plan(ROLLUP_DOMAIN.name, None, None, None)
    if where.domain is not None:
        # One domain: a small range scan of the measurements' domain index, exact bounds.
        return Plan(RAW, grain, where.since, where.until)
    monthly = ROLLUP_MONTH_DOMAIN if AggDimension.DOMAIN in dims else ROLLUP_MONTH
    if wants_domain:
        if grain in (Grain.HOUR, Grain.DAY):
            raise PlanError(
                "by",
                "domains and categories are aggregated per month: use month, or filter one "
                "domain (domain=...) for an hourly or daily series",
            )
        since, until = widen(where.since, where.until, Grain.MONTH)
        return Plan(monthly.name, grain, since, until)
    if grain is Grain.MONTH:
        since, until = widen(where.since, where.until, Grain.MONTH)
        return Plan(monthly.name, grain, since, until)
    if grain is Grain.HOUR:
        if where.since is None:
            raise PlanError("since", "an hourly series needs since (and spans 31 days at most)")
        end = where.until or datetime.now(UTC)
        if end - where.since > MAX_HOUR_SPAN:
            raise PlanError("until", "an hourly series spans 31 days at most: use day")
        since, until = widen(where.since, where.until, Grain.HOUR)
        return Plan(ROLLUP_HOUR.name, grain, since, until)
    # Day grain or no time dimension: the daily rollup, unless the bounds fall inside days
    # and an hour-exact answer is cheap (a span of 31 days at most).
    if _aligned(where, DAY):
        since, until = widen(where.since, where.until, Grain.DAY)
        return Plan(ROLLUP_DAY.name, grain, since, until)
    end = where.until or datetime.now(UTC)
    if grain is None and where.since is not None and end - where.since <= MAX_HOUR_SPAN:
        since, until = widen(where.since, where.until, Grain.HOUR)
        return Plan(ROLLUP_HOUR.name, grain, since, until)
    since, until = widen(where.since, where.until, Grain.DAY)
    return Plan(ROLLUP_DAY.name, grain, since, until)


def _aligned(where: AggFilter, step: int) -> bool:
    return all(t is None or t.timestamp() % step == 0 for t in (where.since, where.until))


@dataclass(frozen=True, slots=True)
class AggRow:
    """One group: its key values (time as a datetime), counts per verdict status and, of the
    blocked or throttled ones, counts per technique."""

    keys: tuple[datetime | str, ...]
    counts: Mapping[str, int]
    techniques: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def share(self, *statuses: str) -> float:
        total = self.total
        hit = sum(self.counts.get(s, 0) for s in statuses)
        return 0.0 if total == 0 else round(hit / total, 6)


def pivot_columns(count: str) -> list[str]:
    """SQL for one group's counts per status and, of the blocked or throttled, per technique
    (``count`` is ``n`` for a rollup, ``1`` for measurements): the group folds in SQL, so an
    answer costs one row per group however many rollup rows it sums."""
    cols = [f"SUM({count})"]
    cols += [f"SUM(CASE WHEN status = '{s}' THEN {count} ELSE 0 END)" for s in STATUSES]
    cols += [f"SUM(CASE WHEN status IN ('blocked', 'throttled') AND blocking = '{t}' "
             f"THEN {count} ELSE 0 END)" for t in TECHNIQUES]
    return cols


def collect(dims: Sequence[AggDimension], rows: Iterable[Sequence[Any]]) -> list[AggRow]:
    """Rows of ``(key..., total, per status..., per technique...)`` as groups, oldest first
    when there is a time dimension (the SQL already kept the largest ones).  Counts come as
    int (SQLite) or Decimal (PostgreSQL's SUM), NULL when a group has none."""
    out = []
    nk = len(dims)
    is_time = [d.is_time for d in dims]
    ns = len(STATUSES)
    lo, hi = nk + 1, nk + 1 + ns + len(TECHNIQUES)
    for r in rows:
        keys = tuple(
            datetime.fromtimestamp(int(float(k)), UTC) if t else ("" if k is None else str(k))
            for t, k in zip(is_time, r[:nk], strict=True)
        )
        numbers = [int(x) if x else 0 for x in r[lo:hi]]
        counts = {s: n for s, n in zip(STATUSES, numbers[:ns], strict=True) if n}
        tech = {t: n for t, n in zip(TECHNIQUES, numbers[ns:], strict=True) if n}
        other = counts.get("blocked", 0) + counts.get("throttled", 0) - sum(tech.values())
        if other > 0:
            tech["unknown"] = other
        out.append(AggRow(keys, counts, tech))
    time_index = next((i for i, d in enumerate(dims) if d.is_time), None)
    if time_index is not None:
        out.sort(key=lambda g: (g.keys[time_index], [str(k) for k in g.keys]))
    return out


@dataclass(frozen=True, slots=True)
class Aggregation:
    """An answer: the plan that produced it, the groups kept, how many groups there were
    and how many measurements were counted in all of them."""

    plan: Plan
    rows: list[AggRow]
    groups: int
    total: int
