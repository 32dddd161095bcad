"""Collector API benchmark: page latency, stats, and the export's speed and memory.

    .venv/bin/python -m bench.api                        # 50,000 measurements in SQLite
    .venv/bin/python -m bench.api --rows 200000 --store postgresql://postgres@127.0.0.1/x

Fills a store through the store interface (records signed by test probes, checked by
collector.ingest.verify, written with write_batch, as the ingest does), then runs the real app on
loopback (aiohttp TestServer) and measures:

1. ``/api/v1/measurements`` page latency (limit 100), unfiltered and filtered by country
   and by domain, on the first page and deep in a keyset walk (p50/p95 over N requests);
2. ``/api/v1/stats`` uncached latency (6 group-bys and a count over the whole table);
3. ``/api/v1/export?format=jsonl``: rows/s, MB/s and the peak Python heap while streaming
   (tracemalloc), next to the size of the export: the point is that the peak stays flat as
   the archive grows.

Never run by the test suite; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from agent.wire import envelope as wire
from collector.config import ApiConfig, CollectorConfig, OutagesConfig, StoreConfig
from collector.ingest.verify import Accepted, KeyTable, Verifier
from collector.runtime import ServeSettings
from collector.service import create_app
from collector.store import open_store
from collector.store.base import IngestBatch
from lab.probes import TestProbe

NETS = (("IR", "AS44244"), ("IR", "AS197207"), ("IQ", "AS50710"), ("PK", "AS17557"))
URLS = ("https://twitter.com/", "https://www.bbc.com/persian", "https://telegram.org/",
        "https://www.example.com/news", "https://signal.org/")


def fill(url: str, rows: int, batch: int = 2000) -> None:
    probes = [TestProbe.new() for _ in range(20)]
    store = open_store(url)
    try:
        for p in probes:
            store.add_probe(p.probe_id, p.public_raw)
        verifier = Verifier(KeyTable(store.list_probes()))
        now = time.time()
        start = now - 30 * 86400
        for base in range(0, rows, batch):
            msgs = []
            for i in range(base, min(rows, base + batch)):
                p = probes[i % len(probes)]
                cc, asn = NETS[i % len(NETS)]
                t = start + i * (29 * 86400 / rows)
                rec = p.record(measurement_id=wire.uuid7(int(t * 1000)), start=t,
                               probe_cc=cc, probe_asn=asn, input=URLS[i % len(URLS)])
                msgs.append((p.topic, p.envelope(rec)))
            out = verifier.check_batch(msgs, now)
            store.write_batch(IngestBatch(
                measurements=[o.row for o in out if isinstance(o, Accepted)]))
    finally:
        store.close()


async def timed(client: TestClient[Any, Any], path: str, n: int, **params: Any) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = await client.get(path, params=params)
        await resp.read()
        assert resp.status == 200, await resp.text()
        times.append(time.perf_counter() - t0)
    return times


def ms(times: list[float]) -> str:
    q = statistics.quantiles(times, n=20) if len(times) > 1 else times * 19
    return f"p50 {statistics.median(times) * 1000:7.1f} ms  p95 {q[18] * 1000:7.1f} ms"


async def deep_cursor(client: TestClient[Any, Any], pages: int, **params: Any) -> str | None:
    cursor = None
    for _ in range(pages):
        q = {"limit": 1000, **params, **({"cursor": cursor} if cursor else {})}
        body = await (await client.get("/api/v1/measurements", params=q)).json()
        cursor = body["next_cursor"]
        if cursor is None:
            break
    return cursor


async def run(url: str, rows: int, reps: int) -> None:
    config = CollectorConfig(store=StoreConfig(url=url), api=ApiConfig(stats_cache_s=0),
                             outages=OutagesConfig(enabled=False))
    app = create_app(ServeSettings(config=config, ingest=False, outages=False))
    async with TestClient(TestServer(app)) as client:
        print(f"store {url}: {rows} measurements")
        for label, params in (("all", {}), ("probe_cc=IQ", {"probe_cc": "IQ"}),
                              ("domain=signal.org", {"domain": "signal.org"}),
                              ("cc=IR&status=blocked", {"probe_cc": "IR",
                                                        "status": "blocked"})):
            first = await timed(client, "/api/v1/measurements", reps, limit=100, **params)
            cursor = await deep_cursor(client, max(1, rows // 2000), **params)
            deep = (await timed(client, "/api/v1/measurements", reps, limit=100,
                                cursor=cursor, **params)) if cursor else []
            print(f"  measurements {label:<22} first page {ms(first)}"
                  + (f" | deep page {ms(deep)}" if deep else ""))
        stats = await timed(client, "/api/v1/stats", max(3, reps // 5))
        print(f"  stats (uncached)                   {ms(stats)}")
        tracemalloc.start()
        t0 = time.perf_counter()
        resp = await client.get("/api/v1/export", params={"format": "jsonl"})
        lines = size = 0
        async for chunk in resp.content.iter_chunked(1 << 16):  # readline() is the bottleneck
            lines += chunk.count(b"\n")
            size += len(chunk)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  export: {lines} lines, {size / 1e6:.1f} MB in {elapsed:.2f} s = "
              f"{lines / elapsed:,.0f} rows/s, {size / 1e6 / elapsed:.1f} MB/s; "
              f"peak Python heap {peak / 1e6:.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--store", default=None, help="default: a temporary SQLite file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store or f"sqlite://{Path(tmp) / 'bench.db'}"
        t0 = time.perf_counter()
        fill(url, args.rows)
        print(f"filled in {time.perf_counter() - t0:.1f} s")
        asyncio.run(run(url, args.rows, args.reps))


if __name__ == "__main__":
    main()
