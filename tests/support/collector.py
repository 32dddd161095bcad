"""Driving a whole collector in a test: its broker settings, probes publishing to it, its API
polled until it answers what the test waits for, and a store filled from a synthetic archive."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import aiomqtt
from aiohttp.test_utils import TestClient

from collector.config import BrokerConfig
from collector.outages.detector import OutageEvent
from collector.outages.store import OutageEventStore
from collector.store import open_store
from collector.store.base import IngestBatch
from lab.archive import Archive
from lab.broker import BrokerInfo
from lab.probes import TestProbe
from tests.support.waiting import wait_until


def broker_config(info: BrokerInfo, client_id: str) -> BrokerConfig:
    """The collector's connection to the test broker (TLS, its own account)."""
    return BrokerConfig(host=info.host, port=info.collector_port, tls=True,
                        ca_file=str(info.ca_file), username=info.collector.username,
                        password=info.collector.password, client_id=client_id, keepalive_s=5)


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


def fill_store(url: str, archive: Archive, outages: Iterable[OutageEvent] = ()) -> None:
    """The archive's probes and measurements in the store at ``url``, with outage events."""
    s = open_store(url)
    try:
        for p in archive.probes.values():
            s.add_probe(p.probe_id, p.public_raw)
        s.write_batch(IngestBatch(measurements=archive.rows))
        es = OutageEventStore(s)
        for e in outages:
            es.save(e)
    finally:
        s.close()
