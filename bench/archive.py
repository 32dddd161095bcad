"""Archive-scale benchmark: the researcher's API on a large store.  Run by hand:

    .venv/bin/python -m bench.archive --rows 1000000                 # SQLite, ~15 min
    .venv/bin/python -m bench.archive --rows 1000000 --store postgres
    .venv/bin/python -m bench.archive --rows 20000 --json out.json  # a quick look

What it measures, on one store filled with signed, schema-shaped measurements (lab.archive's
scenarios over many networks and domains, spread over ``--days``):

1. **Fill**: rows per second through ``Store.write_batch`` (the ingest's own write path)
   and ``Store.fold_rollups`` (the collector's folder), and the cost of the rollups at
   ingest: batches written alternately into two fresh stores, one folded every
   ``FOLD_ROWS`` rows as the folder does, one never folded, time per batch compared (the
   folds' time spread over the batches they fold).
2. **Size**: bytes on disk per stored measurement (SQLite: the file after a checkpoint;
   PostgreSQL: pg_total_relation_size of the tables), and the signed payload's mean size.
3. **Latency** through the real HTTP app (in process, loopback), p50/p95 over varied
   parameters: aggregations, filtered measurement pages (with their total), the dashboard's
   first paint (every request the page makes when it opens, issued in parallel as a browser
   does), and a measurement page.
4. **Retention**: ``prune`` of the oldest tenth, and (SQLite) an online backup.

Target: p95 <= 200 ms for aggregations, filtered pages and the dashboard's first paint.
The machine is shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, TCPConnector
from aiohttp.test_utils import TestServer

from agent.wire import envelope as wire
from collector.config import ApiConfig, CollectorConfig, OutagesConfig, StoreConfig
from collector.ingest.verify import domain_of
from collector.runtime import ServeSettings
from collector.service import create_app
from collector.store import Store, open_store
from collector.store.base import IngestBatch, MeasurementRow
from lab.archive import SITES, Network, blocked_sites, record
from lab.probes import TestProbe

COUNTRIES = ("IQ", "IR", "PK", "KZ")
BATCH = 1000
FOLD_ROWS = 5000  # rows per fold: about one second of ingest, the folder's default interval


@dataclass(frozen=True)
class Shape:
    networks: list[Network]
    sites: list[tuple[str, str]]
    probes: list[tuple[TestProbe, Network]]


def shape(n_networks: int, n_domains: int, probes_per_network: int, seed: int) -> Shape:
    rng = random.Random(seed)
    nets = [Network(COUNTRIES[i % len(COUNTRIES)], f"AS{64500 + i}", f"Network {i}")
            for i in range(n_networks)]
    # The lab's censored sites first (so the scenarios apply), then more of the list.
    cats = ["NEWS", "HUMR", "POLR", "COMT", "GRP", "CULTR", "LGBT", "ANON", "REL", "ECON"]
    sites = list(SITES) + [(f"https://site{k}.example.org/", cats[k % len(cats)])
                           for k in range(max(0, n_domains - len(SITES)))]
    rng.shuffle(sites[len(SITES):])
    probes = [(TestProbe.new(), net) for net in nets for _ in range(probes_per_network)]
    return Shape(nets, sites, probes)


class RowMaker:
    """Signed rows, fast: one record template per (network, site, scenario), then per row a
    fresh id, time and signature (the JSON and Ed25519 work every real row costs)."""

    def __init__(self, sh: Shape, seed: int) -> None:
        self.sh = sh
        self.rng = random.Random(seed)
        self._templates: dict[tuple[str, str, str], dict[str, Any]] = {}

    def template(self, probe: TestProbe, net: Network, url: str, cat: str, scenario: str
                 ) -> dict[str, Any]:
        key = (net.asn, url, scenario)
        t = self._templates.get(key)
        if t is None:
            t = record(probe, net, url, cat, 0.0, scenario, self.rng)
            self._templates[key] = t
        return t

    def plan(self, n: int, since: float, until: float
             ) -> Iterator[tuple[TestProbe, Network, str, str, float, str, int]]:
        """What each row is: probe, network, url, category, start time, scenario (the
        censored sites blocked after the first third of the span, 90 % of the time) and the
        probe's sequence number (1, 2, ... per probe, as an agent's outbox numbers them)."""
        step = (until - since) / max(1, n)
        onset = since + (until - since) / 3
        probes, sites = self.sh.probes, self.sh.sites
        for i in range(n):
            probe, net = probes[i % len(probes)]
            url, cat = sites[(i // len(probes) + i) % len(sites)]
            start = since + i * step
            rule = blocked_sites(net).get(domain_of(url) or "")
            roll = self.rng.random()
            if rule is not None and start >= onset and roll < 0.9:
                scenario = rule
            else:
                scenario = "down" if roll > 0.97 else "inconclusive" if roll > 0.95 else "ok"
            yield probe, net, url, cat, start, scenario, i // len(probes) + 1

    def rows(self, n: int, since: float, until: float) -> Iterator[list[MeasurementRow]]:
        batch: list[MeasurementRow] = []
        for probe, net, url, cat, start, scenario, seq in self.plan(n, since, until):
            rec = dict(self.template(probe, net, url, cat, scenario))
            rec["probe_seq"] = seq
            rec["measurement_id"] = wire.uuid7(int(start * 1000))
            rec["measurement_start_time"] = datetime.fromtimestamp(start, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ")
            rec["probe_id"] = probe.probe_id
            payload = wire.encode_record(rec)
            v = rec["verdict"]
            batch.append(MeasurementRow(
                measurement_id=rec["measurement_id"], probe_id=probe.probe_id,
                test_name=rec["test_name"], input=url, domain=domain_of(url),
                category_code=cat, probe_cc=net.cc, probe_asn=net.asn,
                probe_network_name=net.name, status=v["status"], blocking=v["blocking"],
                reason=v["reason"], confirmed=v["confirmed"], start_ts=start,
                received_ts=start + 3.0, payload_type=wire.PAYLOAD_TYPE, payload=payload,
                signature=probe.key.sign(wire.pae(wire.PAYLOAD_TYPE, payload)),
                probe_seq=seq,
            ))
            if len(batch) == BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def copy_rows(self, n: int, since: float, until: float) -> Iterator[tuple[object, ...]]:
        """Rows for a bulk COPY, cheaply: each (network, site, scenario) record is encoded and
        signed once; a row gets the template's bytes with its own id, start time and probe id
        written in (same lengths), and the template's signature, which therefore does not
        verify.  Only for benchmarks that read (pages, aggregations, sizes)."""
        encoded: dict[tuple[str, str, str, str], tuple[bytes, bytes, dict[str, Any]]] = {}
        for probe, net, url, cat, start, scenario, seq in self.plan(n, since, until):
            key = (probe.probe_id, net.asn, url, scenario)
            hit = encoded.get(key)
            if hit is None:
                rec = dict(self.template(probe, net, url, cat, scenario))
                rec["probe_id"] = probe.probe_id
                payload = wire.encode_record(rec)
                hit = encoded[key] = (payload, probe.key.sign(
                    wire.pae(wire.PAYLOAD_TYPE, payload)), rec)
            payload, sig, rec = hit
            mid = wire.uuid7(int(start * 1000))
            when = datetime.fromtimestamp(start, UTC)
            payload = payload.replace(rec["measurement_id"].encode(), mid.encode(), 1).replace(
                rec["measurement_start_time"].encode(),
                when.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode(), 1)
            v = rec["verdict"]
            yield (uuid.UUID(mid), probe.probe_id, rec["test_name"], url, domain_of(url), cat,
                   net.cc, net.asn, net.name, v["status"], v["blocking"], v["reason"],
                   v["confirmed"], when, datetime.fromtimestamp(start + 3.0, UTC),
                   wire.PAYLOAD_TYPE, payload, sig, seq)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(pct(ms, 0.5), 1), "p95_ms": round(pct(ms, 0.95), 1),
            "max_ms": round(max(ms), 1)}


@contextmanager
def store_at(kind: str, tmp: Path, keep_db: str | None = None, prefix: str = "vigil_bench"
             ) -> Iterator[tuple[str, Callable[[], int]]]:
    """A fresh store URL (or, for ``keep_db``, that database kept) and a function giving its
    size on disk in bytes."""
    if kind == "sqlite":
        path = tmp / "archive.db"

        def size() -> int:
            return sum(p.stat().st_size for p in tmp.glob("archive.db*"))

        yield f"sqlite://{path}", size
        return
    import psycopg
    from psycopg import sql

    from lab.pg import admin_dsn, temporary_database, with_database

    def pg_size_of(url: str) -> Callable[[], int]:
        def pg_size() -> int:
            with psycopg.connect(url) as conn:
                row = conn.execute(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND c.relkind = 'r'").fetchone()
            return int(row[0]) if row and row[0] else 0

        return pg_size

    if keep_db is not None:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (keep_db,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(keep_db)))
        url = with_database(admin_dsn(), keep_db)
        yield url, pg_size_of(url)
        return
    with temporary_database(prefix) as url:
        yield url, pg_size_of(url)


def fill(store: Store, maker: RowMaker, n: int, since: float, until: float) -> dict[str, Any]:
    for p, _ in maker.sh.probes:
        store.add_probe(p.probe_id, p.public_raw)
    gen_s = 0.0
    write_s = 0.0
    payload_bytes = 0
    done = 0
    t = time.perf_counter()
    for batch in maker.rows(n, since, until):
        t1 = time.perf_counter()
        gen_s += t1 - t
        store.write_batch(IngestBatch(measurements=batch))
        if (done + len(batch)) // FOLD_ROWS > done // FOLD_ROWS:
            store.fold_rollups()
        t = time.perf_counter()
        write_s += t - t1
        payload_bytes += sum(len(r.payload) for r in batch)
        done += len(batch)
        if done % 100_000 == 0:
            print(f"  {done} rows ({done / write_s:,.0f} rows/s written)", flush=True)
    t1 = time.perf_counter()
    while store.fold_rollups() > 0:
        pass
    write_s += time.perf_counter() - t1
    return {"rows": done, "generate_s": round(gen_s, 1), "write_s": round(write_s, 1),
            "rows_per_s": round(done / write_s), "payload_mean_bytes": payload_bytes // done}


COPY_COLUMNS = ("measurement_id, probe_id, test_name, input, domain, category_code, probe_cc, "
                "probe_asn, probe_network_name, status, blocking, reason, confirmed, start_time, "
                "received_at, payload_type, payload, signature, probe_seq")
COPY_TYPES = ["uuid", *["text"] * 11, "bool", "timestamptz", "timestamptz", "text", "bytea",
              "bytea", "int8"]


def bulk_load_postgres(url: str, maker: RowMaker, n: int, since: float, until: float
                       ) -> dict[str, Any]:
    """Fill an empty PostgreSQL store fast, for read benchmarks at 10 million rows: the
    measurements' secondary indexes are dropped, the rows COPYed in (templated payloads, see
    RowMaker.copy_rows), the indexes rebuilt, then the rollups and probe activity computed
    from the rows with the migrations' own backfill statements, and the table vacuumed."""
    import psycopg

    from collector.store import sequences
    from collector.store.postgres import _PG_BUCKETS, _folded
    from collector.store.rollups import (
        FOLDED,
        ROLLUP_DOMAIN,
        backfill_statements,
        derived_backfill_statements,
        pivot_backfill_statement,
    )

    store = open_store(url)
    try:
        for p, _ in maker.sh.probes:
            store.add_probe(p.probe_id, p.public_raw)
    finally:
        store.close()
    out: dict[str, Any] = {"rows": n, "bulk": True}
    with psycopg.connect(url, autocommit=True) as conn:
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'measurements' "
            "AND indexname <> 'measurements_pkey'").fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}".encode())
        t = time.perf_counter()
        done = 0
        rows = maker.copy_rows(n, since, until)
        while done < n:
            part = min(1_000_000, n - done)
            with conn.transaction(), conn.cursor() as cur, cur.copy(
                    f"COPY measurements ({COPY_COLUMNS}) FROM STDIN (FORMAT BINARY)".encode()
            ) as copy:
                copy.set_types(COPY_TYPES)
                for _ in range(part):
                    copy.write_row(next(rows))
            done += part
            print(f"  {done} rows copied ({done / (time.perf_counter() - t):,.0f} rows/s)",
                  flush=True)
        out["copy_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '512MB'")
        for _, definition in indexes:
            conn.execute(definition.encode())
        out["index_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        for table in (*(r.name for r in FOLDED), ROLLUP_DOMAIN.name, "probe_activity"):
            conn.execute(f"TRUNCATE {table}".encode())
        for statement in (*backfill_statements(_PG_BUCKETS), *derived_backfill_statements(),
                          pivot_backfill_statement()):
            conn.execute(statement.encode())
        # Every row copied is in the rollups now: the folder starts after them.
        conn.execute("UPDATE rollup_state SET folded = "
                     "(SELECT COALESCE(MAX(seq), 0) FROM measurements) WHERE id = 1")
        conn.execute(f"TRUNCATE {sequences.TABLE}".encode())
        conn.execute(sequences.backfill_statement(
            _folded, "(SELECT folded FROM rollup_state WHERE id = 1)").encode())
        conn.execute(
            "INSERT INTO probe_activity (probe_id, last_start, last_received, measurements, "
            "probe_cc, probe_asn) SELECT DISTINCT ON (probe_id) probe_id, start_time, "
            "received_at, COUNT(*) OVER (PARTITION BY probe_id), probe_cc, probe_asn "
            "FROM measurements ORDER BY probe_id, start_time DESC")
        out["rollups_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        out["vacuum_s"] = round(time.perf_counter() - t, 1)
    return out


def rollup_cost(kind: str, maker: RowMaker, batches: int = 40, prefix: str = "vigil_bench"
                ) -> dict[str, Any]:
    """write_batch alone against write_batch plus a fold every FOLD_ROWS rows, batches
    interleaved between two fresh stores; each fold's time is spread over the batches it
    folded (the median batch of each store, plus the mean fold time per batch)."""
    every = max(1, FOLD_ROWS // BATCH)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, \
            store_at(kind, Path(a), prefix=prefix) as (url_a, _), \
            store_at(kind, Path(b), prefix=prefix) as (url_b, _):
        with_rollups, without = open_store(url_a), open_store(url_b)
        now = time.time()
        times: dict[str, list[float]] = {"with": [], "without": []}
        fold_s = 0.0
        try:
            # Rows of the last ten minutes: what the folder finds at ingest.
            gen = maker.rows(batches * BATCH * 2, now - 600, now)
            for i, batch in enumerate(gen):
                name, s = (("with", with_rollups), ("without", without))[i % 2]
                t = time.perf_counter()
                s.write_batch(IngestBatch(measurements=batch))
                times[name].append(time.perf_counter() - t)
                if name == "with" and len(times[name]) % every == 0:
                    t = time.perf_counter()
                    s.fold_rollups()
                    fold_s += time.perf_counter() - t
        finally:
            with_rollups.close()
            without.close()
    w, wo = statistics.median(times["with"]), statistics.median(times["without"])
    fold_per_batch = fold_s / len(times["with"])
    return {"batch_rows": BATCH, "fold_rows": every * BATCH,
            "median_batch_ms_with": round(w * 1000, 1),
            "median_batch_ms_without": round(wo * 1000, 1),
            "fold_ms_per_batch": round(fold_per_batch * 1000, 1),
            "rollup_overhead_pct": round(100 * (w + fold_per_batch - wo) / wo, 1)}


def day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def queries(sh: Shape, since: float, until: float, rng: random.Random
            ) -> dict[str, Callable[[], str]]:
    """Each kind of request, with parameters drawn afresh at every call."""
    def cc() -> str:
        return rng.choice(COUNTRIES)

    def asn() -> str:
        return rng.choice(sh.networks).asn

    def dom() -> str:
        return domain_of(rng.choice(sh.sites)[0]) or "example.org"

    def window(days: int) -> str:
        start = rng.uniform(since, until - days * 86400)
        return f"since={day(start)}&until={day(start + days * 86400)}"

    def hours() -> str:
        end = until - rng.uniform(0, 20 * 86400)
        lo = datetime.fromtimestamp(end - 7 * 86400, UTC).strftime("%Y-%m-%dT%H:00:00Z")
        hi = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%dT%H:00:00Z")
        return f"since={lo}&until={hi}"

    agg = "/api/v1/aggregation?"
    page = "/api/v1/measurements?limit=50&"
    return {
        "agg day x country": lambda: f"{agg}by=day,country",
        "agg day x network, one country": lambda: f"{agg}by=day,network&probe_cc={cc()}",
        "agg domain x network, one country": lambda: f"{agg}by=domain,network&probe_cc={cc()}",
        "agg domain x network, all": lambda: f"{agg}by=domain,network",
        "agg hour x network, 7 days": lambda: f"{agg}by=hour,network&{hours()}",
        "agg day x blocking, one domain": lambda: f"{agg}by=day,blocking&domain={dom()}",
        "agg month x category": lambda: f"{agg}by=month,category&probe_cc={cc()}",
        "page country": lambda: f"{page}probe_cc={cc()}",
        "page network + blocked": lambda: f"{page}probe_asn={asn()}&status=blocked",
        "page domain": lambda: f"{page}domain={dom()}",
        "page blocking=dns, 30 days": lambda: f"{page}blocking=dns&{window(30)}",
        "page failure=tls": lambda: f"{page}failure=tls&probe_cc={cc()}",
        "page confirmed": lambda: f"{page}confirmed=true&probe_cc={cc()}",
        "page category, 7 days": lambda: f"{page}category_code=NEWS&{window(7)}",
        "page next (cursor)": lambda: f"{page}probe_cc={cc()}&order=asc",
    }


def first_paint(sh: Shape, rng: random.Random) -> list[str]:
    """What the dashboard requests when it opens with a country filter in its URL."""
    c = rng.choice(COUNTRIES)
    return [
        f"/?probe_cc={c}", "/static/app.js", "/static/style.css",
        f"/api/v1/stats?probe_cc={c}", f"/api/v1/measurements?probe_cc={c}&limit=50",
        f"/api/v1/aggregation?probe_cc={c}&by=domain,network&limit=2000",
        f"/charts/share.svg?probe_cc={c}&by=country", f"/charts/share.svg?probe_cc={c}&by=network",
        "/api/v1/outages?limit=20", "/api/v1/rejections?recent=0",
        "/api/v1/probes?revoked=false&limit=50", "/healthz",
    ]


async def latencies(url: str, sh: Shape, since: float, until: float, repeat: int,
                    some_ids: list[str], store_threads: int | None = None,
                    only: list[str] | None = None) -> dict[str, Any]:
    api = ApiConfig(stats_cache_s=0.0)
    if store_threads is not None:
        api = ApiConfig(stats_cache_s=0.0, store_threads=store_threads)
    config = CollectorConfig(store=StoreConfig(url=url), api=api,
                             outages=OutagesConfig(enabled=False))
    app = create_app(ServeSettings(config=config.validate(), ingest=False, outages=False))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    rng = random.Random(3)
    out: dict[str, Any] = {}
    try:
        async with ClientSession(connector=TCPConnector(limit=6)) as http:
            async def get(path: str) -> float:
                t = time.perf_counter()
                async with http.get(server.make_url(path)) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{path}: HTTP {resp.status}")
                return (time.perf_counter() - t) * 1000

            for name, make in queries(sh, since, until, rng).items():
                if only is not None and not any(part in name for part in only):
                    continue
                await get(make())  # warm
                out[name] = summary([await get(make()) for _ in range(repeat)])
                print(f"  {name}: {out[name]}", flush=True)
            paints = []
            for _ in range(repeat):
                t = time.perf_counter()
                await asyncio.gather(*(get(p) for p in first_paint(sh, rng)))
                paints.append((time.perf_counter() - t) * 1000)
            out["dashboard first paint (12 requests in parallel)"] = summary(paints)
            out["measurement page"] = summary(
                [await get(f"/measurement/{rng.choice(some_ids)}") for _ in range(repeat)])
            print(f"  first paint: {out['dashboard first paint (12 requests in parallel)']}")
    finally:
        await server.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--days", type=float, default=90.0)
    ap.add_argument("--networks", type=int, default=40)
    ap.add_argument("--domains", type=int, default=1000)
    ap.add_argument("--probes-per-network", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--skip-rollup-cost", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reuse", type=Path, default=None,
                    help="SQLite: keep the store in this folder and reuse it when filled "
                         "(retention is then measured only with --retention)")
    ap.add_argument("--retention", action="store_true", help="measure prune and backup")
    ap.add_argument("--bulk", action="store_true",
                    help="PostgreSQL: fill with COPY and templated payloads whose signatures "
                         "do not verify (10 million rows in minutes; reads only)")
    ap.add_argument("--keep-db", default=None,
                    help="PostgreSQL: use (and keep) this database on the test server, "
                         "created if missing; reused when it has rows")
    ap.add_argument("--store-threads", type=int, default=None,
                    help="the API's store threads ([api] store_threads; its default if unset)")
    ap.add_argument("--only", default=None,
                    help="latency only for the requests whose name contains this text "
                         "(comma-separated), and the first paint")
    ap.add_argument("--pg-prefix", default="vigil_bench",
                    help="PostgreSQL: name prefix of the temporary databases")
    args = ap.parse_args()
    if args.bulk and args.store != "postgres":
        ap.error("--bulk is for --store postgres")
    sh = shape(args.networks, args.domains, args.probes_per_network, seed=1)
    maker = RowMaker(sh, seed=2)
    until = time.time()
    since = until - args.days * 86400
    result: dict[str, Any] = {"store": args.store, "load_before": os.getloadavg(),
                              "store_threads": args.store_threads,
                              "cpus": os.cpu_count(), "shape": {
                                  "rows": args.rows, "days": args.days,
                                  "networks": args.networks, "domains": args.domains,
                                  "probes": len(sh.probes)}}
    if not args.skip_rollup_cost:
        print("rollup cost at ingest (interleaved batches)...", flush=True)
        result["rollup_cost"] = rollup_cost(args.store, maker, prefix=args.pg_prefix)
        print(f"  {result['rollup_cost']}", flush=True)
    with workdir(args.reuse) as tmp, store_at(args.store, Path(tmp), args.keep_db,
                                              args.pg_prefix) as (url, size):
        t = time.perf_counter()
        store = open_store(url)  # migrates a reused store first
        result["open_s"] = round(time.perf_counter() - t, 1)
        try:
            existing = store.measurement_count()
            if existing:
                print(f"reusing {existing} rows", flush=True)
                result["fill"] = {"rows": existing, "reused": True}
                newest = store.measurements_page(limit=1)
                until = newest[0].start_time.timestamp() if newest else until
                since = until - args.days * 86400
            elif args.bulk:
                store.close()
                print(f"bulk loading {args.rows} rows...", flush=True)
                result["fill"] = bulk_load_postgres(url, maker, args.rows, since, until)
                print(f"  {result['fill']}", flush=True)
                store = open_store(url)
            else:
                print(f"filling {args.rows} rows...", flush=True)
                result["fill"] = fill(store, maker, args.rows, since, until)
                print(f"  {result['fill']}", flush=True)
            if args.store == "sqlite":
                store._query("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
            result["bytes_per_measurement"] = size() // max(1, result["fill"]["rows"])
            some = [m.measurement_id for m in store.measurements_page(limit=200)]
        finally:
            store.close()
        print(f"  {result['bytes_per_measurement']} bytes per measurement on disk")
        result["latency"] = asyncio.run(
            latencies(url, sh, since, until, args.repeat, some, args.store_threads,
                      None if args.only is None else args.only.split(",")))
        store = open_store(url)
        try:
            if (args.reuse is not None or args.keep_db) and not args.retention:
                return finish(result, args.json)
            cut = datetime.fromtimestamp(since, UTC) + timedelta(days=args.days / 10)
            t = time.perf_counter()
            pruned = store.prune(cut)
            result["prune"] = {"rows": pruned, "seconds": round(time.perf_counter() - t, 1)}
            if args.store == "sqlite":
                backup = Path(tmp) / "backup.db"
                t = time.perf_counter()
                n = store.backup(backup)  # type: ignore[attr-defined]
                result["backup"] = {"rows": n, "seconds": round(time.perf_counter() - t, 1),
                                    "bytes": backup.stat().st_size}
        finally:
            store.close()
    finish(result, args.json)


def finish(result: dict[str, Any], path: Path | None) -> None:
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    print(text)
    if path:
        path.write_text(text + "\n")


@contextmanager
def workdir(keep: Path | None) -> Iterator[str]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield str(keep)
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("VIGIL_BENCH_DIR")) as tmp:
        yield tmp


if __name__ == "__main__":
    main()
