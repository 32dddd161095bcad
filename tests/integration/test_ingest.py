"""The ingest against a real Mosquitto (the project's config) and real databases.

Every test counts: what was published, what is stored (exactly once), what was rejected and
why.  Collectors run as real processes where a crash matters (SIGKILL), in-process otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import pytest

from agent.wire import envelope as wire
from collector.config import BrokerConfig, IngestConfig
from collector.ingest.pipeline import Ingest
from collector.store import Store, open_store
from collector.store.aio import AsyncStore
from lab.broker import BrokerInfo, MosquittoBroker
from lab.probes import TestProbe
from lab.tcpproxy import TcpProxy
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
WAIT = 60.0  # upper bound for any "until stored" wait


# ---- helpers ------------------------------------------------------------------------------------
async def publish(info: BrokerInfo, probe_id: str, items: Iterable[tuple[str, bytes]]) -> int:
    """Publish QoS 1 as probe ``probe_id`` (its own broker user); returns how many."""
    n = 0
    async with aiomqtt.Client(
        info.host,
        info.probe_port,
        username=probe_id,
        password=info.probes[probe_id].password,
        identifier=probe_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=info.tls_context(),
    ) as client:
        for topic, payload in items:
            await client.publish(topic, payload, qos=1)
            n += 1
    return n


def count(url: str) -> int:
    store = open_store(url)
    try:
        return store.measurement_count()
    finally:
        store.close()


def stored_ids(url: str) -> set[str]:
    store = open_store(url)
    try:
        return {m.measurement_id for m in store.recent(1_000_000)}
    finally:
        store.close()


def folded(url: str) -> dict[str, int]:
    """How many measurements each rollup table counts (what the ingest's folder added)."""
    store = open_store(url)
    try:
        return {t: int(store._query(f"SELECT COALESCE(SUM(n), 0) FROM {t}")[0][0])  # type: ignore[attr-defined]
                for t in ("rollup_hour", "rollup_day", "rollup_month_domain")}
    finally:
        store.close()


def rejections(url: str) -> dict[str, int]:
    store = open_store(url)
    try:
        return store.rejection_counts()
    finally:
        store.close()


async def wait_for(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    await wait_until(pred, what, timeout=timeout, interval=0.1, in_thread=True)


def enrol(url: str, *probes: TestProbe) -> None:
    store = open_store(url)
    try:
        for p in probes:
            store.add_probe(p.probe_id, p.public_raw)
    finally:
        store.close()


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


class CollectorProcess:
    """``python -m collector ingest --config ...`` as a child process, stopped by PID."""

    def __init__(self, workdir: Path, info: BrokerInfo, store_url: str, client_id: str,
                 **ingest: Any) -> None:
        self.log_file = workdir / f"collector-{client_id}.log"
        self.config = workdir / f"collector-{client_id}.toml"
        broker = {
            "host": info.host, "port": info.collector_port, "tls": True,
            "ca_file": str(info.ca_file), "username": info.collector.username,
            "password": info.collector.password, "client_id": client_id,
            "keepalive_s": 5,
        }
        settings = {"batch_size": 50, "retry_initial_s": 0.1, "retry_max_s": 1.0,
                    "stats_interval_s": 1.0, "key_refresh_s": 1.0, **ingest}
        lines = ["[broker]"] + [f"{k} = {toml_value(v)}" for k, v in broker.items()]
        lines += ["[store]", f"url = {toml_value(store_url)}", "busy_timeout_ms = 200"]
        lines += ["[ingest]"] + [f"{k} = {toml_value(v)}" for k, v in settings.items()]
        self.config.write_text("\n".join(lines) + "\n", "utf-8")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> CollectorProcess:
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "collector", "ingest", "--config", str(self.config)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if k != "VIGIL_BROKER_PASSWORD"},
            )
        return self

    def log_text(self) -> str:
        return self.log_file.read_text("utf-8", errors="replace")

    def _new_log(self) -> str:
        return self.log_text()[self._log_offset:]

    async def wait_connected(self) -> None:
        await wait_for(lambda: "connected to" in self._new_log() or not self.alive,
                       "collector to connect", 30)
        assert self.alive, self.log_text()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def cleanup(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)


@contextlib.asynccontextmanager
async def collector_proc(*args: Any, **kwargs: Any) -> AsyncIterator[CollectorProcess]:
    c = CollectorProcess(*args, **kwargs)
    try:
        yield c
    finally:
        c.cleanup()


@contextlib.asynccontextmanager
async def in_process(info: BrokerInfo, store_url: str, client_id: str,
                     **ingest: Any) -> AsyncIterator[Ingest]:
    """An Ingest running in this event loop; stopped and drained on exit."""
    share_group = ingest.pop("share_group", "collectors")
    broker = BrokerConfig(
        host=info.host, port=info.collector_port, tls=True, ca_file=str(info.ca_file),
        username=info.collector.username, password=info.collector.password,
        client_id=client_id, keepalive_s=5, share_group=share_group,
    )
    settings = IngestConfig(**{"batch_size": 50, "retry_initial_s": 0.1, "retry_max_s": 1.0,
                               "stats_interval_s": 0.0, "key_refresh_s": 0.5, **ingest})
    store = await AsyncStore.open(store_url)
    ingest_ = Ingest(broker, settings, store)
    stop = asyncio.Event()
    task = asyncio.create_task(ingest_.run(stop))
    try:
        await asyncio.wait_for(ingest_.connected.wait(), 30)
        yield ingest_
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await store.close()


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/collector.db"


def one_probe_on_sqlite(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> tuple[TestProbe, MosquittoBroker, str]:
    """The common setup: one probe, a broker that knows it, a SQLite store it is enrolled in."""
    probe = TestProbe.new()
    broker = broker_factory(probe_ids=[probe.probe_id])
    url = sqlite_url(tmp_path)
    enrol(url, probe)
    return probe, broker, url


# ---- exactly once across collector crashes and restarts ------------------------------------------
@pytest.mark.slow
async def test_exactly_once_across_collector_kill_and_restart(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    probe, broker, url = one_probe_on_sqlite(tmp_path, broker_factory)
    envelopes = [probe.envelope() for _ in range(1500)]
    expected = {_mid(e) for e in envelopes}
    assert len(expected) == 1500

    # Folding often: the kill may well land inside a fold's transaction.
    async with collector_proc(tmp_path, broker.info, url, "c1", fold_interval_s=0.05) as c:
        c.start()
        await c.wait_connected()  # the persistent session (and subscription) now exists
        pub = asyncio.create_task(
            publish(broker.info, probe.probe_id, ((probe.topic, e) for e in envelopes))
        )
        await wait_for(lambda: count(url) >= 300, "first measurements")
        c.kill()  # SIGKILL mid-stream: whatever was in flight was not acknowledged
        after_kill = count(url)
        c.start()
        await c.wait_connected()
        await wait_for(lambda: count(url) >= 900, "more measurements")
        assert c.terminate() == 0  # graceful stop mid-stream: drains and acks
        c.start()
        await c.wait_connected()
        assert await asyncio.wait_for(pub, WAIT) == 1500
        await wait_for(lambda: count(url) >= 1500, "all 1500 measurements")
        await wait_for(lambda: folded(url)["rollup_day"] >= 1500, "all folded into rollups")
        await asyncio.sleep(1.0)  # nothing more may arrive
        assert c.terminate() == 0, c.log_text()
    assert 300 <= after_kill < 1500
    assert count(url) == 1500
    assert folded(url) == dict.fromkeys(("rollup_hour", "rollup_day", "rollup_month_domain"),
                                        1500)  # each once, across the kill
    assert stored_ids(url) == expected
    rej = rejections(url)
    assert set(rej) <= {"duplicate"}, rej  # redeliveries after the kill, nothing else


def _mid(envelope: bytes) -> str:
    record = json.loads(wire.parse_envelope(envelope).payload)
    return str(record["measurement_id"])


async def test_broker_restart_reconnects_and_loses_nothing(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    probe, broker, url = one_probe_on_sqlite(tmp_path, broker_factory)
    before = [probe.envelope() for _ in range(300)]
    after = [probe.envelope() for _ in range(300)]
    async with in_process(broker.info, url, "c1") as ingest:
        await publish(broker.info, probe.probe_id, [(probe.topic, e) for e in before])
        await asyncio.to_thread(broker.restart)  # graceful: sessions and queues are saved
        # Mosquitto 2.0.11 does not restore *shared* subscriptions from its persistence file:
        # until the collector re-subscribes, a publish finds no subscriber (PUBACK 0x10, which
        # the agent's publisher keeps and retries).  So publish once we are back.
        await wait_for(lambda: ingest.stats.connections >= 2 and ingest.connected.is_set(),
                       "the collector to reconnect", 30)
        await publish(broker.info, probe.probe_id, [(probe.topic, e) for e in after])
        await wait_for(lambda: count(url) == 600, "600 measurements")
    assert stored_ids(url) == {_mid(e) for e in before + after}
    assert set(rejections(url)) <= {"duplicate"}


async def test_plain_subscription_survives_a_broker_restart_while_collector_is_down(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    """A single collector with share_group = "" subscribes without $share; Mosquitto restores
    that subscription from persistence, so it queues for us across its own restart."""
    probe, broker, url = one_probe_on_sqlite(tmp_path, broker_factory)
    async with in_process(broker.info, url, "solo", share_group=""):
        pass  # creates the persistent session and its subscription
    await asyncio.to_thread(broker.restart)
    envelopes = [probe.envelope() for _ in range(100)]
    await publish(broker.info, probe.probe_id, [(probe.topic, e) for e in envelopes])
    async with in_process(broker.info, url, "solo", share_group=""):
        await wait_for(lambda: count(url) == 100, "the 100 queued while we were down")
    assert stored_ids(url) == {_mid(e) for e in envelopes}


# ---- database unavailable for a while ---------------------------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
async def test_postgres_unreachable_for_a_while_loses_nothing(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker], pg_url: str
) -> None:
    probe = TestProbe.new()
    broker = broker_factory(probe_ids=[probe.probe_id])
    enrol(pg_url, probe)
    target = urlsplit(pg_url)
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        via_proxy = target._replace(netloc=f"{target.username}@127.0.0.1:{proxy.port}").geturl()
        async with collector_proc(tmp_path, broker.info, via_proxy, "c1") as c:
            c.start()
            await c.wait_connected()
            first = [probe.envelope() for _ in range(200)]
            await publish(broker.info, probe.probe_id, ((probe.topic, e) for e in first))
            await wait_for(lambda: count(pg_url) == 200, "200 measurements")

            proxy.cut()  # the database disappears: connections reset, new ones refused
            during = [probe.envelope() for _ in range(300)]
            await publish(broker.info, probe.probe_id, ((probe.topic, e) for e in during))
            await asyncio.sleep(4.0)
            assert c.alive, c.log_text()
            assert count(pg_url) == 200  # nothing could be stored, nothing was acked
            proxy.restore()

            await wait_for(lambda: count(pg_url) == 500, "the 300 held back")
            await asyncio.sleep(1.0)
            assert c.terminate() == 0
            log = c.log_text()
    assert count(pg_url) == 500
    assert stored_ids(pg_url) == {_mid(e) for e in first + during}
    assert "store unavailable" in log
    assert set(rejections(pg_url)) <= {"duplicate"}


@pytest.mark.slow
async def test_sqlite_locked_for_a_while_loses_nothing(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    probe, broker, url = one_probe_on_sqlite(tmp_path, broker_factory)
    async with collector_proc(tmp_path, broker.info, url, "c1") as c:
        c.start()
        await c.wait_connected()
        blocker = sqlite3.connect(str(tmp_path / "collector.db"), isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the file
            held = [probe.envelope() for _ in range(300)]
            await publish(broker.info, probe.probe_id, ((probe.topic, e) for e in held))
            await asyncio.sleep(3.0)
            assert c.alive
            assert count(url) == 0
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_for(lambda: count(url) == 300, "the 300 held back")
        assert c.terminate() == 0
        log = c.log_text()
    assert stored_ids(url) == {_mid(e) for e in held}
    assert "store unavailable" in log


# ---- rejections, counted while the collector keeps serving --------------------------------------
async def test_every_rejection_is_counted_and_the_collector_keeps_serving(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    good, revoked, other, stranger = (TestProbe.new() for _ in range(4))
    broker = broker_factory(
        probe_ids=[good.probe_id, revoked.probe_id, other.probe_id, stranger.probe_id]
    )
    url = sqlite_url(tmp_path)
    enrol(url, good, revoked, other)  # `stranger` has broker credentials but no enrolled key
    s = open_store(url)
    s.revoke_probe(revoked.probe_id)
    s.close()
    info = broker.info

    valid_before = [good.envelope() for _ in range(5)]
    forger = TestProbe.new()
    bad: list[tuple[str, bytes]] = [
        # forged signature: good's record, signed by another key under good's keyid
        (good.topic, wire.sign_envelope(wire.encode_record(good.record()), forger.key,
                                        good.probe_id)),
        (good.topic, valid_before[0]),  # replayed envelope
        (good.topic, good.envelope(probe_id=other.probe_id)),  # claims another probe's id
        (good.topic, good.envelope(test_keys={"blob": "x" * 100_000})),  # oversized (> 50 kB)
        (good.topic, good.sign(b"{not json")),  # malformed JSON
        (good.topic, good.envelope(verdict={"status": "censored", "blocking": None,
                                            "reason": "", "confirmed": False})),
        # 1970 and no age told (a clock far ahead is stored: tests/integration/test_delivery.py)
        (good.topic, good.envelope(measurement_start_time="1970-01-01T00:00:00Z")),
        (good.topic, b"hello, not an envelope"),
        (good.status_topic, b'{"state": "online", "outbox": 0}'),
    ]
    valid_after = [good.envelope() for _ in range(5)]

    async with in_process(info, url, "c1", max_message_bytes=50_000) as ingest:
        await publish(info, good.probe_id, ((good.topic, e) for e in valid_before))
        await publish(info, good.probe_id, bad)
        await publish(info, revoked.probe_id, [(revoked.topic, revoked.envelope())])
        await publish(info, stranger.probe_id, [(stranger.topic, stranger.envelope())])
        await publish(info, good.probe_id, ((good.topic, e) for e in valid_after))
        await wait_for(lambda: count(url) == 10 and sum(rejections(url).values()) == 10,
                       "10 stored and 10 rejected")
        stats = ingest.stats
    expected = {
        "bad_signature": 1, "duplicate": 1, "probe_mismatch": 1, "oversized": 1,
        "malformed_json": 1, "schema_violation": 1, "stale_timestamp": 1,
        "malformed_envelope": 1, "revoked_key": 1, "unknown_key": 1,
    }
    assert rejections(url) == expected
    assert dict(stats.rejected) == expected
    assert stats.received == stats.acked == 21  # every message acknowledged, none lost
    assert stats.statuses == 1
    assert stored_ids(url) == {_mid(e) for e in valid_before + valid_after}
    store = open_store(url)
    try:
        quarantined = store.quarantined(100)
        seen = {a.probe_id: a for a in store.last_seen()}
    finally:
        store.close()
    # Every rejected message's bytes are kept, except the harmless replay (already stored).
    assert sorted(q.reason for q in quarantined) == sorted(set(expected) - {"duplicate"})
    oversized = next(q for q in quarantined if q.reason == "oversized")
    assert oversized.size > 100_000 and oversized.probe_id == good.probe_id
    assert seen[good.probe_id].status == "online" and seen[good.probe_id].measurements == 10

    # Everything was acknowledged: a collector resuming the session gets nothing again.
    async with in_process(info, url, "c1") as again:
        await asyncio.sleep(1.5)
        assert again.stats.received == 0
    assert sum(rejections(url).values()) == 10


# ---- several collectors share the load ------------------------------------------------------
async def test_two_collectors_share_the_load_exactly_once(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    probes = [TestProbe.new() for _ in range(4)]
    broker = broker_factory(probe_ids=[p.probe_id for p in probes])
    url = sqlite_url(tmp_path)
    enrol(url, *probes)
    envelopes = {p.probe_id: [p.envelope() for _ in range(100)] for p in probes}
    # c1 verifies on the event loop, c2 with a thread pool: both paths are covered (the
    # verification-process default is covered below).
    # Both fold the rollups, often, into one store.
    async with in_process(broker.info, url, "c1", verify_processes=0,
                          fold_interval_s=0.05) as a, \
            in_process(broker.info, url, "c2", verify_workers=2, fold_interval_s=0.05) as b:
        await asyncio.gather(*(
            publish(broker.info, p.probe_id, [(p.topic, e) for e in envelopes[p.probe_id]])
            for p in probes
        ))
        await wait_for(lambda: count(url) == 400, "400 measurements")
        await wait_for(lambda: folded(url)["rollup_day"] >= 400, "all folded into rollups")
        split = (a.stats.stored, b.stats.stored)
    assert sum(split) == 400 and min(split) > 0, split
    assert folded(url) == dict.fromkeys(("rollup_hour", "rollup_day", "rollup_month_domain"),
                                        400)
    assert stored_ids(url) == {_mid(e) for es in envelopes.values() for e in es}
    assert rejections(url) == {}


async def test_newly_enrolled_probe_is_accepted_without_restart(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    early, late = TestProbe.new(), TestProbe.new()
    broker = broker_factory(probe_ids=[early.probe_id, late.probe_id])
    url = sqlite_url(tmp_path)
    enrol(url, early)
    async with in_process(broker.info, url, "c1", key_refresh_s=60.0):
        enrol(url, late)  # enrolled while the collector runs
        await publish(broker.info, late.probe_id, [(late.topic, late.envelope())])
        await wait_for(lambda: count(url) == 1, "the new probe's measurement")
    assert rejections(url) == {}


def test_store_is_reachable_helper(tmp_path: Path) -> None:
    """The helpers above read what the collector wrote (guards against silent zero counts)."""
    url = sqlite_url(tmp_path)
    p = TestProbe.new()
    enrol(url, p)
    store: Store = open_store(url)
    try:
        assert store.list_probes()[0].probe_id == p.probe_id
    finally:
        store.close()
    assert count(url) == 0 and rejections(url) == {} and stored_ids(url) == set()


# ---- verification in a worker process -----------------------------------------------------------
async def test_verification_process_stores_exactly_once_and_rejects_forgery(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    probe, broker, url = one_probe_on_sqlite(tmp_path, broker_factory)
    forger = TestProbe.new()
    good = [probe.envelope() for _ in range(120)]
    forged = wire.sign_envelope(wire.encode_record(probe.record()), forger.key, probe.probe_id)
    items = [(probe.topic, e) for e in good[:60]] + [(probe.topic, forged)]
    items += [(probe.topic, e) for e in good[60:]] + [(probe.topic, good[0])]  # + a replay
    async with in_process(broker.info, url, "c1", verify_processes=1) as ingest:
        procs = ingest._verify_procs
        assert procs is not None  # the batches really went to a worker process
        await publish(broker.info, probe.probe_id, items)
        await wait_for(lambda: count(url) == 120 and sum(rejections(url).values()) == 2,
                       "120 stored and 2 rejected")
        stats = ingest.stats
        assert len(procs._processes) == 1  # the pool's one worker
    assert rejections(url) == {"bad_signature": 1, "duplicate": 1}
    assert stored_ids(url) == {_mid(e) for e in good}
    assert stats.received == stats.acked == 122
    assert ingest._verify_procs is None  # shut down with the ingest


async def test_dead_verification_process_loses_nothing(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker], caplog: pytest.LogCaptureFixture
) -> None:
    """A worker killed mid-run: its batches are verified on the event loop, a new pool starts,
    and every measurement is stored once (and the forgery still rejected)."""
    probe, broker, url = one_probe_on_sqlite(tmp_path, broker_factory)
    forger = TestProbe.new()
    first = [probe.envelope() for _ in range(50)]
    later = [probe.envelope() for _ in range(50)]
    forged = wire.sign_envelope(wire.encode_record(probe.record()), forger.key, probe.probe_id)
    async with in_process(broker.info, url, "c1", verify_processes=1) as ingest:
        await publish(broker.info, probe.probe_id, [(probe.topic, e) for e in first])
        await wait_for(lambda: count(url) == 50, "the first 50")
        pool = ingest._verify_procs
        assert pool is not None
        workers = list(pool._processes.values())
        for w in workers:
            assert w.pid is not None
            os.kill(w.pid, signal.SIGKILL)
        await wait_for(lambda: not any(w.is_alive() for w in workers), "the worker to die", 10)
        await publish(broker.info, probe.probe_id,
                      [(probe.topic, forged)] + [(probe.topic, e) for e in later])
        await wait_for(lambda: count(url) == 100 and rejections(url) == {"bad_signature": 1},
                       "100 stored and the forgery rejected")
        replaced = ingest._verify_procs
        stats = ingest.stats
    assert replaced is not None and replaced is not pool
    assert "verification process died" in caplog.text
    assert stored_ids(url) == {_mid(e) for e in first + later}
    assert stats.received == stats.acked == 101


def _descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{todo.pop()}/task").iterdir():
                kids = [int(c) for c in (task / "children").read_text().split()]
                out.update(kids)
                todo += kids
    return out


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


async def test_verification_workers_exit_when_the_collector_is_killed(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    """SIGKILL gives the collector no chance to shut its pool down: the workers (its child
    processes) must notice and exit rather than wait for work forever."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to find the collector's child processes")
    probe, broker, url = one_probe_on_sqlite(tmp_path, broker_factory)
    async with collector_proc(tmp_path, broker.info, url, "c1", verify_processes=1) as c:
        c.start()
        await c.wait_connected()
        assert c.proc is not None
        await wait_for(lambda: "verifying signatures in 1 worker" in c.log_text(),
                       "the verification worker", 30)
        children = _descendants(c.proc.pid)
        assert children  # the spawned worker
        await publish(broker.info, probe.probe_id, [(probe.topic, probe.envelope())])
        await wait_for(lambda: count(url) == 1, "the measurement")
        c.kill()
        try:
            await wait_for(lambda: all(_gone(p) for p in children), "the workers to exit", 15)
        finally:
            for pid in children:  # never leave them behind, even if the test fails
                with contextlib.suppress(OSError):
                    if not _gone(pid):
                        os.kill(pid, signal.SIGKILL)


async def test_sigterm_to_the_whole_group_drains_with_the_worker(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    """systemd's stop signals every process of the service: the worker must outlive the
    collector's drain (no broken pool), and nothing is lost across the restart."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs /proc to find the collector's child processes")
    probe, broker, url = one_probe_on_sqlite(tmp_path, broker_factory)
    envelopes = [probe.envelope() for _ in range(300)]
    async with collector_proc(tmp_path, broker.info, url, "c1", verify_processes=1) as c:
        c.start()
        await c.wait_connected()
        assert c.proc is not None
        await wait_for(lambda: "verifying signatures in 1 worker" in c.log_text(),
                       "the verification worker", 30)
        group = [c.proc.pid, *_descendants(c.proc.pid)]
        await publish(broker.info, probe.probe_id, [(probe.topic, e) for e in envelopes])
        for pid in group:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        assert c.proc.wait(30) == 0, c.log_text()
        assert "verification process died" not in c.log_text()
        await wait_for(lambda: all(_gone(p) for p in group), "the worker to exit", 15)
        c.start()  # the rest (if any) was left unacknowledged: the broker redelivers it
        await c.wait_connected()
        await wait_for(lambda: count(url) == 300, "all 300 measurements")
    assert stored_ids(url) == {_mid(e) for e in envelopes}
