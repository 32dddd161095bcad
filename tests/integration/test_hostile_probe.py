"""What one enrolled probe gone hostile can do to the others, against the real parts.

A real Mosquitto with the project's configs (configs/mosquitto/, rendered by
scripts/mosquitto_conf.py through lab.broker), the real collector ingest and a real SQLite store.
Every test counts what the honest probe sent against what the collector stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.uplink.publisher import RC_NOT_AUTHORIZED, MqttSession
from agent.wire.topics import probe_topic
from collector.config import ApiConfig, CollectorConfig, OutagesConfig, StoreConfig
from collector.helper.auth import parse_probes
from collector.runtime import ServeSettings
from collector.service import create_app
from collector.store import open_store
from collector.store.base import QuarantineLimits
from collector.store.sqlbase import SqlStore
from lab.broker import BrokerInfo, MosquittoBroker
from lab.probes import TestProbe
from tests.integration.test_ingest import (
    count,
    enrol,
    in_process,
    rejections,
    sqlite_url,
    wait_for,
)

V5 = aiomqtt.ProtocolVersion.V5
REPO = Path(__file__).resolve().parents[2]


def probe_client(info: BrokerInfo, probe_id: str, *, clean: bool = True) -> aiomqtt.Client:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    return aiomqtt.Client(
        info.host, info.probe_port, username=probe_id,
        password=info.probes[probe_id].password, identifier=probe_id, protocol=V5,
        tls_context=info.tls_context(), clean_start=clean, properties=props,
    )


# Every way a probe could name the collectors' shared subscription (or everything at once).
HIJACK_FILTERS = (
    "$share/collectors/vigil/v1/probes/+/measurements",
    "$share/collectors/edge/vigil/v1/probes/+/measurements",
    "$share/collectors/#",
    "#",
)


async def test_probe_cannot_steal_other_probes_measurements_through_the_shared_group(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    victim, attacker = TestProbe.new(), TestProbe.new()
    broker = broker_factory(probe_ids=[victim.probe_id, attacker.probe_id])
    info = broker.info
    url = sqlite_url(tmp_path)
    enrol(url, victim, attacker)
    stolen: list[str] = []
    async with in_process(info, url, "c1"):
        # The attacker joins with a persistent session, then leaves: its subscriptions (had
        # the broker made them shared) would keep taking a share of every delivery.
        async with probe_client(info, attacker.probe_id, clean=False) as spy:
            for f in HIJACK_FILTERS:
                await spy.subscribe(f, qos=1)
        async with probe_client(info, attacker.probe_id, clean=False) as spy:
            async with probe_client(info, victim.probe_id) as honest:
                session = MqttSession(honest)
                codes = [await session.publish(victim.topic, victim.envelope(probe_seq=i))
                         for i in range(1, 101)]
                session.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    async for message in spy.messages:
                        stolen.append(str(message.topic))
        assert all(c < 0x80 for c in codes), codes  # every message acknowledged to the victim
        await wait_for(lambda: count(url) >= 100, "all 100 of the victim's measurements", 30)
    assert count(url) == 100, broker.log_text()[-2000:]
    assert stolen == []
    store = open_store(url)
    try:
        gaps = store.delivery_gaps()[victim.probe_id]
    finally:
        store.close()
    assert (gaps.last_seq, gaps.received, gaps.missing) == (100, 100, 0)


async def test_collector_counts_and_shows_the_deliveries_it_never_got(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    probe = TestProbe.new()
    broker = broker_factory(probe_ids=[probe.probe_id])
    url = sqlite_url(tmp_path)
    enrol(url, probe)
    sent = [n for n in range(1, 21) if n not in (4, 7, 8)]  # three never reach the collector
    async with in_process(broker.info, url, "c1"):
        async with probe_client(broker.info, probe.probe_id) as client:
            for n in sent:
                await client.publish(probe.topic, probe.envelope(probe_seq=n), qos=1)
        await wait_for(lambda: count(url) >= len(sent), "every numbered measurement", 30)
    app = create_app(ServeSettings(
        config=CollectorConfig(store=StoreConfig(url=url), api=ApiConfig(stats_cache_s=0.0),
                               outages=OutagesConfig(enabled=False)).validate(),
        ingest=False, outages=False))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/api/v1/probes")
        (shown,) = (await resp.json())["probes"]
        metrics = await (await client.get("/metrics")).text()
    assert shown["delivery"] == {"last_seq": 20, "received": 17, "missing": 3}
    assert "vigil_measurements_missing 3.0" in metrics


@pytest.mark.parametrize("kind", ["extra", "status/extra", "measurements/extra", "commands"])
async def test_probe_writes_only_its_measurements_and_status(
    kind: str, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    probe = TestProbe.new()
    broker = broker_factory(probe_ids=[probe.probe_id])
    async with probe_client(broker.info, probe.probe_id) as client:
        session = MqttSession(client)
        refused = await session.publish(probe_topic(probe.probe_id, kind), b"x" * 10_000,
                                        retain=True)
        own = await session.publish(probe.status_topic, b"online", retain=True)
        session.close()
    assert refused == RC_NOT_AUTHORIZED  # no retained message on any other sub-topic
    assert own < 0x80


async def test_deeply_nested_json_is_counted_malformed_not_an_internal_error(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    probe = TestProbe.new()
    broker = broker_factory(probe_ids=[probe.probe_id])
    url = sqlite_url(tmp_path)
    enrol(url, probe)
    deep = b"[" * 20_000 + b"]" * 20_000  # deeper than any JSON parser's recursion limit
    shallow_enough = b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}"  # parses, still an attack
    async with in_process(broker.info, url, "c1"):
        async with probe_client(broker.info, probe.probe_id) as client:
            await client.publish(probe.topic, probe.sign(deep), qos=1)
            await client.publish(probe.topic, probe.sign(shallow_enough), qos=1)
            await client.publish(probe.status_topic, b"[" * 5000 + b"]" * 5000, qos=1)
            await client.publish(probe.topic, probe.envelope(), qos=1)  # and an honest one
        await wait_for(lambda: sum(rejections(url).values()) >= 3 and count(url) >= 1,
                       "three rejections and one measurement", 30)
    assert rejections(url) == {"malformed_json": 3}
    assert count(url) == 1


async def test_quarantine_is_bounded_per_probe_and_in_total_and_drops_are_counted(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = QuarantineLimits(per_probe_rows=50, per_probe_bytes=400_000, total_rows=80,
                              total_bytes=10_000_000)
    monkeypatch.setattr(SqlStore, "quarantine_limits", limits)
    a, b, honest = TestProbe.new(), TestProbe.new(), TestProbe.new()
    broker = broker_factory(probe_ids=[a.probe_id, b.probe_id, honest.probe_id])
    url = sqlite_url(tmp_path)
    enrol(url, a, b, honest)
    garbage = b"\xff" * 5_000
    async with in_process(broker.info, url, "c1"):
        for attacker in (a, b):
            async with probe_client(broker.info, attacker.probe_id) as client:
                for _ in range(100):
                    await client.publish(attacker.topic, garbage, qos=1)
        async with probe_client(broker.info, honest.probe_id) as client:
            for _ in range(10):
                await client.publish(honest.topic, honest.envelope(), qos=1)
        await wait_for(lambda: count(url) >= 10
                       and rejections(url).get("malformed_envelope", 0) >= 200,
                       "every message stored or counted", 30)
    store = open_store(url)
    try:
        kept = store._query(  # type: ignore[attr-defined]  # a look inside, for the test
            "SELECT probe_id, COUNT(*), SUM(LENGTH(raw)) FROM quarantine GROUP BY probe_id")
        counts = store.rejection_counts()
    finally:
        store.close()
    per_probe = {pid: (int(n), int(size)) for pid, n, size in kept}
    assert sum(n for n, _ in per_probe.values()) == 80  # the total bound
    assert all(n <= 50 and size <= 400_000 for n, size in per_probe.values())
    assert counts == {"malformed_envelope": 200, "quarantine_dropped": 120}
    assert count(url) == 10  # the honest probe lost nothing


async def test_qos0_measurements_are_refused_and_inflight_bytes_are_bounded(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    attacker, honest = TestProbe.new(), TestProbe.new()
    broker = broker_factory(probe_ids=[attacker.probe_id, honest.probe_id])
    url = sqlite_url(tmp_path)
    enrol(url, attacker, honest)
    big = attacker.envelope(test_keys={"padding": "x" * 150_000})  # valid, signed, ~200 kB
    budget = 1_000_000  # bytes in flight to the collector: 3 messages of 256 kB + overhead
    async with in_process(broker.info, url, "c1", max_message_bytes=262_144,
                          max_inflight_bytes=budget) as ingest:
        async with probe_client(broker.info, attacker.probe_id) as client:
            for _ in range(50):  # QoS 0 escapes the broker's flow control: refused
                await client.publish(attacker.topic, big, qos=0)
        async with probe_client(broker.info, honest.probe_id) as client:
            await client.publish(honest.topic, honest.envelope(), qos=1)
        await wait_for(lambda: count(url) >= 1, "the honest measurement", 30)
        await wait_for(lambda: ingest.stats.rejected["qos0_refused"] >= 50, "refusals", 30)
        # The store stalls (a writer holds the SQLite lock): nothing is acknowledged, and the
        # broker may not send more than the byte budget allows.
        lock = sqlite3.connect(url.removeprefix("sqlite://"), isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            before = ingest.stats.received
            async with probe_client(broker.info, attacker.probe_id) as client:
                for _ in range(40):
                    await client.publish(attacker.topic, attacker.envelope(
                        test_keys={"padding": "x" * 150_000}), qos=1)
            await wait_for(lambda: ingest.stats.received - before >= 3, "the first ones", 30)
            await asyncio.sleep(1.0)  # give the broker every chance to send more
            in_flight = ingest.stats.received - before
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        await wait_for(lambda: count(url) >= 41, "everything once the store is back", 60)
    assert ingest.stats.rejected["qos0_refused"] == 50
    assert in_flight <= budget // 262_144
    assert count(url) == 41  # the honest one and the 40 QoS 1 ones: nothing lost


async def test_one_command_revokes_everywhere_and_cuts_the_probe_off(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    probe, other = TestProbe.new(), TestProbe.new()
    broker = broker_factory(probe_ids=[probe.probe_id, other.probe_id])
    info = broker.info
    url = sqlite_url(tmp_path)
    enrol(url, probe, other)
    helper_file = tmp_path / "probes.jsonl"
    helper_file.write_text("".join(
        json.dumps({"probe_id": p.probe_id, "public_key": p.public_b64, "revoked": False}) + "\n"
        for p in (probe, other)))
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{broker.pid}\n")
    config = tmp_path / "collector.toml"
    config.write_text(
        f'[store]\nurl = "{url}"\n[revocation]\n'
        f'broker_password_file = "{broker.workdir / "probes.passwd"}"\n'
        f'broker_pid_file = "{pid_file}"\nhelper_probes_file = "{helper_file}"\n')

    async with probe_client(info, probe.probe_id) as client:
        async def until_disconnected() -> None:
            with contextlib.suppress(aiomqtt.MqttError):
                async for _ in client.messages:
                    pass

        watcher = asyncio.create_task(until_disconnected())
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "collector", "probes", "revoke", probe.probe_id,
             "--config", str(config)],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        await asyncio.wait_for(watcher, 10)  # cut off within seconds
    with pytest.raises(aiomqtt.MqttCodeError):
        async with probe_client(info, probe.probe_id):
            pass
    async with probe_client(info, other.probe_id):  # the others are untouched
        pass
    keys = parse_probes(helper_file.read_text(), str(helper_file))
    assert keys[probe.probe_id][1] is True and keys[other.probe_id][1] is False
    store = open_store(url)
    try:
        assert store.get_probe(probe.probe_id).revoked  # type: ignore[union-attr]
    finally:
        store.close()
