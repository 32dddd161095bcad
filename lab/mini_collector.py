"""A minimal collector for publisher tests and the outbox benchmark: persistent session, shared
subscription, verifies every message."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.identity import Identity
from agent.wire import envelope as wire
from agent.wire.topics import (
    COLLECTOR_MEASUREMENTS_FILTER,
    DEFAULT_SHARE_GROUP,
    shared,
    topic_parts,
)
from lab.broker import BrokerInfo

SHARED = shared(DEFAULT_SHARE_GROUP, COLLECTOR_MEASUREMENTS_FILTER)
V5 = aiomqtt.ProtocolVersion.V5


class Collector:
    """A minimal collector: persistent session, shared subscription, verifies every message.

    Reconnects (bounded by the test's stop) so it rides out broker restarts.
    """

    def __init__(self, info: BrokerInfo, keys: dict[str, Identity], client_id: str = "tc1"):
        self.info = info
        self.keys = keys
        self.client_id = client_id
        self.received: Counter[str] = Counter()
        self.by_topic: Counter[str] = Counter()
        self.bad: list[str] = []
        self.subscribed = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)

    async def _run(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        for _ in range(400):
            if self._stop.is_set():
                return
            client = aiomqtt.Client(
                self.info.host, self.info.collector_port,
                username=self.info.collector.username, password=self.info.collector.password,
                tls_context=self.info.tls_context(), protocol=V5, identifier=self.client_id,
                clean_start=False, properties=props, timeout=5,
            )
            try:
                async with client:
                    await client.subscribe(SHARED, qos=1)
                    self.subscribed.set()
                    stop = asyncio.create_task(self._stop.wait())
                    try:
                        it = client.messages.__aiter__()
                        while not self._stop.is_set():
                            nxt = asyncio.ensure_future(it.__anext__())
                            done, _ = await asyncio.wait({nxt, stop}, return_when="FIRST_COMPLETED")
                            if nxt not in done:
                                nxt.cancel()
                                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                                    await nxt
                                break
                            self._check(nxt.result())
                    finally:
                        stop.cancel()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)
            finally:
                for name in ("_connected", "_disconnected"):
                    fut = getattr(client, name)
                    if fut.done() and not fut.cancelled():
                        fut.exception()

    def _check(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        self.by_topic[topic] += 1
        parts = topic_parts(topic)
        probe_id = parts[0] if parts else ""
        payload = message.payload
        assert isinstance(payload, bytes | bytearray)
        try:
            env = wire.parse_envelope(bytes(payload))
            ident = self.keys[probe_id]
            record = json.loads(wire.verify_envelope(env, ident.public_key, ident.probe_id))
            wire.validate_record(record)
            assert record["probe_id"] == probe_id
            self.received[record["measurement_id"]] += 1
        except Exception as exc:  # collected, asserted by the tests
            self.bad.append(f"{topic}: {exc!r}")


