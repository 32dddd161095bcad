"""The API's store threads (collector.store.aio.ThreadStores): calls run side by side, each
on its own connection, and see what the ingest's connection commits; the app serves with
several (``[api] store_threads``) and closes every connection it opened."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.errors import ConfigError
from collector.config import ApiConfig, CollectorConfig, OutagesConfig, StoreConfig
from collector.runtime import STORE, ServeSettings
from collector.service import create_app
from collector.store import open_store
from collector.store.aio import AsyncStore, ThreadStores
from collector.store.base import IngestBatch
from tests.integration.test_probe_sequences import row


def test_calls_run_side_by_side_on_their_own_connections(store_url: str) -> None:
    """Three calls that each wait for the other two: they finish only if they run at once
    (on one thread the first would wait alone and the barrier break)."""
    barrier = threading.Barrier(3, timeout=10)

    def meet(stores: ThreadStores) -> tuple[int, int, int]:
        barrier.wait()
        here = stores.here()
        return threading.get_ident(), id(here), stores.measurement_count()

    async def main() -> list[tuple[int, int, int]]:
        astore = await AsyncStore.open(store_url, 3)
        try:
            assert isinstance(astore.store, ThreadStores)
            return list(await asyncio.gather(*(astore.call(meet, astore.store)
                                               for _ in range(3))))
        finally:
            await astore.close()

    got = asyncio.run(main())
    assert len({t for t, _, _ in got}) == 3  # three threads
    assert len({s for _, s, _ in got}) == 3  # three connections
    assert [n for _, _, n in got] == [0, 0, 0]


def test_one_thread_serialises_calls(store_url: str) -> None:
    """The default (the ingest's): one thread, so the barrier above cannot be met."""
    barrier = threading.Barrier(2, timeout=0.5)

    def meet() -> None:
        barrier.wait()

    async def main() -> list[Any]:
        astore = await AsyncStore.open(store_url)
        try:
            assert not isinstance(astore.store, ThreadStores)
            return list(await asyncio.gather(astore.call(meet), astore.call(meet),
                                             return_exceptions=True))
        finally:
            await astore.close()

    got = asyncio.run(main())
    assert all(isinstance(r, threading.BrokenBarrierError) for r in got)


def test_every_thread_reads_what_another_connection_commits(store_url: str) -> None:
    writer = open_store(store_url)

    async def main() -> None:
        astore = await AsyncStore.open(store_url, 3)
        try:
            store = astore.store
            counts = await asyncio.gather(*(astore.call(store.measurement_count)
                                            for _ in range(9)))
            assert set(counts) == {0}
            writer.write_batch(IngestBatch(measurements=[row(i, "pa", i) for i in range(1, 6)]))
            writer.fold_rollups()
            counts = await asyncio.gather(*(astore.call(store.measurement_count)
                                            for _ in range(9)))
            assert set(counts) == {5}
            gaps = await asyncio.gather(*(astore.call(store.delivery_gaps) for _ in range(6)))
            assert all(g["pa"].last_seq == 5 and g["pa"].missing == 0 for g in gaps)
        finally:
            await astore.close()

    try:
        asyncio.run(main())
    finally:
        writer.close()


def test_close_closes_every_connection_and_the_pool_is_for_its_threads(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/collector.db"
    barrier = threading.Barrier(3, timeout=10)

    def meet(stores: ThreadStores) -> int:
        barrier.wait()
        return stores.measurement_count()

    async def main() -> ThreadStores:
        astore = await AsyncStore.open(url, 3)
        pool = astore.store
        assert isinstance(pool, ThreadStores)
        try:
            await asyncio.gather(*(astore.call(meet, pool) for _ in range(3)))
            assert len(pool.opened()) == 3
            assert pool.url == pool.first.url  # plain attributes: the first store's
            with pytest.raises(RuntimeError, match="outside its worker threads"):
                pool.measurement_count()  # on the event loop's thread
        finally:
            await astore.close()
        return pool

    pool = asyncio.run(main())
    for s in pool.opened():
        with pytest.raises(sqlite3.ProgrammingError):
            s._db.execute("SELECT 1")  # type: ignore[attr-defined]


def test_store_threads_is_validated(tmp_path: Path) -> None:
    store = StoreConfig(url=f"sqlite://{tmp_path}/collector.db")
    for bad in (0, 17):
        with pytest.raises(ConfigError, match="store_threads"):
            CollectorConfig(store=store, api=ApiConfig(store_threads=bad)).validate()
    one = CollectorConfig(store=store, api=ApiConfig(store_threads=1)).validate()
    assert one.api.store_threads == 1
    assert CollectorConfig(store=store).validate().api.store_threads == 3


@pytest.mark.parametrize("threads", [1, 3])
def test_the_app_answers_a_dashboard_burst_on_its_store_threads(
        store_url: str, threads: int) -> None:
    """Everything the dashboard asks when it opens, at once; outages and slowdowns read
    tables the API creates on first use, through the pool."""
    s = open_store(store_url)
    try:
        s.write_batch(IngestBatch(measurements=[row(i, "pa", i * 2) for i in range(1, 9)]))
        s.add_probe("pa", b"\x01" * 32)
        s.fold_rollups()
    finally:
        s.close()
    config = CollectorConfig(store=StoreConfig(url=store_url),
                             api=ApiConfig(stats_cache_s=0.0, store_threads=threads),
                             outages=OutagesConfig(enabled=False)).validate()
    app = create_app(ServeSettings(config=config, ingest=False, outages=False,
                                   slowdowns=False))
    paths = ["/api/v1/stats?probe_cc=IR", "/api/v1/measurements?probe_cc=IR&limit=50",
             "/api/v1/aggregation?probe_cc=IR&by=domain,network&limit=2000",
             "/charts/share.svg?probe_cc=IR&by=country", "/api/v1/outages?limit=20",
             "/api/v1/slowdowns", "/api/v1/rejections?recent=0",
             "/api/v1/probes?revoked=false&limit=50", "/healthz", "/metrics"] * 3

    async def main() -> list[tuple[int, Any]]:
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            async def get(path: str) -> tuple[int, Any]:
                async with client.get(path) as resp:
                    body = await (resp.json() if "/api/" in path or path == "/healthz"
                                  else resp.text())
                    return resp.status, body
            out = list(await asyncio.gather(*(get(p) for p in paths)))
            assert app[STORE].threads == threads
            return out
        finally:
            await client.close()

    got = asyncio.run(main())
    assert [status for status, _ in got] == [200] * len(paths), got
    probes = next(body for (_, body), p in zip(got, paths, strict=True)
                  if p.startswith("/api/v1/probes"))
    assert probes["probes"][0]["delivery"] == {"last_seq": 16, "received": 8, "missing": 8}
