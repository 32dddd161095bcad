"""The publisher against a real Mosquitto running the project's config (configs/mosquitto/).

Every test counts: what the outbox held is what a collector subscribed through the shared
subscription received (at least once; the collector deduplicates), or is still in the outbox
with the broker's refusal recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt

from agent import identity
from agent.identity import Identity
from agent.uplink.outbox import Outbox
from agent.uplink.publisher import (
    RC_NOT_AUTHORIZED,
    RC_PACKET_TOO_LARGE,
    MqttSession,
    Publisher,
    PublisherSettings,
)
from agent.wire.topics import at_broker, measurements_topic, probe_view, status_topic
from lab.broker import BrokerInfo, MosquittoBroker
from lab.mini_collector import Collector
from lab.records import make_record
from tests.support.waiting import wait_until as poll

REPO = Path(__file__).resolve().parent.parent.parent
SHARED = "$share/collectors/edge/vigil/v1/probes/+/measurements"
V5 = aiomqtt.ProtocolVersion.V5


def settings_for(info: BrokerInfo, probe_id: str, **kw: Any) -> PublisherSettings:
    base: dict[str, Any] = {
        "host": info.host,
        "port": info.probe_port,
        "ca_file": info.ca_file,
        "password": info.probes[probe_id].password,
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        "ack_timeout": 5.0,
        "connect_timeout": 5.0,
        "unrouted_retry": 0.2,
        # The minimal collector here sends no receipts: these tests are about the broker
        # layer, where a PUBACK deletes (receipts: tests/integration/test_delivery.py).
        "receipts": False,
    }
    base.update(kw)
    return PublisherSettings(**base)


async def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    await poll(pred, what, timeout=timeout)


@contextlib.asynccontextmanager
async def running(pub: Publisher) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def retained_status(info: BrokerInfo, probe_id: str) -> dict[str, Any]:
    async with aiomqtt.Client(
        info.host, info.collector_port, username=info.collector.username,
        password=info.collector.password, tls_context=info.tls_context(), protocol=V5, timeout=5,
    ) as client:
        await client.subscribe(at_broker(status_topic(probe_id)), qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.retain
                doc: dict[str, Any] = json.loads(message.payload)  # type: ignore[arg-type]
                return doc
    raise AssertionError("no retained status")


def new_probe(tmp_path: Path, broker: MosquittoBroker, name: str) -> Identity:
    ident = identity.create(tmp_path / name)
    broker.add_probe(ident.probe_id)
    return ident


# ---- publishing ---------------------------------------------------------------------------------
async def test_publishes_everything_in_order_with_status(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    ident = new_probe(tmp_path, broker, "p")
    info = broker.info
    with Outbox(tmp_path / "p", ident) as ob:
        recs = [make_record(ident.probe_id, i) for i in range(300)]
        for r in recs:
            ob.enqueue(r)
        pub = Publisher(ob, settings_for(info, ident.probe_id, status_interval=0.2))
        async with Collector(info, {ident.probe_id: ident}) as col, running(pub):
            await wait_until(lambda: len(ob) == 0, 30, "outbox drained")
            await wait_until(lambda: len(col.received) == 300, 10, "all received")
            online = await retained_status(info, ident.probe_id)
            late = make_record(ident.probe_id, 300)
            ob.enqueue(late)
            pub.notify()
            await wait_until(lambda: late.measurement_id in col.received, 10, "late record")
        assert not col.bad
        assert set(col.received) == {r.measurement_id for r in [*recs, late]}
        assert pub.counters.published == 301 and pub.counters.refused == 0
        assert ob.stats().counters["published"] == 301
    assert online["state"] == "online" and online["probe_id"] == ident.probe_id
    assert online["outbox"]["enqueued"] >= 300 and "published" in online["publisher"]
    offline = await retained_status(info, ident.probe_id)
    assert offline["state"] == "offline" and offline["reason"] == "shutdown"


async def test_client_certificate_login(broker: MosquittoBroker, tmp_path: Path) -> None:
    ident = identity.create(tmp_path / "p")
    cert = broker.client_cert(ident.probe_id)
    info = broker.info
    with Outbox(tmp_path / "p", ident) as ob:
        ob.enqueue(make_record(ident.probe_id))
        settings = PublisherSettings(
            host=info.host, port=info.probe_cert_port, ca_file=info.ca_file,
            cert_file=cert.cert_file, key_file=cert.key_file, receipts=False,
        )
        async with Collector(info, {ident.probe_id: ident}) as col:
            assert await Publisher(ob, settings).flush() == 1
            await wait_until(lambda: len(col.received) == 1, 10, "delivery")
        assert len(ob) == 0


async def test_broker_restart_mid_drain_loses_nothing(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    ident = new_probe(tmp_path, broker, "p")
    info = broker.info
    with Outbox(tmp_path / "p", ident) as ob:
        ids = set()
        for i in range(1500):
            rec = make_record(ident.probe_id, i, pad=500)
            ob.enqueue(rec)
            ids.add(rec.measurement_id)
        pub = Publisher(ob, settings_for(info, ident.probe_id, max_inflight=8, ack_batch=16))
        async with Collector(info, {ident.probe_id: ident}) as col, running(pub):
            await wait_until(lambda: ob.stats().counters["published"] >= 200, 30, "drain begun")
            remaining = len(ob)
            broker.restart()  # graceful: Mosquitto saves the collector's queued messages
            await wait_until(lambda: len(ob) == 0, 60, "outbox drained after restart")
            await wait_until(lambda: set(col.received) == ids, 30,
                             f"all {len(ids)} received (have {len(col.received)})")
        assert remaining > 0, "restart happened after the drain finished: test proves nothing"
        assert not col.bad
        assert pub.counters.connects >= 2
        # At least once, and not much more: re-sent are at most the probe's in-flight window
        # and the broker's in-flight window towards the collector (unacknowledged at restart).
        duplicates = sum(c - 1 for c in col.received.values())
        assert duplicates <= 8 + 100


async def test_unreachable_broker_backs_off_and_keeps_everything(
    broker_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    ident = identity.create(tmp_path / "p")
    broker = broker_factory(probe_ids=[ident.probe_id], start=False)
    info = broker.info
    with Outbox(tmp_path / "p", ident) as ob:
        for i in range(20):
            ob.enqueue(make_record(ident.probe_id, i))
        pub = Publisher(ob, settings_for(info, ident.probe_id))
        async with running(pub):
            await wait_until(lambda: pub.counters.connect_failures >= 3, 10, "retries")
            assert len(ob) == 20
            broker.start()
            async with Collector(info, {ident.probe_id: ident}) as col:
                pub.notify()
                await wait_until(lambda: len(col.received) == 20, 20, "delivery once up")
        assert len(ob) == 0


async def test_wrong_password_is_refused_and_nothing_lost(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    ident = new_probe(tmp_path, broker, "p")
    with Outbox(tmp_path / "p", ident) as ob:
        ob.enqueue(make_record(ident.probe_id))
        pub = Publisher(ob, settings_for(broker.info, ident.probe_id, password="wrong"))
        async with running(pub):
            await wait_until(lambda: pub.counters.connect_failures >= 2, 10, "refusals")
        assert pub.counters.connects == 0 and len(ob) == 1


# ---- refusals: PUBACK reason codes --------------------------------------------------------------
async def test_probe_cannot_publish_under_another_probes_id(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    a = new_probe(tmp_path, broker, "a")
    b = new_probe(tmp_path, broker, "b")
    info = broker.info
    with Outbox(tmp_path / "a", a) as ob:
        rec = make_record(a.probe_id)
        ob.enqueue(rec)
        # A's records with B's broker credentials: the topic is A's, the username B's.
        pub = Publisher(ob, settings_for(info, b.probe_id, username=b.probe_id))
        async with Collector(info, {a.probe_id: a, b.probe_id: b}) as col:
            assert await pub.flush() == 0
            # And B's own login writing to A's topic with a raw session (no outbox involved).
            client = aiomqtt.Client(
                info.host, info.probe_port, username=b.probe_id,
                password=info.probes[b.probe_id].password, tls_context=info.tls_context(),
                protocol=V5, identifier=b.probe_id,
            )
            session = MqttSession(client)
            async with client:
                code = await session.publish(measurements_topic(a.probe_id), b"forged")
                own = await session.publish(status_topic(b.probe_id), b"{}", retain=False)
            session.close()
            await asyncio.sleep(0.5)
        assert code == RC_NOT_AUTHORIZED and own < 0x80
        assert pub.counters.refused == 1 and pub.counters.refused_by_code == {"135": 1}
        assert ob.take(10) == []  # backed off...
        kept = ob._db.execute("SELECT measurement_id, refusals, last_error FROM outbox").fetchall()
        assert kept == [(rec.measurement_id, 1, "135: not authorized")]  # ...but kept
        assert ob.stats().counters["refused"] == 1
        assert not col.received and not col.by_topic


async def test_probe_reads_nothing_of_other_probes(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    a = new_probe(tmp_path, broker, "a")
    b = new_probe(tmp_path, broker, "b")
    info = broker.info
    seen: list[str] = []

    async def on_message(topic: str, payload: bytes) -> None:
        seen.append(topic)

    spy = aiomqtt.Client(
        info.host, info.probe_port, username=a.probe_id,
        password=info.probes[a.probe_id].password, tls_context=info.tls_context(),
        protocol=V5, identifier=a.probe_id,
    )
    async with spy:
        granted = await spy.subscribe("vigil/v1/probes/#", qos=1)
        await spy.subscribe(f"$share/collectors/vigil/v1/probes/{b.probe_id}/+", qos=1)
        with Outbox(tmp_path / "b", b) as ob:
            ob.enqueue(make_record(b.probe_id))
            pub = Publisher(ob, settings_for(info, b.probe_id),
                            subscriptions=[f"vigil/v1/probes/{b.probe_id}/commands"],
                            on_message=on_message)
            async with Collector(info, {b.probe_id: b}) as col, running(pub):
                await wait_until(lambda: len(col.received) == 1, 10, "B's record delivered")
                async with aiomqtt.Client(
                    info.host, info.collector_port, username=info.collector.username,
                    password=info.collector.password, tls_context=info.tls_context(),
                    protocol=V5,
                ) as operator:
                    await operator.publish(f"edge/vigil/v1/probes/{b.probe_id}/commands", b"c-b", 1)
                    await operator.publish(f"edge/vigil/v1/probes/{a.probe_id}/commands", b"c-a", 1)
                await wait_until(lambda: len(seen) == 1, 10, "B got its own command")
        got: list[str] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for message in spy.messages:
                    got.append(str(message.topic))
    # Mosquitto 2.0.11 grants the subscription (SUBACK) but delivers only what A may read.
    assert [int(g.value) for g in granted] == [1]  # type: ignore[union-attr]
    assert [probe_view(t) for t in got] == [f"vigil/v1/probes/{a.probe_id}/commands"]
    assert seen == [f"vigil/v1/probes/{b.probe_id}/commands"]


async def test_oversized_message_refused_by_broker_and_kept(
    broker_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> None:
    ident = identity.create(tmp_path / "p")
    broker = broker_factory(probe_ids=[ident.probe_id], message_size_limit=16_384)
    info = broker.info
    with Outbox(tmp_path / "p", ident) as ob:
        small1 = make_record(ident.probe_id, 1)
        big = make_record(ident.probe_id, 2, pad=30_000)
        small2 = make_record(ident.probe_id, 3)
        for r in (small1, big, small2):
            ob.enqueue(r)
        pub = Publisher(ob, settings_for(info, ident.probe_id))
        async with Collector(info, {ident.probe_id: ident}) as col:
            assert await pub.flush() == 2
            await wait_until(lambda: len(col.received) == 2, 10, "the small ones")
        # Mosquitto 2.0.11 answers 0x95 in a PUBACK (out of spec); seen, not a disconnect.
        assert pub.counters.refused_by_code == {str(RC_PACKET_TOO_LARGE): 1}
        assert pub.counters.connection_losses == 0 and pub.counters.connects == 1
        assert set(col.received) == {small1.measurement_id, small2.measurement_id}
        assert ob.take(10) == []  # backed off: not offered now, but still stored
        row = ob._db.execute(
            "SELECT measurement_id, refusals, last_error FROM outbox"
        ).fetchall()
        assert row == [(big.measurement_id, 1, "149: packet too large")]


async def test_over_local_limit_is_not_even_sent(broker: MosquittoBroker, tmp_path: Path) -> None:
    ident = new_probe(tmp_path, broker, "p")
    with Outbox(tmp_path / "p", ident) as ob:
        ob.enqueue(make_record(ident.probe_id, pad=5000))
        pub = Publisher(ob, settings_for(broker.info, ident.probe_id, max_message_bytes=4096))
        assert await pub.flush() == 0
        assert pub.counters.oversized == 1 and pub.counters.refused == 1
        assert len(ob) == 1


async def test_no_subscriber_means_kept_until_a_collector_listens(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    ident = new_probe(tmp_path, broker, "p")
    info = broker.info
    with Outbox(tmp_path / "p", ident) as ob:
        rec = make_record(ident.probe_id)
        ob.enqueue(rec)
        pub = Publisher(ob, settings_for(info, ident.probe_id, unrouted_retry=0.3))
        async with running(pub):
            await wait_until(lambda: pub.counters.unrouted >= 1, 10, "PUBACK 0x10")
            assert len(ob) == 1
            async with Collector(info, {ident.probe_id: ident}) as col:
                await wait_until(lambda: len(col.received) == 1, 10, "retry after subscribe")
        assert len(ob) == 0 and ob.stats().counters["unrouted"] >= 1


# ---- kill -9 mid-campaign -----------------------------------------------------------------------
AGENT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from agent import identity
    from agent.uplink.outbox import Outbox, OutboxSink
    from agent.uplink.publisher import Publisher, PublisherSettings
    from lab.records import make_record

    state, conf = Path(sys.argv[1]), json.loads(sys.argv[2])
    conf["ca_file"] = Path(conf["ca_file"])
    ident = identity.load(state)

    async def main():
        ob = Outbox(state, ident)
        pub = Publisher(ob, PublisherSettings(**conf))
        sink = OutboxSink(ob, on_commit=pub.notify)
        stop = asyncio.Event()
        task = asyncio.create_task(pub.run(stop))
        for i in range(100_000):  # the campaign: measure, put, repeat
            rec = make_record(ident.probe_id, i, pad=300)
            await sink.put(rec)
            print(rec.measurement_id, flush=True)
            await asyncio.sleep(0.001)
        stop.set()
        await task

    asyncio.run(main())
    """
)


async def test_agent_sigkilled_mid_campaign_loses_nothing(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    ident = new_probe(tmp_path, broker, "p")
    info = broker.info
    conf = {"host": info.host, "port": info.probe_port, "ca_file": str(info.ca_file),
            "receipts": False,
            "password": info.probes[ident.probe_id].password, "backoff_initial": 0.05}
    produced: list[str] = []
    async with Collector(info, {ident.probe_id: ident}) as col:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", AGENT, str(tmp_path / "p"), json.dumps(conf),
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(60):
                while len(produced) < 400:
                    line = await proc.stdout.readline()
                    if not line:
                        break
                    produced.append(line.decode().strip())
            await wait_until(lambda: len(col.received) > 50, 10, "publishing under way")
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            # It kept measuring while we read: everything it printed was committed.
            produced += (await proc.stdout.read()).decode().split()
            err = (await proc.stderr.read()).decode()
        assert len(produced) >= 400, err
        status = await retained_status(info, ident.probe_id)
        assert status["state"] == "offline" and status["reason"] == "connection lost"  # Will
        # The agent restarts: whatever was committed and not acknowledged goes out now.
        with Outbox(tmp_path / "p", ident) as ob:
            backlog = len(ob)
            await Publisher(ob, settings_for(info, ident.probe_id)).flush()
            assert len(ob) == 0
        await wait_until(lambda: set(produced) <= set(col.received), 20,
                         "every produced measurement at the collector")
    assert not col.bad
    lost = set(produced) - set(col.received)
    assert not lost
    assert len(col.received) - len(produced) <= 1  # one committed, killed before printing
    print(f"produced {len(produced)}, backlog after kill {backlog}, "
          f"duplicates {sum(c - 1 for c in col.received.values())}")


# ---- one-shot runs (vigil-agent run --once) -----------------------------------------------------
class ListSink:
    def __init__(self) -> None:
        self.records: list[str] = []

    async def put(self, record: Any) -> None:
        self.records.append(record.measurement_id)


def once_config(state: Path, mqtt: dict[str, Any]) -> Any:
    from agent.config import from_mapping

    return from_mapping({"agent": {"state_dir": str(state)}, "mqtt": mqtt})


async def test_once_run_publishes_through_the_outbox(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    from agent.uplink.oneshot import publishing

    ident = new_probe(tmp_path, broker, "p")
    info = broker.info
    (tmp_path / "pw").write_text(info.probes[ident.probe_id].password + "\n")
    config = once_config(tmp_path / "p", {
        "host": info.host, "port": info.probe_port, "ca_file": str(info.ca_file),
        "password_file": str(tmp_path / "pw"),
        "receipts": False,
    })
    out = ListSink()
    recs = [make_record(ident.probe_id, i) for i in range(25)]
    async with Collector(info, {ident.probe_id: ident}) as col:
        async with publishing(config, ident, out) as sink:
            assert sink is not out
            for r in recs:
                await sink.put(r)
        await wait_until(lambda: len(col.received) == 25, 10, "published during the run")
    assert out.records == [r.measurement_id for r in recs]
    with Outbox(tmp_path / "p", ident) as ob:
        assert len(ob) == 0 and ob.stats().counters["published"] == 25


async def test_once_run_without_broker_or_with_busy_outbox_only_writes_its_output(
    tmp_path: Path,
) -> None:
    from agent.config import from_mapping
    from agent.uplink.oneshot import publishing

    ident = identity.create(tmp_path / "p")
    out = ListSink()
    plain = from_mapping({"agent": {"state_dir": str(tmp_path / "p")}})
    async with publishing(plain, ident, out) as sink:
        assert sink is out
    busy = once_config(tmp_path / "p", {"host": "127.0.0.1", "port": 1, "password": "x"})
    with Outbox(tmp_path / "p", ident):  # the daemon holds it
        async with publishing(busy, ident, out) as sink:
            assert sink is out
            await sink.put(make_record(ident.probe_id))
    assert len(out.records) == 1


async def test_collector_without_receipts_keeps_records_and_sends_again(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """An agent with receipts on, facing a collector older than receipts: nothing leaves
    the outbox on a PUBACK alone; what is sent is offered again after the receipt timeout
    (the operator switches ``receipts = false`` for such a collector)."""
    ident = new_probe(tmp_path, broker, "p")
    info = broker.info
    with Outbox(tmp_path / "p", ident) as ob:
        for i in range(20):
            ob.enqueue(make_record(ident.probe_id, i))
        pub = Publisher(ob, settings_for(info, ident.probe_id, receipts=True,
                                         receipt_timeout=0.3, receipt_timeout_max=0.3))
        async with Collector(info, {ident.probe_id: ident}) as col, running(pub):
            await wait_until(lambda: min(col.received.values(), default=0) >= 2, 20,
                             "every record sent twice")
        stats = ob.stats()
        assert len(ob) == 20 and stats.awaiting_receipt == 20
        assert stats.counters["sent"] >= 40 and stats.counters["resent"] >= 20
        assert stats.counters["published"] == 0 and not col.bad


async def test_collector_without_receipts_falls_back_to_puback_after_the_fallback(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """No receipt ever (a collector older than receipts): after ``receipt_fallback`` from a
    record's first send, its next PUBACK deletes it, as before receipts; nothing is lost."""
    ident = new_probe(tmp_path, broker, "p")
    info = broker.info
    with Outbox(tmp_path / "p", ident) as ob:
        for i in range(20):
            ob.enqueue(make_record(ident.probe_id, i))
        pub = Publisher(ob, settings_for(info, ident.probe_id, receipts=True,
                                         receipt_timeout=0.3, receipt_timeout_max=0.3,
                                         receipt_fallback=1.0))
        async with Collector(info, {ident.probe_id: ident}) as col, running(pub):
            await wait_until(lambda: len(ob) == 0, 20, "the fallback to drain the outbox")
            await wait_until(lambda: len(col.received) == 20, 10, "every record delivered")
        counters = ob.stats().counters
        assert counters["released_on_puback"] == 20 and counters["published"] == 20
        assert min(col.received.values()) >= 2 and not col.bad  # sent, then sent again
