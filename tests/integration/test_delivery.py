"""Nothing acknowledged is lost: end-to-end receipts through the real broker and collector.

Each test runs Mosquitto with the project's config, ``python -m collector ingest`` as a real
process (SQLite store) and the agent's real outbox and publisher, injects a fault (broker
SIGKILL, a full state filesystem, clock jumps) and counts: every record the agent committed
is stored exactly once, none is rejected, and the outbox ends empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import identity
from agent.errors import StateDiskFull
from agent.identity import Identity
from agent.uplink.outbox import Outbox, OutboxLimits
from agent.uplink.publisher import Publisher, PublisherSettings
from agent.wire.envelope import raw_public_key
from collector.store import open_store
from lab.broker import BrokerInfo, MosquittoBroker
from lab.records import make_record
from tests.integration.test_ingest import (
    collector_proc,
    rejections,
    stored_ids,
    wait_for,
)

N = 200
WAIT = 90.0


def settings_for(info: BrokerInfo, probe_id: str, **kw: Any) -> PublisherSettings:
    base: dict[str, Any] = {
        "host": info.host, "port": info.probe_port, "ca_file": info.ca_file,
        "password": info.probes[probe_id].password, "backoff_initial": 0.05,
        "backoff_max": 0.5, "ack_timeout": 5.0, "connect_timeout": 5.0,
        "unrouted_retry": 0.2, "receipt_timeout": 1.0, "receipt_timeout_max": 2.0,
    }
    base.update(kw)
    return PublisherSettings(**base)


def new_probe(tmp_path: Path, broker: MosquittoBroker, url: str, name: str) -> Identity:
    ident = identity.create(tmp_path / name)
    broker.add_probe(ident.probe_id)
    store = open_store(url)
    try:
        store.add_probe(ident.probe_id, raw_public_key(ident.public_key))
    finally:
        store.close()
    return ident


@contextlib.asynccontextmanager
async def running(pub: Publisher) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def start_times(url: str) -> dict[str, float]:
    store = open_store(url)
    try:
        return {m.measurement_id: m.start_time.timestamp() for m in store.recent(1_000_000)}
    finally:
        store.close()


# ---- broker crash while the collectors are away -------------------------------------------------
async def test_broker_sigkill_while_collectors_are_away_loses_nothing(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    """200 records PUBACKed into the collector's queue, then the broker is SIGKILLed before
    it saved them: with receipts all 200 are stored; the control probe with receipts off
    (PUBACK deletes, the old contract) shows the fault is real."""
    broker = broker_factory(autosave_interval=3600)  # nothing saved during the test
    url = f"sqlite://{tmp_path}/collector.db"
    ident = new_probe(tmp_path, broker, url, "p")
    legacy = new_probe(tmp_path, broker, url, "legacy")
    async with collector_proc(tmp_path, broker.info, url, "c1") as col:
        col.start()
        await col.wait_connected()  # the persistent session and its shared subscription
        assert col.terminate() == 0  # the collectors go away; the broker queues for them

        with Outbox(tmp_path / "p", ident) as ob, Outbox(tmp_path / "legacy", legacy) as old:
            records = [make_record(ident.probe_id, i) for i in range(N)]
            for rec in records:
                ob.enqueue(rec)
            produced = {rec.measurement_id for rec in records}
            for i in range(N):
                old.enqueue(make_record(legacy.probe_id, i))
            pub = Publisher(ob, settings_for(broker.info, ident.probe_id))
            await pub.flush()
            assert pub.counters.sent == N and ob.awaiting_receipt() == N and len(ob) == N
            old_pub = Publisher(old, settings_for(broker.info, legacy.probe_id, receipts=False))
            await old_pub.flush()
            assert len(old) == 0  # the old contract: PUBACKed means gone from the probe

            await asyncio.to_thread(broker.kill)  # power cut / OOM kill, before any autosave
            await asyncio.to_thread(broker.start)
            col.start()
            await col.wait_connected()
            async with running(Publisher(ob, settings_for(broker.info, ident.probe_id))):
                await wait_for(lambda: len(ob) == 0, "every record receipted", WAIT)
            stats = ob.stats()
        stored = stored_ids(url)
        assert col.terminate() == 0, col.log_text()
    ours = produced & stored
    legacy_stored = len(stored) - len(ours)
    assert ours == produced, f"lost {len(produced - ours)} of {N}"
    assert set(rejections(url)) <= {"duplicate"}, rejections(url)
    assert stats.counters["receipted"] == N and stats.counters["resent"] > 0
    assert stats.awaiting_receipt == 0
    assert legacy_stored < N  # without receipts the crash did lose records
    print(f"receipts: {len(ours)}/{N} stored after the broker SIGKILL; "
          f"PUBACK only: {legacy_stored}/{N}; resent {stats.counters['resent']}")


# ---- a full state filesystem --------------------------------------------------------------------
@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only), unmounted by path at the end."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True, timeout=30)


def fill(path: Path) -> int:
    """Write a filler file until the filesystem refuses (ENOSPC); its size."""
    written = 0
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512):  # big blocks, then the last partial ones
            for _ in range(100_000):  # bounded: 6.5 GB at most
                try:
                    written += os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return written


async def test_full_state_filesystem_drains_without_help(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    broker = broker_factory(start=False)
    url = f"sqlite://{tmp_path}/collector.db"
    limits = OutboxLimits(min_free_bytes=1024 * 1024, reserve_bytes=512 * 1024)
    with small_tmpfs(tmp_path / "state", "8m") as state:
        broker.start()
        ident = new_probe(tmp_path, broker, url, "id")
        shutil.copytree(tmp_path / "id", state / "p")
        broker.stop()  # the uplink is down while the probe measures
        produced: set[str] = set()
        refused = 0
        with Outbox(state / "p", ident, limits) as ob:
            assert ob.reserve_path.stat().st_size == 512 * 1024
            for i in range(10_000):  # bounded: measure until the outbox refuses
                rec = make_record(ident.probe_id, i, pad=3000)
                try:
                    ob.enqueue(rec)
                except StateDiskFull:
                    refused += 1
                    break
                produced.add(rec.measurement_id)
        assert refused == 1 and len(produced) > 100
        fill(state)  # something else (logs) takes the rest of the card

        # The agent restarts, as systemd would, on a filesystem with no byte left.
        with Outbox(state / "p", ident, limits) as ob:
            assert not ob.reserve_path.exists()  # released to open and drain
            with pytest.raises(StateDiskFull):
                ob.enqueue(make_record(ident.probe_id, 0))
            assert len(ob) == len(produced)
            broker.start()
            async with collector_proc(tmp_path, broker.info, url, "c1") as col:
                col.start()
                await col.wait_connected()
                async with running(Publisher(ob, settings_for(broker.info, ident.probe_id))):
                    await wait_for(lambda: len(ob) == 0, "the outbox to drain", WAIT)
                assert col.terminate() == 0, col.log_text()
            stats = ob.stats()
    assert stored_ids(url) == produced
    assert set(rejections(url)) <= {"duplicate"}
    assert stats.counters["disk_full_refused"] >= 2 and stats.counters["receipted"] == len(
        produced)
    print(f"full filesystem: {len(produced)} committed, {len(produced)} drained, refused "
          f"{stats.counters['disk_full_refused']} new")


# ---- clock jumps --------------------------------------------------------------------------------
class JumpyClock:
    """The probe's wall clock: real time plus an offset the test moves (NTP, no RTC)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return datetime.now(UTC).timestamp() + self.offset

    def record_time(self) -> str:
        return datetime.fromtimestamp(self(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_clock_jumps_forward_and_back_lose_and_reject_nothing(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    broker = broker_factory()
    url = f"sqlite://{tmp_path}/collector.db"
    ident = new_probe(tmp_path, broker, url, "p")
    clock = JumpyClock()
    produced: dict[str, float] = {}  # id -> true (collector) time it was taken
    offsets = [0.0, 3 * 86400.0, 0.0, -400 * 86400.0, -56 * 365 * 86400.0, 0.0]
    async with collector_proc(tmp_path, broker.info, url, "c1") as col:
        col.start()
        await col.wait_connected()
        with Outbox(tmp_path / "p", ident, clock=clock) as ob:
            pub = Publisher(ob, settings_for(broker.info, ident.probe_id))
            for phase, offset in enumerate(offsets):
                clock.offset = offset  # forward 3 days, back, 400 days behind, 1970, synced
                for i in range(20):
                    rec = make_record(ident.probe_id, phase * 100 + i,
                                      measurement_start_time=clock.record_time())
                    ob.enqueue(rec)
                    produced[rec.measurement_id] = clock() - offset
                if phase == 1:
                    assert col.terminate() == 0  # sent while the clock is ahead: no receipt
                    await pub.flush()
                    col.start()
                    await col.wait_connected()
            async with running(Publisher(ob, settings_for(broker.info, ident.probe_id))):
                await wait_for(lambda: len(ob) == 0, "every record receipted", WAIT)
        assert col.terminate() == 0, col.log_text()
    placed = start_times(url)
    assert set(placed) == set(produced), f"lost {len(set(produced) - set(placed))}"
    assert rejections(url) == {} or set(rejections(url)) <= {"duplicate"}, rejections(url)
    now = datetime.now(UTC).timestamp()
    for mid, taken in produced.items():  # every record near when it was really taken
        assert taken - 3600 <= placed[mid] <= now + 1, (mid, taken, placed[mid])
    print(f"clock jumps: {len(produced)} records, {len(placed)} stored, 0 rejected")


def test_record_ids_are_unique_across_jumps() -> None:
    """UUIDv7 ids carry random bits: a clock that repeats an instant never repeats an id."""
    from agent.wire.envelope import uuid7

    ids = {uuid7(1_000) for _ in range(5000)}
    assert len(ids) == 5000 and all(uuid.UUID(i).version == 7 for i in ids)


# ---- the broker's own limits ----------------------------------------------------------------
async def test_queue_overflow_at_the_broker_is_covered_by_receipts(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    """max_queued_messages 50 while the collectors are away: Mosquitto PUBACKs all 200 and
    drops 150 of them; the receipts for the 50 it kept leave 150 unreceipted, sent again."""
    broker = broker_factory(max_queued_messages=50)
    url = f"sqlite://{tmp_path}/collector.db"
    ident = new_probe(tmp_path, broker, url, "p")
    async with collector_proc(tmp_path, broker.info, url, "c1") as col:
        col.start()
        await col.wait_connected()
        assert col.terminate() == 0
        with Outbox(tmp_path / "p", ident) as ob:
            records = [make_record(ident.probe_id, i) for i in range(N)]
            for rec in records:
                ob.enqueue(rec)
            pub = Publisher(ob, settings_for(broker.info, ident.probe_id,
                                             receipt_timeout=3.0, receipt_timeout_max=3.0))
            await pub.flush()
            assert pub.counters.sent == N and pub.counters.refused == 0
            col.start()
            await col.wait_connected()
            # 50 queued, a few of them the probe's status messages (also queued for us)
            await wait_for(lambda: len(stored_ids(url)) >= 45, "what the queue kept")
            first = len(stored_ids(url))
            async with running(Publisher(ob, settings_for(broker.info, ident.probe_id))):
                await wait_for(lambda: len(ob) == 0, "every record receipted", WAIT)
        assert col.terminate() == 0, col.log_text()
    assert stored_ids(url) == {r.measurement_id for r in records}
    assert set(rejections(url)) <= {"duplicate"}
    assert first < N  # the broker did drop what it had acknowledged
    print(f"queue overflow: {first}/{N} survived the broker queue, {N}/{N} stored")


def final_receipts(log_text: str) -> int:
    lines = [ln for ln in log_text.splitlines() if "ingest stopped:" in ln]
    assert lines, log_text[-2000:]
    return int(lines[-1].split("receipts=")[1].split()[0])


async def test_each_collector_of_the_shared_subscription_sends_its_receipts(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    broker = broker_factory()
    url = f"sqlite://{tmp_path}/collector.db"
    ident = new_probe(tmp_path, broker, url, "p")
    async with collector_proc(tmp_path, broker.info, url, "c1", batch_size=5) as c1, \
            collector_proc(tmp_path, broker.info, url, "c2", batch_size=5) as c2:
        for c in (c1, c2):
            c.start()
            await c.wait_connected()
        with Outbox(tmp_path / "p", ident) as ob:
            records = [make_record(ident.probe_id, i) for i in range(N)]
            pub = Publisher(ob, settings_for(broker.info, ident.probe_id, receipt_timeout=30.0))
            async with running(pub):
                for rec in records:
                    ob.enqueue(rec)
                    pub.notify()
                await wait_for(lambda: len(ob) == 0, "every record receipted", WAIT)
            assert ob.stats().counters["resent"] == 0  # every receipt came the first time
        assert c1.terminate() == 0 and c2.terminate() == 0
        sent = (final_receipts(c1.log_text()), final_receipts(c2.log_text()))
    assert stored_ids(url) == {r.measurement_id for r in records}
    assert min(sent) > 0, sent
    print(f"two collectors: receipts sent {sent[0]} + {sent[1]} for {N} records")


# ---- contract versions and the ACL ----------------------------------------------------------
async def test_an_agent_older_than_receipts_is_stored_and_sent_no_receipt(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    broker = broker_factory()
    url = f"sqlite://{tmp_path}/collector.db"
    ident = new_probe(tmp_path, broker, url, "p")
    async with collector_proc(tmp_path, broker.info, url, "c1") as col:
        col.start()
        await col.wait_connected()
        with Outbox(tmp_path / "p", ident) as ob:
            records = [make_record(ident.probe_id, i) for i in range(20)]
            for rec in records:
                ob.enqueue(rec)
            # receipts off: no vigil-receipt property on its publishes, as an older agent
            await Publisher(ob, settings_for(broker.info, ident.probe_id, receipts=False)).flush()
        await wait_for(lambda: len(stored_ids(url)) == 20, "the older agent's 20 records")
        assert col.terminate() == 0
        assert final_receipts(col.log_text()) == 0


async def test_a_probe_reads_its_own_receipts_and_no_one_elses(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    import aiomqtt

    broker = broker_factory()
    url = f"sqlite://{tmp_path}/collector.db"
    a = new_probe(tmp_path, broker, url, "a")
    b = new_probe(tmp_path, broker, url, "b")
    info = broker.info
    v5 = aiomqtt.ProtocolVersion.V5

    def probe_client(ident: Identity) -> aiomqtt.Client:
        return aiomqtt.Client(info.host, info.probe_port, username=ident.probe_id,
                              password=info.probes[ident.probe_id].password,
                              tls_context=info.tls_context(), protocol=v5,
                              identifier=ident.probe_id)

    got: dict[str, list[bytes]] = {a.probe_id: [], b.probe_id: []}
    async with probe_client(a) as ca, probe_client(b) as cb, aiomqtt.Client(
        info.host, info.collector_port, username=info.collector.username,
        password=info.collector.password, tls_context=info.tls_context(), protocol=v5,
    ) as collector:
        # The collector answers on the sibling of the topic a record came by, as the ingest
        # does (whatever prefix the broker gives probe topics): learn it from A's status.
        await collector.subscribe("#", qos=1)
        await ca.publish(f"vigil/v1/probes/{a.probe_id}/status", b"online", qos=1)
        async with asyncio.timeout(5):
            async for message in collector.messages:
                seen = str(message.topic)
                if seen.endswith(f"/{a.probe_id}/status"):
                    break
        a_receipts = seen.rsplit("/", 1)[0] + "/receipts"
        await ca.subscribe(f"vigil/v1/probes/{a.probe_id}/receipts", qos=1)
        await cb.subscribe(f"vigil/v1/probes/{a.probe_id}/receipts", qos=1)  # a spy
        await cb.subscribe(f"vigil/v1/probes/{b.probe_id}/receipts", qos=1)
        # A probe cannot forge receipts for another probe (its ACL writes only its own id).
        await cb.publish(f"vigil/v1/probes/{a.probe_id}/receipts", b'{"v": 1}', qos=1)
        await collector.publish(a_receipts, b"for-a", qos=1)
        for ident, client in ((a, ca), (b, cb)):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    async for message in client.messages:
                        got[ident.probe_id].append(bytes(message.payload))  # type: ignore[arg-type]
    assert got == {a.probe_id: [b"for-a"], b.probe_id: []}
