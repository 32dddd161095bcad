"""The per-message checks of the ingest, as pure functions: bytes in, a verdict out.

For a measurement message, in this order (cheapest and least trusting first)::

    size limit -> DSSE envelope parse -> key lookup (enrolled, not revoked)
    -> Ed25519 signature over the RECEIVED payload bytes -> payload JSON -> JSON Schema
    -> payload probe_id == signing key's probe == topic's probe id -> timestamp placement

and the store then deduplicates on ``measurement_id``.  Nothing here raises: every failure is a
:class:`Rejected` carrying a machine reason (:class:`Reason`), a human detail and the raw
bytes, which the ingest quarantines and counts.  An unexpected exception becomes
``internal_error`` (counted and quarantined too) rather than crashing the collector.

No I/O: keys come from a :class:`KeyTable` the ingest refreshes from the store, and the clock
is passed in, so the whole pipeline is unit-testable and benchmarkable.

Three stages (``prepare_batch`` -> ``crypto`` -> ``finish_batch``; ``check`` runs all three)
so the ingest may run the Ed25519 calls elsewhere; the payload is parsed only after its
signature verified.  ``crypto_jobs`` / ``verify_jobs`` / ``crypto_results`` are the crypto stage
split as plain data for a verification process (``verify_jobs`` runs there).

Performance (one core of the dev machine, ~1.2 kB records): Ed25519 verification dominates
(~110 µs); jsonschema validation cost as much again (~115 µs) and is replaced by a compiled
check (collector.ingest.schemacheck, ~10 µs) with jsonschema kept as the judge of anything the fast
check rejects; public-key objects are built once per key, not per message.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import select
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache, partial
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import EnvelopeError, SchemaError, SignatureError
from agent.wire import envelope as wire
from agent.wire.topics import MEASUREMENTS, STATUS, topic_parts
from collector.ingest.schemacheck import Check, Unsupported, compile_schema
from collector.store.base import MeasurementRow, ProbeRecord, QuarantineItem, StatusUpdate

log = logging.getLogger(__name__)

MAX_STATUS_BYTES = 16_384  # "online" with a few counters; anything bigger is not a status


class Reason(enum.StrEnum):
    """Why a message was rejected: the keys of the rejection counters."""

    OVERSIZED = "oversized"
    MALFORMED_ENVELOPE = "malformed_envelope"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED_JSON = "malformed_json"
    SCHEMA_VIOLATION = "schema_violation"
    PROBE_MISMATCH = "probe_mismatch"
    TOPIC_MISMATCH = "topic_mismatch"
    FUTURE_TIMESTAMP = "future_timestamp"  # no longer produced: such records are placed
    STALE_TIMESTAMP = "stale_timestamp"
    DUPLICATE = "duplicate"  # decided by the store (dedup on measurement_id)
    INTERNAL_ERROR = "internal_error"  # a bug in the collector: kept, counted, not crashed on


@dataclass(frozen=True, slots=True)
class VerifyPolicy:
    """Limits; the defaults suit probes that may sit offline for months during a shutdown."""

    max_bytes: int = wire.MAX_ENVELOPE_BYTES
    max_status_bytes: int = MAX_STATUS_BYTES
    # A probe's clock may be off a little (no RTC, NTP blocked): up to this much a claimed
    # start time is taken as is.  Further ahead, the record is stored (never rejected: a Pi's
    # clock before NTP sync must not lose its measurements) and placed at its true age
    # (``vigil-age``) or, without one, at its arrival: see Verifier.place_start.
    max_future_s: float = 3600.0
    # How long a message may wait in the broker before a collector takes it (a collector
    # outage); bounds the true start of a record whose age the probe told.
    max_queue_s: float = 31 * 86400.0
    # Outboxes keep measurements for a long time; older than this is a broken clock or replay.
    max_age_s: float = 400 * 86400.0


# ---- keys -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProbeKey:
    public_key: Ed25519PublicKey
    revoked: bool


class KeyLookup(Protocol):
    def get(self, probe_id: str) -> ProbeKey | None: ...


class KeyTable:
    """Enrolled keys by probe id, rebuilt from ``Store.list_probes()``.

    Public-key objects are cached by their raw bytes across reloads: building one costs about
    as much as a verification, so it must not happen per message.
    """

    def __init__(self, probes: Iterable[ProbeRecord] = ()) -> None:
        self._keys: dict[str, ProbeKey] = {}
        self._objects: dict[bytes, Ed25519PublicKey] = {}
        self.load(probes)

    def load(self, probes: Iterable[ProbeRecord]) -> None:
        keys: dict[str, ProbeKey] = {}
        objects: dict[bytes, Ed25519PublicKey] = {}
        for p in probes:
            raw = bytes(p.public_key)
            obj = self._objects.get(raw)
            if obj is None:
                try:
                    obj = Ed25519PublicKey.from_public_bytes(raw)
                except ValueError:
                    log.error("probe %s has an invalid stored public key; ignoring it", p.probe_id)
                    continue
            objects[raw] = obj
            keys[p.probe_id] = ProbeKey(obj, p.revoked)
        self._keys, self._objects = keys, objects

    def get(self, probe_id: str) -> ProbeKey | None:
        return self._keys.get(probe_id)

    def __contains__(self, probe_id: object) -> bool:
        return probe_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)


# ---- outcomes ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Accepted:
    row: MeasurementRow


@dataclass(frozen=True, slots=True)
class StatusReceived:
    update: StatusUpdate


@dataclass(frozen=True, slots=True)
class Rejected:
    item: QuarantineItem

    @property
    def reason(self) -> str:
        return self.item.reason


Outcome = Accepted | StatusReceived | Rejected


@dataclass(frozen=True, slots=True)
class Signed:
    """A measurement whose envelope parsed and whose signer is enrolled: awaiting crypto."""

    topic: str
    raw: bytes
    topic_probe: str
    env: wire.Envelope
    keyid: str
    key: Ed25519PublicKey
    age_s: float | None = None  # the probe's "vigil-age": seconds since the record was taken


Prepared = Outcome | Signed


def _verified_signature(item: Signed) -> bytes | None:
    """The first signature by ``item.keyid`` that verifies (agent.wire.envelope.verify_envelope)."""
    env = item.env
    candidates = [(kid, sig) for kid, sig in env.signatures if kid == item.keyid]
    for kid, sig in candidates:
        one = env if len(env.signatures) == 1 else wire.Envelope(
            env.payload_type, env.payload, ((kid, sig),)
        )
        try:
            wire.verify_envelope(one, item.key, item.keyid)
        except (SignatureError, EnvelopeError):
            continue
        return sig
    return None


# ---- crypto as plain data (for a verification process) -----------------------------------------
VerifyJob = tuple[bytes, bytes, bytes]
"""(raw 32-byte Ed25519 public key, DSSE PAE message, signature): picklable, cheap to send."""


@lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey | None:
    """Key objects cost about a verification to build: once per key per worker process."""
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None


def verify_jobs(jobs: Sequence[VerifyJob]) -> list[bool]:
    """Whether each signature verifies over its message under its key.  Never raises.

    Top-level and plain-data in and out, so a ``ProcessPoolExecutor`` worker can run a whole
    batch with one pickle each way and no GIL shared with the event loop.
    """
    out: list[bool] = []
    for raw, message, sig in jobs:
        key = _public_key(raw)
        if key is None:
            out.append(False)
            continue
        try:
            key.verify(sig, message)
        except InvalidSignature:
            out.append(False)
        else:
            out.append(True)
    return out


def init_verify_worker(collector_pid: int | None = None) -> None:
    """Initializer of a verification process: leave signals to the collector, warm up.

    SIGINT (a terminal's Ctrl-C) and SIGTERM (systemd signals the whole control group) go to
    every process; the collector must drain its batches first and then shut its workers
    down, so a worker must not die before it.  But a worker must not outlive it either: a
    SIGKILLed collector never shuts the pool down and the worker would wait for work forever,
    so it watches ``collector_pid`` and exits with it.  Loading OpenSSL and verifying once
    here keeps that cost out of the first batch.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if collector_pid is not None:
        threading.Thread(target=_exit_with, args=(collector_pid,), daemon=True,
                         name="vigil-verify-watch").start()
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes_raw()
    verify_jobs([(raw, b"warm-up", key.sign(b"warm-up"))])
    _public_key.cache_clear()


def _exit_with(pid: int) -> None:
    """Block until process ``pid`` ends (a pidfd, else polling each second), then exit."""
    try:
        fd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or already gone
        fd = None
    if fd is not None:
        select.select([fd], [], [])
    else:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
            time.sleep(1.0)
    os._exit(0)


def _candidates(item: Signed) -> list[bytes]:
    """The signatures by ``item.keyid``, in envelope order (the order verification tries)."""
    return [sig for kid, sig in item.env.signatures if kid == item.keyid]


def crypto_jobs(items: Sequence[Signed]) -> list[VerifyJob]:
    """The Ed25519 work of ``Verifier.crypto(items)`` as plain data (see ``verify_jobs``)."""
    jobs: list[VerifyJob] = []
    for item in items:
        raw = item.key.public_bytes_raw()
        message = wire.pae(item.env.payload_type, item.env.payload)
        jobs.extend((raw, message, sig) for sig in _candidates(item))
    return jobs


def crypto_results(items: Sequence[Signed], ok: Sequence[bool]) -> list[bytes | None]:
    """``verify_jobs(crypto_jobs(items))`` back to what ``Verifier.crypto(items)`` returns:
    per item, the first of its signatures that verified, or None."""
    results = iter(ok)
    out: list[bytes | None] = []
    for item in items:
        found: bytes | None = None
        for sig in _candidates(item):
            if next(results) and found is None:
                found = sig
        out.append(found)
    return out


class _Reject(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# A measurement record nests about 6 levels (test_keys -> list -> object -> list ...); deeper
# than this is an attack on the parsers and validators that follow, never a real record.
MAX_JSON_DEPTH = 32


# ---- pure helpers -----------------------------------------------------------------------------
def domain_of(value: str | None) -> str | None:
    """The host an input names (URL or bare host), lower-case, for per-domain counts."""
    if not value:
        return None
    try:
        if "://" in value:
            host = urlsplit(value).hostname
        else:
            host = value.split("/", 1)[0].rsplit("@", 1)[-1]
            if host.count(":") == 1:
                host = host.split(":", 1)[0]
    except ValueError:
        return None
    if not host:
        return None
    return host.strip(".").lower() or None


def parse_utc(text: str) -> float:
    """RFC 3339 UTC ("...Z", as the schema requires) to Unix seconds; ValueError if invalid."""
    return datetime.fromisoformat(text).timestamp()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k!r}")
            seen.add(k)
    return obj


# Fields the collector indexes: Python's re lets "$" match before a final newline, so a schema
# pattern alone would admit "id\n"; these must be exactly what they look like.
_EXACT_FIELDS = ("measurement_id", "probe_id", "probe_cc", "probe_asn", "test_name")


class Verifier:
    """Checks messages against enrolled keys and the schema.  ``crypto`` is thread-safe."""

    def __init__(self, keys: KeyLookup, policy: VerifyPolicy | None = None) -> None:
        self.keys = keys
        self.policy = policy or VerifyPolicy()
        self._fast: Check | None
        try:
            self._fast = compile_schema(wire.measurement_schema())
        except Unsupported as exc:
            log.warning("schema not compilable (%s): validating with jsonschema only", exc)
            self._fast = None
        self._decoder = json.JSONDecoder(
            object_pairs_hook=_strict_pairs, parse_constant=_reject_constant
        )
        # Records whose claimed start time was moved (the probe's clock was wrong), by how:
        # "age" (placed by the probe's own age of the record), "arrival" (clamped to arrival).
        self.placed: Counter[str] = Counter()

    # ---- entry points -------------------------------------------------------------------
    def check(self, topic: str, raw: bytes, now: float | None = None) -> Outcome:
        """Classify one message; never raises."""
        return self.check_batch([(topic, raw)], time.time() if now is None else now)[0]

    def check_batch(self, messages: Sequence[tuple[str, bytes]], now: float) -> list[Outcome]:
        """All three stages in this thread."""
        prepared = self.prepare_batch(messages, now)
        signed = [p for p in prepared if isinstance(p, Signed)]
        return self.finish_batch(prepared, self.crypto(signed), now)

    # The three stages, so the ingest can run the Ed25519 calls (which release the GIL) on
    # another thread while everything else stays on the event loop.
    def prepare_batch(
        self, messages: Sequence[tuple[str, bytes]], now: float,
        ages: Sequence[float | None] | None = None,
    ) -> list[Prepared]:
        """Size, envelope, key: a final Outcome, or a Signed message awaiting its signature.

        ``ages``: per message, the age the probe told (``vigil-age``), or None.
        """
        prepared: list[Prepared] = [
            self._guard(topic, raw, now, partial(self._prepare, topic, raw, now))
            for topic, raw in messages
        ]
        if ages is not None:
            prepared = [
                replace(p, age_s=age) if isinstance(p, Signed) and age is not None else p
                for p, age in zip(prepared, ages, strict=True)
            ]
        return prepared

    @staticmethod
    def crypto(items: Sequence[Signed]) -> list[bytes | None]:
        """The signature that verifies over each envelope's received payload bytes, or None.

        Thread-safe and GIL-light: only the Ed25519 verifications (agent.wire.envelope).
        """
        return [_verified_signature(item) for item in items]

    def finish_batch(
        self, prepared: Sequence[Prepared], signatures: Sequence[bytes | None], now: float
    ) -> list[Outcome]:
        """Payload checks for the signed ones (only after their signature verified)."""
        sigs = iter(signatures)
        out: list[Outcome] = []
        for p in prepared:
            if isinstance(p, Signed):
                finish = partial(self._finish, p, next(sigs), now)
                out.append(self._guard(p.topic, p.raw, now, finish))
            else:
                out.append(p)
        return out

    # ---- stages -------------------------------------------------------------------------
    def _guard(self, topic: str, raw: bytes, now: float, stage: Callable[[], Prepared]) -> Any:
        """Run a stage; a rejection or an unexpected exception becomes a Rejected outcome."""
        try:
            return stage()
        except _Reject as rej:
            return self._rejected(rej.reason, rej.detail, topic, raw, now, topic_parts(topic))
        except Exception as exc:  # a collector bug must not stop the ingest
            log.exception("internal error while verifying a message on %s", topic)
            return self._rejected(Reason.INTERNAL_ERROR, f"{exc.__class__.__name__}: {exc}",
                                  topic, raw, now, topic_parts(topic))

    def _prepare(self, topic: str, raw: bytes, now: float) -> Prepared:
        parts = topic_parts(topic)
        if parts is None:
            raise _Reject(Reason.TOPIC_MISMATCH, f"not a probe topic: {topic[:200]!r}")
        topic_probe, kind = parts
        if kind == STATUS:
            return StatusReceived(self._status(topic_probe, raw, now))
        if kind != MEASUREMENTS:
            raise _Reject(Reason.TOPIC_MISMATCH, f"unexpected topic kind {kind[:64]!r}")
        policy = self.policy
        if len(raw) > policy.max_bytes:
            raise _Reject(Reason.OVERSIZED, f"{len(raw)} bytes > {policy.max_bytes}")
        try:
            env = wire.parse_envelope(raw, policy.max_bytes)
        except EnvelopeError as exc:
            raise _Reject(Reason.MALFORMED_ENVELOPE, str(exc)) from None
        if env.payload_type != wire.PAYLOAD_TYPE:
            raise _Reject(
                Reason.MALFORMED_ENVELOPE, f"unexpected payloadType {env.payload_type[:100]!r}"
            )
        keyids = [kid for kid, _ in env.signatures]
        keyid = topic_probe if topic_probe in keyids else keyids[0]
        key = self.keys.get(keyid)
        if key is None:
            raise _Reject(Reason.UNKNOWN_KEY, f"no enrolled key {keyid[:64]!r}")
        if key.revoked:
            raise _Reject(Reason.REVOKED_KEY, f"key of probe {keyid} is revoked")
        return Signed(topic, raw, topic_probe, env, keyid, key.public_key)

    def _finish(self, item: Signed, signature: bytes | None, now: float) -> Outcome:
        if signature is None:
            raise _Reject(Reason.BAD_SIGNATURE, f"no valid signature by {item.keyid}")
        keyid, topic_probe, payload = item.keyid, item.topic_probe, item.env.payload
        policy = self.policy
        try:
            record = self._decoder.decode(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise _Reject(Reason.MALFORMED_JSON, f"payload is not JSON: {exc}") from None
        except RecursionError:
            raise _Reject(Reason.MALFORMED_JSON, "payload is nested too deeply") from None
        if json_depth(record) > MAX_JSON_DEPTH:
            raise _Reject(Reason.MALFORMED_JSON, f"payload nests deeper than {MAX_JSON_DEPTH}")
        self._validate(record)
        start_ts = self._start_time(record)
        if record["probe_id"] != keyid:
            raise _Reject(
                Reason.PROBE_MISMATCH,
                f"payload probe_id {record['probe_id']} is not the signer {keyid}",
            )
        if topic_probe != keyid:
            raise _Reject(
                Reason.TOPIC_MISMATCH, f"published under {topic_probe[:64]} but signed by {keyid}"
            )
        start_ts = self.place_start(start_ts, item.age_s, now)
        if start_ts < now - policy.max_age_s:
            raise _Reject(
                Reason.STALE_TIMESTAMP,
                f"measurement_start_time {record['measurement_start_time']} is "
                f"{(now - start_ts) / 86400:.0f} days old",
            )
        verdict = record["verdict"]
        return Accepted(MeasurementRow(
            measurement_id=record["measurement_id"],
            probe_id=keyid,
            test_name=record["test_name"],
            input=record["input"],
            domain=domain_of(record["input"]),
            category_code=record["category_code"],
            probe_cc=record["probe_cc"],
            probe_asn=record["probe_asn"],
            probe_network_name=record["probe_network_name"],
            status=verdict["status"],
            blocking=verdict["blocking"],
            reason=verdict["reason"],
            confirmed=verdict["confirmed"],
            start_ts=start_ts,
            received_ts=now,
            payload_type=item.env.payload_type,
            payload=payload,
            signature=signature,
            probe_seq=record.get("probe_seq"),
        ))

    def place_start(self, claimed: float, age_s: float | None, now: float) -> float:
        """Where a record goes on the time line (``start_ts``; the signed bytes keep the claim).

        The claim stands when it is plausible.  With the probe's age of the record (its boot
        clock, which NTP does not move), the true start lies in [now - age - max_queue_s,
        now - age]: a claim outside it (beyond max_future_s of slack) came from a wrong clock
        and the record is placed at now - age.  Without an age, a claim more than max_future_s
        ahead is placed at its arrival (a measurement cannot start after it was received).
        """
        policy = self.policy
        if age_s is not None:
            latest = now - age_s
            if (claimed > latest + policy.max_future_s
                    or claimed < latest - policy.max_queue_s - policy.max_future_s):
                self.placed["age"] += 1
                return latest
            return claimed
        if claimed > now + policy.max_future_s:
            self.placed["arrival"] += 1
            return now
        return claimed

    def _validate(self, record: Any) -> None:
        if self._fast is None or not self._fast(record):
            try:
                wire.validate_record(record)
            except SchemaError as exc:
                raise _Reject(Reason.SCHEMA_VIOLATION, str(exc)) from None
            if self._fast is not None:
                log.warning("fast schema check disagreed with jsonschema; jsonschema accepted")
        for name in _EXACT_FIELDS:
            if record[name] != record[name].strip():
                raise _Reject(Reason.SCHEMA_VIOLATION, f"{name}: surrounding whitespace")

    @staticmethod
    def _start_time(record: dict[str, Any]) -> float:
        text = record["measurement_start_time"]
        if text != text.strip():
            raise _Reject(Reason.SCHEMA_VIOLATION, "measurement_start_time: surrounding whitespace")
        try:
            return parse_utc(text)
        except ValueError:
            raise _Reject(
                Reason.SCHEMA_VIOLATION, f"measurement_start_time: {text!r} is not a real time"
            ) from None

    # ---- status -------------------------------------------------------------------------
    def _status(self, probe_id: str, raw: bytes, now: float) -> StatusUpdate:
        """Status messages are not signed (a Last Will cannot be); the broker's ACL vouches
        for the topic, and only enrolled, unrevoked probes are recorded."""
        if len(raw) > self.policy.max_status_bytes:
            raise _Reject(Reason.OVERSIZED, f"status of {len(raw)} bytes")
        key = self.keys.get(probe_id)
        if key is None:
            raise _Reject(Reason.UNKNOWN_KEY, f"status from unenrolled probe {probe_id[:64]!r}")
        if key.revoked:
            raise _Reject(Reason.REVOKED_KEY, f"status from revoked probe {probe_id}")
        try:
            state = status_state(raw)
        except RecursionError:
            raise _Reject(Reason.MALFORMED_JSON, "status is nested too deeply") from None
        return StatusUpdate(probe_id, state, bytes(raw), now)

    # ---- rejection ----------------------------------------------------------------------
    @staticmethod
    def _rejected(
        reason: Reason,
        detail: str,
        topic: str,
        raw: bytes,
        now: float,
        parts: tuple[str, str] | None,
    ) -> Rejected:
        return Rejected(
            QuarantineItem(
                reason=str(reason),
                detail=detail,
                topic=topic,
                raw=bytes(raw),
                received_ts=now,
                probe_id=parts[0][:64] if parts else None,
            )
        )


def json_depth(value: Any) -> int:
    """How deeply ``value`` (decoded JSON) nests containers; iterative, linear in its size."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
    return deepest


def status_state(raw: bytes) -> str:
    """"online"/"offline" from a status payload (JSON object or plain word), else "unknown".

    An empty payload is the retained status being cleared: "cleared".
    """
    word = raw.strip()
    if not word:
        return "cleared"
    if word in (b"online", b"offline"):
        return word.decode()
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return "unknown"
    if isinstance(value, dict):
        value = value.get("state", value.get("status"))
    if isinstance(value, str) and value in ("online", "offline"):
        return value
    return "unknown"
