"""Drain the outbox to the broker: MQTT v5, QoS 1, TLS, persistent session, in order.

**Receipts** (``receipts = true``, the default; contract in agent.wire.receipts): a success
PUBACK only marks a row *sent*; the row leaves the outbox when a collector's receipt on
``vigil/v1/probes/{id}/receipts`` says it is stored (or refused for good).  A sent row without
a receipt after ``receipt_timeout`` (doubling per send, at most ``receipt_timeout_max``) is
published again, so a broker that crashed before saving its queue, or dropped messages over
``max_queued_messages``, loses nothing.  ``receipts = false`` is for a collector older than
receipts: then a success PUBACK deletes the row, as described below.  Without the switch, an
outbox that has never had any answer from a collector falls back to that after
``receipt_fallback`` (24 h) from a row's first send (Outbox.mark_sent).

Without receipts a row leaves the outbox when the broker acknowledged it with a *success*
PUBACK.  aiomqtt
waits for PUBACKs but throws their MQTT v5 reason code away, and a refusal (135 not authorised,
149 packet too large, 151 quota exceeded, ...) looks like success.  paho-mqtt does hand the
code to its ``on_publish(client, userdata, mid, reason_code, properties)`` callback (callback
API v2), so :class:`MqttSession` publishes through the paho client under aiomqtt and keeps a
future per message id that the callback resolves with the code:

* code < 0x80: delivered; the row is deleted (in batches, one fsync per batch);
* 0x10 "no matching subscribers": the broker accepted it and will drop it (no collector
  session exists).  Kept and offered again later, counted as ``unrouted``;
* code >= 0x80: refused.  Kept, counted, backed off (agent.uplink.outbox.refusal_backoff) so it does
  not block the rows behind it;
* no PUBACK (connection lost, timeout): kept, counted as a publish error; reconnect.

Mosquitto 2.0.11 answers a publish over ``message_size_limit`` with PUBACK reason code 0x95
(packet too large), which MQTT v5 does not allow in a PUBACK; paho then rejects the packet as
malformed and drops the connection, so the refusal would turn into an endless reconnect
loop on the same message.  :class:`MqttSession` records such out-of-spec codes before paho
decodes the packet (and hands paho "0x80 unspecified error" instead), so the refusal is seen as
what it is.  The publisher also refuses locally anything over ``max_message_bytes`` without
sending it.

Connection: client id and username = probe id (the broker forces the client id to the
username anyway), ``clean_start=False`` with a ``SessionExpiryInterval``, Last Will
``{"state": "offline"}`` retained on the status topic, ``{"state": "online", ...}`` with
counters published retained after connecting and every ``status_interval``.  Reconnects back
off exponentially with jitter so a thousand probes coming back after a shutdown do not
reconnect in lockstep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import SOFTWARE_NAME, __version__
from agent.errors import ConfigError, OutboxError, PublishError, ReceiptError
from agent.uplink.outbox import Outbox, OutboxItem, rfc3339
from agent.wire import envelope as wire
from agent.wire import receipts
from agent.wire.topics import measurements_topic, probe_view, receipts_topic, status_topic

log = logging.getLogger(__name__)

# PUBACK reason codes (MQTT v5.0 section 3.4.2.1), plus 0x95 that Mosquitto 2.0.11 sends.
RC_SUCCESS = 0x00
RC_NO_MATCHING_SUBSCRIBERS = 0x10
RC_UNSPECIFIED_ERROR = 0x80
RC_IMPLEMENTATION_SPECIFIC = 0x83
RC_NOT_AUTHORIZED = 0x87
RC_TOPIC_NAME_INVALID = 0x90
RC_PACKET_TOO_LARGE = 0x95
RC_QUOTA_EXCEEDED = 0x97
RC_PAYLOAD_FORMAT_INVALID = 0x99

REASONS = {
    RC_SUCCESS: "success",
    RC_NO_MATCHING_SUBSCRIBERS: "no matching subscribers",
    RC_UNSPECIFIED_ERROR: "unspecified error",
    RC_IMPLEMENTATION_SPECIFIC: "implementation specific error",
    RC_NOT_AUTHORIZED: "not authorized",
    RC_TOPIC_NAME_INVALID: "topic name invalid",
    RC_PACKET_TOO_LARGE: "packet too large",
    RC_QUOTA_EXCEEDED: "quota exceeded",
    RC_PAYLOAD_FORMAT_INVALID: "payload format invalid",
}


def reason_name(code: int) -> str:
    return REASONS.get(code, f"reason code {code}")


@dataclass(frozen=True)
class PublisherSettings:
    """How to reach the broker.  Authenticate with a password or a client certificate."""

    host: str
    port: int = 8883
    ca_file: Path | None = None  # None: the system's trust store
    cert_file: Path | None = None  # client certificate whose CN is the probe id
    key_file: Path | None = None
    username: str | None = None  # default: the probe id (when a password is given)
    password: str | None = field(default=None, repr=False)
    keepalive: int = 60
    session_expiry: int = 7 * 24 * 3600  # broker keeps the session (and commands) a week
    connect_timeout: float = 15.0
    ack_timeout: float = 30.0  # no PUBACK in this long: treat the connection as dead
    max_inflight: int = 16  # QoS 1 publishes awaiting PUBACK (paho's window)
    batch: int = 256  # rows read from the outbox at a time
    ack_batch: int = 64  # acknowledged rows deleted per transaction (one fsync)
    max_message_bytes: int = wire.MAX_ENVELOPE_BYTES
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    status_interval: float = 60.0
    unrouted_retry: float = 5.0  # PUBACK 0x10: offer again after this (doubling, max 300 s)
    receipts: bool = True  # hold sent rows until a collector's receipt (False: PUBACK deletes)
    receipt_timeout: float = 120.0  # no receipt this long after the PUBACK: publish again
    receipt_timeout_max: float = 3600.0  # ... doubling per send up to this
    # Never any receipt (a collector older than receipts): after this long, a PUBACK alone
    # deletes a row, as before receipts.  0: never (keep resending until receipts come).
    receipt_fallback: float = 86400.0

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("broker: cert_file and key_file go together")
        if self.password is not None and self.cert_file is not None:
            raise ConfigError("broker: use a password or a client certificate, not both")
        if not 1 <= self.max_inflight <= 1000 or self.batch < 1 or self.ack_batch < 1:
            raise ConfigError("broker: max_inflight, batch and ack_batch must be positive")

    def tls_context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(
                cafile=None if self.ca_file is None else str(self.ca_file)
            )
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.cert_file is not None and self.key_file is not None:
                ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"broker TLS files: {exc}") from None
        return ctx


_SETTING_TYPES: dict[str, type] = {
    "host": str, "port": int, "ca_file": Path, "cert_file": Path, "key_file": Path,
    "username": str, "password": str, "keepalive": int, "session_expiry": int,
    "connect_timeout": float, "ack_timeout": float, "max_inflight": int, "batch": int,
    "ack_batch": int, "max_message_bytes": int, "backoff_initial": float, "backoff_max": float,
    "status_interval": float, "unrouted_retry": float, "receipts": bool,
    "receipt_timeout": float, "receipt_timeout_max": float, "receipt_fallback": float,
}


_ZERO_OK = frozenset({"receipt_fallback"})  # 0 switches it off


def settings_from_config(
    section: Mapping[str, Any], base_dir: Path | None = None
) -> PublisherSettings | None:
    """``[mqtt]`` of the agent config -> settings; None when no ``host`` (no publishing).

    ``password_file`` (first line) keeps the secret out of the config file; relative paths are
    relative to the config file's directory (``base_dir``).  Unknown keys are errors.
    """
    table = dict(section)
    if not table.get("host"):
        if table:
            raise ConfigError("[mqtt] needs a host")
        return None
    password_file = table.pop("password_file", None)
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        kind = _SETTING_TYPES.get(key)
        if kind is None:
            raise ConfigError(f"unknown key in [mqtt]: {key}")
        kwargs[key] = _coerce_setting(key, value, kind, base_dir)
    if password_file is not None:
        if "password" in kwargs:
            raise ConfigError("[mqtt]: password and password_file are exclusive")
        path = _coerce_setting("password_file", password_file, Path, base_dir)
        try:
            lines = path.read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"[mqtt] password_file {path}: {exc}") from None
        if not lines or not lines[0]:
            raise ConfigError(f"[mqtt] password_file {path} is empty")
        kwargs["password"] = lines[0]
    return PublisherSettings(**kwargs)


def _coerce_setting(key: str, value: Any, kind: type, base_dir: Path | None) -> Any:
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"[mqtt] {key} must be a path string")
        path = Path(value).expanduser()
        return path if path.is_absolute() or base_dir is None else base_dir / path
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"[mqtt] {key} must be true or false, not {value!r}")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # and checked like one below
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"[mqtt] {key} must be a {kind.__name__}, not {value!r}")
    if isinstance(value, int | float) and (value < 0 or (value == 0 and key not in _ZERO_OK)):
        raise ConfigError(f"[mqtt] {key} must be positive, not {value!r}")
    return value


@dataclass
class PublisherCounters:
    """This process's publishing, reported on the status topic (outbox counters persist)."""

    connects: int = 0
    connect_failures: int = 0
    connection_losses: int = 0
    published: int = 0
    refused: int = 0
    unrouted: int = 0
    publish_errors: int = 0
    oversized: int = 0
    refused_by_code: dict[str, int] = field(default_factory=dict)
    sent: int = 0  # PUBACKed, now awaiting a receipt (receipts on)
    receipts: int = 0  # receipt messages received
    receipted: int = 0  # rows a receipt said were stored
    collector_refused: int = 0  # rows a receipt refused for good
    collector_retry: int = 0
    bad_receipts: int = 0  # receipt messages that broke the contract (ignored)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": in [d/2, d] for d = initial * 2**attempt."""
    ceiling = min(maximum, initial * (2 ** min(attempt, 30)))
    return rng.uniform(ceiling / 2, ceiling)


def _puback_code_valid(code: int) -> bool:
    try:
        ReasonCode(PacketTypes.PUBACK, identifier=code)
    except (KeyError, ValueError):
        return False
    return True


class MqttSession:
    """One connection's publishes, each with a future for its PUBACK reason code.

    Hooks into the paho client under an ``aiomqtt.Client`` (before it connects): its
    ``on_publish`` (to get the reason code), ``on_disconnect`` (to fail what is in flight)
    and its PUBACK handler (for Mosquitto's out-of-spec 0x95, see the module docstring).
    Only used from the event loop's thread, which is where aiomqtt runs paho's callbacks.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._paho: mqtt.Client = client._client
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._waiting: dict[int, asyncio.Future[int]] = {}
        self._raw_codes: dict[int, int] = {}
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.unexpected_loss = False  # lost without us asking to disconnect
        self._closing = False
        # aiomqtt's own callbacks (callback API v2), called for everything not ours.
        self._inner_on_publish: Any = self._paho.on_publish
        self._inner_on_disconnect: Any = self._paho.on_disconnect
        self._paho.on_publish = self._on_publish
        self._paho.on_disconnect = self._on_disconnect
        # paho internals (2.x): if a future paho lacks them, refusals with out-of-spec codes
        # degrade to "connection lost" (the row is still kept), nothing else changes.
        self._inner_handle_puback: Any = getattr(self._paho, "_handle_pubackcomp", None)
        if self._inner_handle_puback is not None and hasattr(self._paho, "_in_packet"):
            self._paho._handle_pubackcomp = self._handle_pubackcomp  # type: ignore[method-assign]
        else:
            log.warning("paho-mqtt internals changed: out-of-spec PUBACK codes not decoded")

    # -- paho callbacks (event loop thread) --
    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._paho._in_packet["packet"]
        if cmd == "PUBACK" and len(packet) >= 3 and not _puback_code_valid(packet[2]):
            (mid,) = struct.unpack("!H", bytes(packet[:2]))
            self._raw_codes[mid] = packet[2]
            fixed = bytes(packet[:2]) + bytes([RC_UNSPECIFIED_ERROR]) + bytes(packet[3:])
            self._paho._in_packet["packet"] = bytearray(fixed)
        result: MQTTErrorCode = self._inner_handle_puback(cmd)
        return result

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        code = self._raw_codes.pop(mid, None)
        if code is None:
            code = int(reason_code.value)
        fut = self._waiting.pop(mid, None)
        if fut is not None:
            self._in_loop(self._resolve, fut, code)
        else:
            self._inner_on_publish(client, userdata, mid, reason_code, properties)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, *args: Any) -> None:
        reason = args[1] if len(args) > 1 else None
        self.lost_reason = str(reason) if reason is not None else "disconnected"
        self.unexpected_loss = not self._closing
        self._in_loop(self._fail_all, self.lost_reason)
        self._inner_on_disconnect(client, userdata, *args)

    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    @staticmethod
    def _resolve(fut: asyncio.Future[int], code: int) -> None:
        if not fut.done():
            fut.set_result(code)

    def _fail_all(self, why: str) -> None:
        self.lost.set()
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(PublishError(f"connection lost before PUBACK: {why}"))
                fut.exception()  # retrieved here; awaiting it still raises

    # -- API --
    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> asyncio.Future[int]:
        """Send one QoS 1 PUBLISH now; the future gets the PUBACK reason code."""
        if self.lost.is_set():
            raise PublishError(f"connection lost: {self.lost_reason}")
        props: Properties | None = None
        if user_properties:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = list(user_properties)
        info = self._paho.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishError(f"cannot publish: {mqtt.error_string(info.rc)}")
        fut: asyncio.Future[int] = self._loop.create_future()
        self._waiting[info.mid] = fut
        return fut

    async def disconnect(self, *, with_will: bool) -> None:
        """Close the connection; ``with_will`` asks the broker to publish the Last Will.

        MQTT v5 DISCONNECT reason code 0x04 ("disconnect with will message") is how a client
        that is going away because of an error still tells the world it is offline.
        """
        self._closing = True
        if self.lost.is_set():
            return
        if with_will:
            rc = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
            self._paho.disconnect(reasoncode=rc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lost.wait(), 5.0)
        await self._client.__aexit__(None, None, None)

    def close(self) -> None:
        """Fail what is still waiting and consume aiomqtt's connection futures' errors."""
        self._fail_all("session closed")
        for name in ("_connected", "_disconnected"):
            fut = getattr(self._client, name, None)
            if isinstance(fut, asyncio.Future) and fut.done() and not fut.cancelled():
                fut.exception()


MessageHandler = Callable[[str, bytes], Awaitable[None]]


@dataclass
class _PassTally:
    """What one drain pass learnt, written to the outbox in batches."""

    acked: list[int] = field(default_factory=list)  # PUBACKed (sent, with receipts on)
    unrouted: list[int] = field(default_factory=list)
    refused: int = 0


class Publisher:
    """Owns the MQTT connection of the agent; ``run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        outbox: Outbox,
        settings: PublisherSettings,
        *,
        software_version: str = __version__,
        subscriptions: Sequence[str] = (),
        on_message: MessageHandler | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.probe_id = outbox.identity.probe_id
        self.software_version = software_version
        self.subscriptions = tuple(subscriptions)
        self.on_message = on_message
        self.receipts_topic = receipts_topic(self.probe_id)
        self.counters = PublisherCounters()
        self.connected = False
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._connected_since: float | None = None
        self._session_connected = False
        self._unrouted_streak = 0
        self._tls = settings.tls_context()

    # ---- public ------------------------------------------------------------------------------
    def notify(self) -> None:
        """New rows in the outbox (call on the event loop): drain now instead of later."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, drain, stay connected; reconnect with backoff; return once ``stop`` is set."""
        attempt = 0
        while not stop.is_set():
            try:
                await self._session(stop, until_drained=False)
            except (aiomqtt.MqttError, PublishError, OutboxError, OSError, TimeoutError) as exc:
                # OutboxError: the disk refused an ack or a deferral; rows stay, retry later.
                self._log_failure(exc)
            if stop.is_set():
                break
            # A connection that worked and then broke is retried quickly; a broker that
            # cannot be reached at all is retried less and less often.
            attempt = 0 if self._session_connected else attempt + 1
            delay = backoff_delay(
                attempt, self.settings.backoff_initial, self.settings.backoff_max, self._rng
            )
            log.info(
                "reconnecting to %s:%d in %.1fs", self.settings.host, self.settings.port, delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def flush(self, receipt_wait: float = 0.0) -> int:
        """One connection: publish everything ready now, then disconnect.  Returns published.

        With receipts on, stays connected up to ``receipt_wait`` seconds while the sent rows
        await their receipts (a receipt that comes later is queued in the probe's broker
        session, or the row is sent again).  Raises aiomqtt.MqttError / PublishError when the
        broker cannot be reached or the connection breaks; what was not acknowledged stays in
        the outbox.
        """
        before = self.counters.published
        await self._session(asyncio.Event(), until_drained=True, receipt_wait=receipt_wait)
        return self.counters.published - before

    # ---- one connection ----------------------------------------------------------------------
    def _client(self) -> aiomqtt.Client:
        s = self.settings
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = s.session_expiry
        username = s.username
        if username is None and s.password is not None:
            username = self.probe_id
        will = aiomqtt.Will(
            topic=status_topic(self.probe_id),
            payload=json.dumps(self._status_doc("offline", reason="connection lost")).encode(),
            qos=1,
            retain=True,
        )
        return aiomqtt.Client(
            s.host,
            s.port,
            identifier=self.probe_id,
            username=username,
            password=s.password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=connect_props,
            will=will,
            keepalive=s.keepalive,
            timeout=s.connect_timeout,
            tls_context=self._tls,
            tls_insecure=False,
            max_inflight_messages=s.max_inflight,
        )

    async def _await_receipts(self, session: MqttSession, wait: float) -> None:
        """``flush``: stay connected up to ``wait`` s while sent rows await their receipts."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not session.lost.is_set():
            if not await asyncio.to_thread(self.outbox.awaiting_receipt):
                return
            await asyncio.sleep(0.05)

    async def _session(
        self, stop: asyncio.Event, *, until_drained: bool, receipt_wait: float = 0.0
    ) -> None:
        """One connection, from CONNECT to DISCONNECT; errors propagate after cleanup."""
        client = self._client()
        session = MqttSession(client)
        connected = self._session_connected = False
        try:
            try:
                await client.__aenter__()
            except aiomqtt.MqttError:
                self.counters.connect_failures += 1
                raise
            connected = self.connected = self._session_connected = True
            self.counters.connects += 1
            self._connected_since = time.time()
            log.info("connected to %s:%d as %s", self.settings.host, self.settings.port,
                     self.probe_id)
            dispatcher: asyncio.Task[None] | None = None
            try:
                topics = list(self.subscriptions)
                if self.settings.receipts:
                    topics.append(self.receipts_topic)
                for topic in topics:
                    await client.subscribe(topic, qos=1)
                if topics and (self.on_message is not None or self.settings.receipts):
                    dispatcher = asyncio.create_task(self._dispatch(client))
                await self._publish_status(session, "online")
                next_status = time.monotonic() + self.settings.status_interval
                while True:
                    self._wake.clear()
                    await self._drain(session)
                    if until_drained:
                        await self._await_receipts(session, receipt_wait)
                    if until_drained or stop.is_set():
                        break
                    if time.monotonic() >= next_status:
                        await self._publish_status(session, "online")
                        next_status = time.monotonic() + self.settings.status_interval
                    await self._idle(session, stop, next_status)
                    if session.lost.is_set():
                        raise PublishError(f"connection lost: {session.lost_reason}")
                await self._publish_status(session, "offline", reason="shutdown")
            finally:
                if dispatcher is not None:
                    dispatcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await dispatcher
            await session.disconnect(with_will=False)
        except BaseException:
            if connected:
                with contextlib.suppress(Exception):
                    await session.disconnect(with_will=True)
            raise
        finally:
            if connected and session.unexpected_loss:
                self.counters.connection_losses += 1
            session.close()
            self.connected = False

    async def _idle(self, session: MqttSession, stop: asyncio.Event, next_status: float) -> None:
        timeout = max(0.0, next_status - time.monotonic())
        deferred = await asyncio.to_thread(self.outbox.next_ready_at)
        if deferred is not None:
            timeout = min(timeout, max(0.0, deferred - time.time()) + 0.01)
        waits = [
            asyncio.create_task(self._wake.wait()),
            asyncio.create_task(stop.wait()),
            asyncio.create_task(session.lost.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in waits:
                t.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _drain(self, session: MqttSession) -> None:
        """Publish every ready row in seq order with up to ``max_inflight`` awaiting PUBACK."""
        s = self.settings
        topic = measurements_topic(self.probe_id)
        inflight: deque[tuple[OutboxItem, asyncio.Future[int]]] = deque()
        tally = _PassTally()
        after = 0
        try:
            while True:
                items = await self.outbox.atake(s.batch, after)
                if not items:
                    break
                for item in items:
                    after = item.seq
                    if item.size > s.max_message_bytes:
                        self.counters.oversized += 1
                        await self._refused(item, RC_PACKET_TOO_LARGE, "over max_message_bytes "
                                            f"({item.size} > {s.max_message_bytes}), not sent",
                                            tally)
                        continue
                    while len(inflight) >= s.max_inflight:
                        await self._settle(*inflight.popleft(), tally)
                    props = (receipts.user_properties(item.measurement_id, item.age_s)
                             if s.receipts else ())
                    inflight.append(
                        (item, session.publish(topic, item.envelope, user_properties=props))
                    )
                    if len(tally.acked) >= s.ack_batch:
                        await self._write_acked(tally.acked)
                        tally.acked = []
            while inflight:
                await self._settle(*inflight.popleft(), tally)
        except BaseException as exc:
            pending = [item.seq for item, _ in inflight]
            for _, fut in inflight:
                fut.cancel()
            if pending:
                self.counters.publish_errors += len(pending)
                with contextlib.suppress(OutboxError):
                    await asyncio.to_thread(
                        self.outbox.failed, pending, f"{type(exc).__name__}: {exc}"
                    )
            raise
        finally:
            await self._close_pass(tally)

    async def _write_acked(self, seqs: list[int]) -> None:
        """PUBACKed rows: deleted (receipts off) or marked sent, awaiting a receipt."""
        s = self.settings
        if s.receipts:
            released = await asyncio.to_thread(
                self.outbox.mark_sent, seqs, s.receipt_timeout, s.receipt_timeout_max,
                s.receipt_fallback,
            )
            self.counters.sent += len(seqs) - released
            self.counters.published += released
        else:
            await self.outbox.aack(seqs)

    async def _settle(self, item: OutboxItem, fut: asyncio.Future[int], tally: _PassTally) -> None:
        try:
            code = await asyncio.wait_for(fut, self.settings.ack_timeout)
        except TimeoutError:
            raise PublishError(f"no PUBACK within {self.settings.ack_timeout}s") from None
        if code == RC_NO_MATCHING_SUBSCRIBERS:
            self.counters.unrouted += 1
            tally.unrouted.append(item.seq)
        elif code < RC_UNSPECIFIED_ERROR:
            if not self.settings.receipts:  # else counted when the receipt comes
                self.counters.published += 1
            tally.acked.append(item.seq)
        else:
            await self._refused(item, code, reason_name(code), tally)

    async def _refused(self, item: OutboxItem, code: int, why: str, tally: _PassTally) -> None:
        self.counters.refused += 1
        key = str(code)
        self.counters.refused_by_code[key] = self.counters.refused_by_code.get(key, 0) + 1
        if not tally.refused:  # one line per pass, not one per message
            log.error("broker refused %s %s (PUBACK %d: %s); kept in the outbox",
                      item.kind, item.measurement_id, code, why)
        tally.refused += 1
        await asyncio.to_thread(self.outbox.refused, item.seq, code, why)

    async def _close_pass(self, tally: _PassTally) -> None:
        """Write what the pass learnt: acks (delete), unrouted rows (defer), one log line."""
        if tally.acked:
            await self._write_acked(tally.acked)
        if tally.unrouted:
            # No subscriber at all: typically a broker restart before the collectors
            # re-subscribed (Mosquitto 2.0.11 does not restore shared subscriptions of
            # persistent sessions), or no collector yet.  Retry soon, then less often.
            delay = min(300.0, self.settings.unrouted_retry * 2 ** min(self._unrouted_streak, 6))
            self._unrouted_streak += 1
            log.warning("broker has no subscriber for %d record(s) (no collector session); "
                        "kept, retrying in %.0fs", len(tally.unrouted), delay)
            await asyncio.to_thread(self.outbox.unrouted, tally.unrouted, delay)
        elif tally.acked:
            self._unrouted_streak = 0
        if tally.refused > 1:
            log.error("broker refused %d record(s) in this pass; kept in the outbox",
                      tally.refused)

    # ---- status ------------------------------------------------------------------------------
    def _status_doc(self, state: str, **extra: Any) -> dict[str, Any]:
        return {
            "state": state,
            "probe_id": self.probe_id,
            "software_name": SOFTWARE_NAME,
            "software_version": self.software_version,
            "at": rfc3339(time.time()),
            **extra,
        }

    async def _publish_status(self, session: MqttSession, state: str, **extra: Any) -> None:
        stats = await asyncio.to_thread(self.outbox.stats)
        doc = self._status_doc(
            state,
            since=None if self._connected_since is None else rfc3339(self._connected_since),
            outbox=stats.to_json(),
            publisher=self.counters.to_json(),
            **extra,
        )
        fut = session.publish(status_topic(self.probe_id), json.dumps(doc).encode(), retain=True)
        try:
            code = await asyncio.wait_for(fut, self.settings.ack_timeout)
        except TimeoutError:
            raise PublishError("no PUBACK for the status message") from None
        if code >= RC_UNSPECIFIED_ERROR:
            log.error("broker refused the status message (PUBACK %d: %s)", code,
                      reason_name(code))

    async def _dispatch(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
            topic = probe_view(str(message.topic))
            try:
                if self._is_receipts(topic):
                    await self._receipt(data)
                elif self.on_message is not None:
                    await self.on_message(topic, data)
            except OutboxError as exc:
                # Unapplied: the rows stay and are sent again; the collector answers again.
                log.error("cannot apply a receipt: %s", exc)
            except Exception:
                log.exception("handler for %s failed", message.topic)

    def _is_receipts(self, topic: str) -> bool:
        """Our receipts topic, also as delivered with the broker's mount-point prefix (some
        Mosquitto versions leave a listener's ``mount_point`` on what they deliver)."""
        return topic == self.receipts_topic or topic.endswith("/" + self.receipts_topic)

    async def _receipt(self, data: bytes) -> None:
        try:
            receipt = receipts.parse(data)
        except ReceiptError as exc:
            self.counters.bad_receipts += 1
            log.warning("ignoring a malformed receipt: %s", exc)
            return
        self.counters.receipts += 1
        done = await asyncio.to_thread(
            self.outbox.apply_receipt, receipt, self.settings.receipt_timeout
        )
        if done["pulled"]:
            log.info("%d sent record(s) older than the ones just receipted never got a "
                     "receipt (lost by the broker): sending them again now", done["pulled"])
            self._wake.set()
        self.counters.receipted += done["stored"]
        self.counters.published += done["stored"]
        self.counters.collector_refused += done["refused"]
        self.counters.collector_retry += done["retry"]

    def _log_failure(self, exc: BaseException) -> None:
        if isinstance(exc, MqttConnectError):
            log.error("broker %s:%d refused the connection: %s (is the probe enrolled? "
                      "check credentials)", self.settings.host, self.settings.port, exc)
        else:
            log.warning("broker %s:%d: %s", self.settings.host, self.settings.port, exc)
