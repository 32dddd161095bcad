"""MQTT ingest: receive, verify, store, and only then acknowledge.

    broker --PUBLISH--> paho (manual ack) --> batch --> verify: envelope, key (event loop)
                                                        -> Ed25519 (a worker process, loop, threads)
                                                        -> payload, schema (event loop)
           <--PUBACK--- ack after commit  <-- store (store thread, one transaction per batch)

Guarantees:

* **Nothing is acknowledged before it is durably stored.**  aiomqtt 2.x acknowledges every
  QoS 1 message as soon as it is read; paho, underneath, has a manual-ack mode
  (``manual_ack_set``/``ack``).  aiomqtt exposes no public handle to it, so :func:`paho_of`
  reaches the ``_client`` attribute (checked at start-up, with a clear error if aiomqtt ever
  renames it).  A verified-or-rejected batch is committed (measurements, statuses, rejection
  counters and quarantined bytes in one transaction) and its messages acknowledged after.
* **Exactly once in the store**: a crash between commit and PUBACK makes the broker redeliver
  (persistent session: ``clean_start`` false, ``SessionExpiryInterval``), and the store drops
  the repeat by ``measurement_id``.  Acks are sent only on the connection the message came in
  on; after a reconnect the broker redelivers and the repeat is acknowledged instead (acking a
  stale packet id could acknowledge a different, unstored message).
* **Database down**: the batch is retried with backoff and nothing is acknowledged; the
  pipeline fills, we stop taking messages, and the broker holds the rest (it sends at most
  Receive Maximum unacknowledged messages).  The collector keeps its broker session alive.
* **Receipts after the commit** (agent.wire.receipts, collector.ingest.receipts): a probe
  that asks for them learns which of its records are stored (duplicates included) or refused
  and why, on ``vigil/v1/probes/{id}/receipts``; its outbox keeps every record until then, so
  a broker that crashes before saving its queues loses nothing.  Each collector of the shared
  subscription answers for the messages it committed.
* **Bad messages never stop the ingest**: every rejection has a reason, is counted and its raw
  bytes quarantined (collector.ingest.verify), then acknowledged like any stored message.

Load is shared between collector processes by the MQTT v5 shared subscription
``$share/<group>/vigil/v1/probes/+/measurements``; each process needs its own client id.
On a multi-core machine the Ed25519 calls run by default in one worker process
(``IngestConfig.verify_processes``): a collector is then one process plus one verify worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
import ssl
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import ConfigError, VigilError
from agent.wire import receipts
from agent.wire.topics import (
    COLLECTOR_MEASUREMENTS_FILTER,
    COLLECTOR_STATUS_FILTER,
    measurements_topic,
    shared,
    topic_parts,
)
from collector.config import BrokerConfig, IngestConfig
from collector.ingest import receipts as ingest_receipts
from collector.ingest.intake import IntakeQueue, inflight_window
from collector.ingest.verify import (
    Accepted,
    KeyTable,
    Outcome,
    Prepared,
    Reason,
    Rejected,
    Signed,
    StatusReceived,
    Verifier,
    crypto_jobs,
    crypto_results,
    init_verify_worker,
    verify_jobs,
)
from collector.store.aio import AsyncStore
from collector.store.base import (
    IngestBatch,
    InsertResult,
    QuarantineItem,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger("vigil.collector.ingest")

UNKNOWN_RECHECK_S = 30.0
GROUP_COMMIT_BATCHES = 4  # at most this many queued batches share one transaction
FOLD_STEPS_PER_TICK = 20  # bounded folds back to back while catching up a backlog


NO_REQUEST = receipts.Request(None, None, None)  # a message without our user properties


class IngestError(VigilError):
    """The ingest cannot run at all (bad credentials, refused subscription)."""


def paho_of(client: aiomqtt.Client) -> paho.Client:
    """The paho client under an aiomqtt client: the only way to manual acknowledgements."""
    inner = getattr(client, "_client", None)
    if not isinstance(inner, paho.Client) or not hasattr(inner, "manual_ack_set"):
        raise IngestError("this aiomqtt version hides its paho client: cannot ack manually")
    return inner


def tls_context(cfg: BrokerConfig) -> ssl.SSLContext | None:
    if not cfg.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=cfg.ca_file)
        if cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"broker TLS files: {exc}") from None
    return ctx


@dataclass
class IngestStats:
    """Counters since start; ``rejected`` by reason (duplicates included)."""

    received: int = 0
    stored: int = 0
    statuses: int = 0
    acked: int = 0
    batches: int = 0
    store_retries: int = 0
    connections: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    last_error: str = ""
    receipts: int = 0  # receipt messages published to probes (after the commit)
    receipts_skipped: int = 0  # not published: the broker connection was gone (probe resends)
    placed: Counter[str] = field(default_factory=Counter)  # start times moved (wrong clocks)

    def line(self) -> str:
        rej = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items())) or "none"
        placed = ", ".join(f"{k}={v}" for k, v in sorted(self.placed.items())) or "none"
        return (
            f"received={self.received} stored={self.stored} statuses={self.statuses} "
            f"acked={self.acked} batches={self.batches} store_retries={self.store_retries} "
            f"connections={self.connections} receipts={self.receipts} rejected: {rej} "
            f"placed: {placed}"
        )


@dataclass(frozen=True, slots=True)
class _Msg:
    topic: str
    payload: bytes
    mid: int
    qos: int
    request: receipts.Request = NO_REQUEST  # what its user properties asked for


@dataclass(slots=True)
class _Pending:
    generation: int
    messages: list[_Msg]
    prepared: list[Prepared]
    signatures: asyncio.Future[list[bytes | None]]  # crypto stage, maybe on another thread
    received: float


def _split(outcomes: list[Outcome]) -> IngestBatch:
    rows, statuses, rejections = [], [], []
    for o in outcomes:
        if isinstance(o, Accepted):
            rows.append(o.row)
        elif isinstance(o, StatusReceived):
            statuses.append(o.update)
        else:
            rejections.append(o.item)
    return IngestBatch(measurements=rows, statuses=statuses, rejections=rejections)


class Ingest:
    """One collector process's ingest loop.  ``await run(stop)`` until ``stop`` is set."""

    def __init__(self, broker: BrokerConfig, ingest: IngestConfig, store: AsyncStore) -> None:
        self.broker = broker
        self.cfg = ingest
        self.store = store
        self.keys = KeyTable()
        self.verifier = Verifier(self.keys, ingest.policy())
        self.stats = IngestStats()
        self.stats.placed = self.verifier.placed  # one counter, kept by the verifier
        self._generation = 0
        self._paho: paho.Client | None = None  # the current connection's client
        self._queue = IntakeQueue(self.stats.rejected)
        # Unacknowledged messages the broker may send us (bounded in bytes); a batch takes at
        # most half of it, so one batch fills while the previous one is verified and stored.
        self._window = inflight_window(
            broker.receive_maximum, ingest.max_inflight_bytes, ingest.max_message_bytes
        )
        self._batch_limit = max(1, min(ingest.batch_size, self._window // 2))
        self._pipeline: asyncio.Queue[_Pending | None] = asyncio.Queue(ingest.pipeline_depth)
        self._verify_pool = (
            ThreadPoolExecutor(ingest.verify_workers, thread_name_prefix="vigil-verify")
            if ingest.verify_workers > 0
            else None
        )
        self._verify_processes = ingest.verify_process_count()
        self._verify_procs: ProcessPoolExecutor | None = None  # started by run()
        self._keys_loaded_at = 0.0
        self._unknown: dict[str, float] = {}  # probe id -> when a reload confirmed it unknown
        self._failed: set[str] = set()  # accepted ids the store refused in the current batch
        self.connected = asyncio.Event()  # set while subscribed (tests and health checks)

    # ---- public -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until ``stop`` is set, then store and acknowledge what is in flight."""
        await self._initial_keys(stop)
        await self._start_verify_processes()
        writer = asyncio.create_task(self._writer(), name="vigil-ingest-writer")
        refresher = asyncio.create_task(self._refresh_keys(stop), name="vigil-key-refresh")
        reporter = asyncio.create_task(self._report(stop), name="vigil-ingest-stats")
        folder = asyncio.create_task(self._fold(stop), name="vigil-rollup-folder")
        try:
            await self._connections(stop, writer)
        finally:
            await self._finish(writer)  # no-op when done while still connected
            for task in (refresher, reporter, folder, writer):
                task.cancel()
            await asyncio.gather(refresher, reporter, folder, writer, return_exceptions=True)
            if self._verify_pool is not None:
                self._verify_pool.shutdown(wait=True)
            if self._verify_procs is not None:
                self._verify_procs.shutdown(wait=True, cancel_futures=True)
                self._verify_procs = None
            log.info("ingest stopped: %s", self.stats.line())

    async def _finish(self, writer: asyncio.Task[None]) -> None:
        """Store (and, if still connected, acknowledge) everything in the pipeline."""
        if writer.done():
            return
        try:
            async with asyncio.timeout(self.cfg.drain_timeout_s):
                await self._pipeline.put(None)
                await asyncio.shield(writer)
        except TimeoutError:
            log.warning("shutdown: the store did not take the last batches in time; the "
                        "broker keeps them and will redeliver")
            writer.cancel()

    # ---- keys ---------------------------------------------------------------------------
    async def _initial_keys(self, stop: asyncio.Event) -> None:
        delay = self.cfg.retry_initial_s
        while not stop.is_set():
            try:
                await self._load_keys()
                return
            except StoreError as exc:
                log.warning("cannot load enrolled keys (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, self.cfg.retry_max_s)

    async def _load_keys(self) -> None:
        probes = await self.store.call(self.store.store.list_probes)
        self.keys.load(probes)
        self._keys_loaded_at = time.monotonic()

    async def _refresh_keys(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.key_refresh_s)
            try:
                await self._load_keys()
            except StoreError as exc:
                log.warning("key refresh failed (%s); keeping the previous keys", exc)

    async def _keys_for(self, messages: list[_Msg]) -> None:
        """A message from a probe we do not know: maybe it was enrolled a moment ago.

        Reload the keys (at most once a second) before verifying, so a new probe's first
        measurements are not quarantined as ``unknown_key``.  An id still unknown after a
        reload is not waited for again for UNKNOWN_RECHECK_S: a flood from a non-enrolled
        probe cannot slow the ingest down.
        """
        now = time.monotonic()
        fresh: set[str] = set()
        for m in messages:
            parts = topic_parts(m.topic)
            if (
                parts is not None
                and parts[0] not in self.keys
                and now - self._unknown.get(parts[0], -UNKNOWN_RECHECK_S) >= UNKNOWN_RECHECK_S
            ):
                fresh.add(parts[0])
        if not fresh:
            return
        wait = self._keys_loaded_at + 1.0 - now
        if wait > 0:
            await asyncio.sleep(wait)
        with contextlib.suppress(StoreError):
            await self._load_keys()
        if len(self._unknown) > 10_000:
            self._unknown.clear()
        checked = time.monotonic()
        for probe_id in fresh:
            if probe_id not in self.keys:
                self._unknown[probe_id] = checked

    # ---- broker -------------------------------------------------------------------------
    def _client(self) -> aiomqtt.Client:
        b = self.broker
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = b.session_expiry_s
        # Bounded in bytes (collector.ingest.intake): the broker sends at most this many
        # unacknowledged messages (each at most its message_size_limit), and no QoS 0
        # measurement is queued.
        props.ReceiveMaximum = self._window
        self._queue = IntakeQueue(self.stats.rejected)
        queue = self._queue
        return aiomqtt.Client(
            b.host,
            b.port,
            username=b.username,
            password=b.resolved_password(),
            identifier=b.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,  # resume the session: unacked and queued messages survive
            properties=props,
            keepalive=b.keepalive_s,
            tls_context=tls_context(b),
            timeout=b.connect_timeout_s,
            # aiomqtt builds its message queue as queue_type(maxsize=...): hand it ours, so a
            # batch is drained with get_nowait() rather than one awaited task per message.
            queue_type=cast(Any, lambda maxsize=0: queue),
        )

    async def _connections(self, stop: asyncio.Event, writer: asyncio.Task[None]) -> None:
        delay = self.cfg.retry_initial_s
        while not stop.is_set():
            if writer.done():
                writer.result()  # a writer crash is a bug: surface it
                raise IngestError("store writer stopped")
            client = self._client()
            try:
                inner = paho_of(client)
                inner.manual_ack_set(True)
                async with client:
                    self._generation += 1
                    self._paho = inner
                    self.stats.connections += 1
                    delay = self.cfg.retry_initial_s
                    await self._subscribe(client)
                    log.info("connected to %s:%d as %s (session resumed or new)",
                             self.broker.host, self.broker.port, self.broker.client_id)
                    self.connected.set()
                    await self._consume(client, stop, writer)
                    await self._finish(writer)  # stopping: ack what gets stored, then leave
                    self.connected.clear()
            except aiomqtt.MqttCodeError as exc:
                self._lost(f"broker connection: {exc}")
            except aiomqtt.MqttError as exc:
                self._lost(f"broker connection: {exc}")
            if stop.is_set():
                return
            jittered = delay * (0.5 + random.random())
            log.info("reconnecting in %.1fs", jittered)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), jittered)
            delay = min(delay * 2, self.cfg.retry_max_s)

    def _lost(self, why: str) -> None:
        self.connected.clear()
        self._paho = None
        self.stats.last_error = why
        log.warning("%s", why)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        group = self.broker.share_group
        for topic_filter in (COLLECTOR_MEASUREMENTS_FILTER, COLLECTOR_STATUS_FILTER):
            codes = await client.subscribe(shared(group, topic_filter), qos=1)
            for code in codes:
                value = getattr(code, "value", code)
                if not isinstance(value, int) or value > 2:
                    raise IngestError(f"broker refused subscription {topic_filter}: {code}")
                if value < 1:
                    raise IngestError(f"broker downgraded {topic_filter} to QoS 0")

    async def _consume(
        self, client: aiomqtt.Client, stop: asyncio.Event, writer: asyncio.Task[None]
    ) -> None:
        loop = asyncio.get_running_loop()
        messages = client.messages
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                nxt = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({nxt, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await nxt
                    return
                batch = [self._msg(nxt.result())]
                await self._fill(batch)
                self.stats.received += len(batch)
                await self._keys_for(batch)
                now = time.time()
                prepared = self.verifier.prepare_batch(
                    [(m.topic, m.payload) for m in batch], now, [m.request.age_s for m in batch]
                )
                signed = [p for p in prepared if isinstance(p, Signed)]
                fut: asyncio.Future[list[bytes | None]]
                if self._verify_procs is not None and signed:  # IngestConfig.verify_processes
                    fut = asyncio.ensure_future(self._verify_in_process(self._verify_procs, signed))
                elif self._verify_pool is None:  # inline: see IngestConfig.verify_workers
                    fut = loop.create_future()
                    fut.set_result(self.verifier.crypto(signed))
                else:  # only the Ed25519 calls leave the event loop (they release the GIL)
                    fut = loop.run_in_executor(self._verify_pool, self.verifier.crypto, signed)
                await self._submit(_Pending(self._generation, batch, prepared, fut, now), writer)
        finally:
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping

    # ---- verification processes ---------------------------------------------------------
    def _new_process_pool(self) -> ProcessPoolExecutor:
        """Spawned workers: not fork (this process has threads and a loop), not forkserver
        (systemd's SIGTERM to the whole group would kill the server, and with it the pool's
        view of its workers, while the collector drains; spawned workers ignore it)."""
        return ProcessPoolExecutor(
            self._verify_processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_verify_worker,
            initargs=(os.getpid(),),  # the worker exits with this process, even on SIGKILL
        )

    async def _start_verify_processes(self) -> None:
        """Start (and warm up) the verification processes before the first batch arrives;
        if they cannot start, verify on the event loop instead."""
        if self._verify_processes <= 0 or self._verify_procs is not None:
            return
        pool = self._new_process_pool()
        loop = asyncio.get_running_loop()
        try:  # one call per worker: each submit starts at most one process
            await asyncio.gather(*(loop.run_in_executor(pool, verify_jobs, [])
                                   for _ in range(self._verify_processes)))
        except Exception as exc:
            log.error("cannot start verification processes (%r): verifying on the event loop",
                      exc)
            pool.shutdown(wait=False, cancel_futures=True)
            return
        self._verify_procs = pool
        log.info("verifying signatures in %d worker process(es)", self._verify_processes)

    async def _verify_in_process(
        self, pool: ProcessPoolExecutor, signed: list[Signed]
    ) -> list[bytes | None]:
        """The crypto stage of one batch in a worker process: one pickle each way.

        A worker that dies (killed, out of memory) breaks the pool: this batch is then
        verified here on the event loop, so nothing is lost or acknowledged early, and a new
        pool is started for the next batches.
        """
        jobs = crypto_jobs(signed)
        try:
            ok = await asyncio.get_running_loop().run_in_executor(pool, verify_jobs, jobs)
            return crypto_results(signed, ok)
        except BrokenProcessPool as exc:
            if self._verify_procs is pool:
                log.error("a verification process died (%s): verifying its batches on the "
                          "event loop and starting a new pool", exc)
                pool.shutdown(wait=False, cancel_futures=True)
                self._verify_procs = self._new_process_pool()
        except Exception as exc:  # e.g. a pickling failure: a bug, but the batch must go on
            log.exception("verification process failed (%r): verifying on the event loop", exc)
        return self.verifier.crypto(signed)

    async def _submit(self, pending: _Pending, writer: asyncio.Task[None]) -> None:
        """Queue a batch for the writer (waiting while the pipeline is full), unless the
        writer died: then fail loudly instead of waiting forever."""
        put = asyncio.ensure_future(self._pipeline.put(pending))
        await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
        if writer.done():
            exc = None if writer.cancelled() else writer.exception()
            raise IngestError(f"the store writer stopped: {exc!r}") from exc

    @staticmethod
    def _msg(m: aiomqtt.Message) -> _Msg:
        payload = m.payload if isinstance(m.payload, bytes) else bytes(cast(Any, m.payload))
        props = getattr(m.properties, "UserProperty", None) if m.properties else None
        if not props:
            return _Msg(m.topic.value, payload, m.mid, m.qos)
        return _Msg(m.topic.value, payload, m.mid, m.qos, receipts.request_from(props))

    async def _fill(self, batch: list[_Msg]) -> None:
        """Add whatever has already arrived, waiting at most batch_wait_ms for more."""
        queue = self._queue
        limit = self._batch_limit
        deadline = time.monotonic() + self.cfg.batch_wait_ms / 1000
        while True:
            while len(batch) < limit:
                try:
                    batch.append(self._msg(queue.get_nowait()))
                except asyncio.QueueEmpty:
                    break
            left = deadline - time.monotonic()
            if len(batch) >= limit or left <= 0:
                return
            await asyncio.sleep(min(0.002, left))

    # ---- store --------------------------------------------------------------------------
    async def _writer(self) -> None:
        """Store batches in arrival order, then ack them.

        Group commit: batches that queued up while the previous commit ran are written in one
        transaction (one fsync), so a slow disk or a busy machine makes batches bigger rather
        than the queue longer.
        """
        done = False
        while not done:
            first = await self._pipeline.get()
            if first is None:
                return
            group = [first]
            limit = self.cfg.batch_size * GROUP_COMMIT_BATCHES
            total = len(first.messages)
            while total < limit:
                try:
                    nxt = self._pipeline.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    done = True
                    break
                group.append(nxt)
                total += len(nxt.messages)
            outcomes: list[Outcome] = []
            for pending in group:
                signatures = await pending.signatures
                outcomes += self.verifier.finish_batch(
                    pending.prepared, signatures, pending.received
                )
            if outcomes:
                self._failed = set()
                result = await self._store(_split(outcomes))
                self._count(outcomes, result)
                self._receipts(group, outcomes, result)
            for pending in group:
                self._ack(pending)

    async def _store(self, batch: IngestBatch) -> InsertResult:
        """Commit the batch, retrying with backoff while the database is unavailable.

        An error that is not an outage (the database refused the data) is isolated row by
        row, so one poisoned measurement is quarantined (``internal_error``) instead of
        blocking everything behind it.
        """
        delay = self.cfg.retry_initial_s
        store = self.store.store
        while True:
            try:
                try:
                    return await self.store.call(store.write_batch, batch)
                except StoreUnavailable:
                    raise
                except StoreError as exc:
                    log.error("store refused a batch (%s); isolating the bad rows", exc)
                    return await self._store_isolating(batch)
            except StoreError as exc:
                kind = "unavailable" if isinstance(exc, StoreUnavailable) else "failed"
                self.stats.store_retries += 1
                self.stats.last_error = str(exc)
                log.warning("store %s (%s): %d messages kept unacknowledged, retry in %.1fs",
                            kind, exc, len(batch.measurements) + len(batch.rejections)
                            + len(batch.statuses), delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.cfg.retry_max_s)

    async def _store_isolating(self, batch: IngestBatch) -> InsertResult:
        store = self.store.store
        await self.store.call(
            store.write_batch, IngestBatch(statuses=batch.statuses, rejections=batch.rejections)
        )
        new = 0
        dups: list[str] = []
        conflicts: list[str] = []
        for row in batch.measurements:
            try:
                r = await self.store.call(store.write_batch, IngestBatch(measurements=[row]))
            except StoreUnavailable:
                raise
            except StoreError as exc:
                self._failed.add(row.measurement_id)
                self.stats.rejected[str(Reason.INTERNAL_ERROR)] += 1
                await self.store.call(store.write_batch, IngestBatch(rejections=[
                    QuarantineItem(str(Reason.INTERNAL_ERROR), f"store refused the row: {exc}",
                                   measurements_topic(row.probe_id),
                                   row.payload, row.received_ts, row.probe_id)
                ]))
                continue
            new += r.new
            dups += r.duplicates
            conflicts += r.conflicts
        return InsertResult(new=new, duplicates=tuple(dups), conflicts=tuple(conflicts))

    def _count(self, outcomes: list[Outcome], result: InsertResult) -> None:
        s = self.stats
        s.batches += 1
        s.stored += result.new
        for o in outcomes:
            if isinstance(o, Rejected):
                s.rejected[o.reason] += 1
            elif isinstance(o, StatusReceived):
                s.statuses += 1
        if result.duplicates:
            s.rejected["duplicate"] += len(result.duplicates)

    def _receipts(
        self, group: list[_Pending], outcomes: list[Outcome], result: InsertResult
    ) -> None:
        """Tell each probe what of this committed batch is stored (agent.wire.receipts).

        Published before the PUBACKs; sent on the current connection even for messages that
        came on an earlier one (they are committed all the same).  Fire and forget at QoS 1:
        a receipt that is lost makes the probe send the record again, and the duplicate gets
        a receipt.
        """
        answered = [ingest_receipts.Answered(m.topic, m.request)
                    for pending in group for m in pending.messages]
        built = ingest_receipts.build(answered, outcomes, conflicts=set(result.conflicts),
                                      failed=self._failed, by=self.broker.client_id)
        if not built:
            return
        client = self._paho
        for topic, receipt in built.items():
            for part in receipts.split(receipt):
                if client is None:
                    self.stats.receipts_skipped += 1
                    continue
                client.publish(topic, receipts.encode(part), qos=1)
                self.stats.receipts += 1

    def _ack(self, pending: _Pending) -> None:
        """PUBACK in arrival order, only on the connection the messages came from."""
        client = self._paho
        if client is None or pending.generation != self._generation:
            return  # the broker redelivers these; the store will see them as duplicates
        for m in pending.messages:
            if m.qos > 0:
                client.ack(m.mid, m.qos)
        self.stats.acked += len(pending.messages)

    async def _fold(self, stop: asyncio.Event) -> None:
        """Fold what was stored into the aggregation rollups every ``fold_interval_s``.

        The ingest's transactions only store measurements; this adds them to the rollups in
        larger batches, in SQL, each fold one transaction with its watermark
        (``Store.fold_rollups``), on the store thread between two batches.  A backlog (a
        restart, another collector's rows) is folded in bounded steps, batches in between.
        A failed fold is retried at the next tick: the rows wait after the watermark, and
        answers count them from there meanwhile.
        """
        interval = self.cfg.fold_interval_s
        if interval <= 0:
            return
        store = self.store.store
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            for _ in range(FOLD_STEPS_PER_TICK):
                try:
                    left = await self.store.call(store.fold_rollups)
                except StoreError as exc:
                    log.warning("folding into the rollups failed (%s); retrying in %.1fs",
                                exc, interval)
                    break
                if left == 0:
                    break

    async def _report(self, stop: asyncio.Event) -> None:
        interval = self.cfg.stats_interval_s
        if interval <= 0:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            log.info("ingest: %s", self.stats.line())
