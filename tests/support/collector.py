"""Driving a whole collector in a test: its broker settings, probes publishing to it, its API
polled until it answers what the test waits for, and a store filled from a synthetic archive."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import aiomqtt
from aiohttp.test_utils import TestClient

from collector.config import BrokerConfig, CollectorConfig, IngestConfig, StoreConfig
from collector.outages.detector import OutageEvent
from collector.outages.store import OutageEventStore
from collector.store import open_store
from collector.store.base import IngestBatch
from lab.archive import Archive
from lab.broker import BrokerInfo
from lab.probes import TestProbe
from tests.support.waiting import wait_until


class Enrollable(Protocol):
    @property
    def probe_id(self) -> str: ...

    @property
    def public_raw(self) -> bytes: ...


def enrol(url: str, probes: Iterable[Enrollable]) -> None:
    """The probes' keys in the store at ``url``, as enrolment leaves them."""
    s = open_store(url)
    try:
        for p in probes:
            s.add_probe(p.probe_id, p.public_raw)
    finally:
        s.close()


def serve_config(info: BrokerInfo, url: str, client_id: str, *, batch_size: int,
                 **sections: Any) -> CollectorConfig:
    """A collector on the test broker (TLS, its own account) and the store at ``url``, with a
    quick ingest; ``sections`` the rest (``outages=``, ``slowdowns=``...)."""
    return CollectorConfig(
        broker=BrokerConfig(host=info.host, port=info.collector_port, tls=True,
                            ca_file=str(info.ca_file), username=info.collector.username,
                            password=info.collector.password, client_id=client_id,
                            keepalive_s=5),
        store=StoreConfig(url=url),
        ingest=IngestConfig(batch_size=batch_size, retry_initial_s=0.1, retry_max_s=1.0,
                            key_refresh_s=0.5),
        **sections,
    ).validate()


async def publish(info: BrokerInfo, probe: TestProbe, password: str,
                  envelopes: Iterable[bytes]) -> int:
    """Publish signed envelopes as ``probe`` (QoS 1, in order); how many."""
    sent = 0
    async with aiomqtt.Client(
        info.host, info.probe_port, username=probe.probe_id, password=password,
        identifier=probe.probe_id, protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=info.tls_context(),
    ) as mqtt:
        for env in envelopes:
            await mqtt.publish(probe.topic, env, qos=1)
            sent += 1
    return sent


async def wait_json(client: TestClient[Any, Any], path: str, pred: Callable[[Any], bool],
                    what: str, *, timeout: float, interval: float = 0.2) -> Any:
    """GET ``path`` until ``pred`` holds for its JSON body; that body."""
    last: Any = None

    async def ready() -> bool:
        nonlocal last
        last = await (await client.get(path)).json()
        return bool(pred(last))

    await wait_until(ready, what, timeout=timeout, interval=interval,
                     detail=lambda: f"last answer {last!r}")
    return last


async def wait_ingest_connected(client: TestClient[Any, Any], *, timeout: float,
                                interval: float = 0.2) -> None:
    await wait_json(client, "/healthz", lambda b: b["ingest"].get("connected") is True,
                    "the ingest to connect", timeout=timeout, interval=interval)


def archive_store(folder: Path, archive: Archive, outages: Iterable[OutageEvent] = ()) -> str:
    """A SQLite store in ``folder`` with the archive's probes and measurements and the outage
    events; its URL."""
    url = f"sqlite://{folder}/collector.db"
    enrol(url, archive.probes.values())
    s = open_store(url)
    try:
        s.write_batch(IngestBatch(measurements=archive.rows))
        es = OutageEventStore(s)
        for e in outages:
            es.save(e)
    finally:
        s.close()
    return url


def overlapping_collectors(url: str, rows: list[Any], during: Callable[[], object],
                           timeout_s: float = 120.0) -> list[BaseException]:
    """Two collectors (threads, a store connection each) write ``rows`` in batches of 20,
    folding the rollups after each: the first the first two thirds in order, the second the
    last two thirds newest first, so the middle third arrives at both.  ``during`` runs while
    they write (a prune, say).  Returns what the collectors raised."""
    import threading

    from collector.store.base import IngestBatch

    errors: list[BaseException] = []

    def collector(part: list[Any]) -> None:
        s = open_store(url)
        try:
            for i in range(0, len(part), 20):
                s.write_batch(IngestBatch(measurements=part[i : i + 20]))
                s.fold_rollups(max_span=30)
        except BaseException as exc:  # returned to the test
            errors.append(exc)
        finally:
            s.close()

    third = len(rows) // 3
    threads = [threading.Thread(target=collector, args=(rows[: 2 * third],)),
               threading.Thread(target=collector, args=(rows[third:][::-1],))]
    for t in threads:
        t.start()
    try:
        during()
    finally:
        for t in threads:
            t.join(timeout_s)
    return errors
