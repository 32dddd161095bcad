"""Operator-signed campaigns: extra URLs, a higher frequency and a time window (an election day).

The collector signs a *command* with the operator's Ed25519 key and publishes it, retained, on
``vigil/v1/probes/{probe_id}/commands`` or ``vigil/v1/campaigns/{cc}``.  The agent acts on it
only after all of these hold, checked in this order so nothing unverified is ever parsed:

1. the envelope is a DSSE envelope of at most ``MAX_COMMAND_BYTES``;
2. its payloadType is ``COMMAND_PAYLOAD_TYPE`` (a measurement envelope is not a command);
3. a signature by a configured operator key verifies over the payload bytes as received;
4. the payload is a well-formed command (strict field checks, bounded sizes);
5. it is meant for this probe (its id, or its country);
6. it is inside its validity window (``issued_at`` not in the future, ``not_after`` not past);
7. its ``command_id`` was never accepted before (the replay store in the state directory).

Retained messages come back on every reconnect, so a replay of an accepted command is the
normal case, not an attack: it is reported as ``DUPLICATE`` and changes nothing.  Accepted
campaigns are persisted so a restarted agent keeps running them until they expire.

Payload (JSON, version 1)::

    {"v": 1, "kind": "campaign", "command_id": "<uuid7>", "issued_at": "...Z",
     "not_before": "...Z", "not_after": "...Z", "audience": {"probe_id": "..."} | {"cc": "IR"},
     "note": "election day",
     "tests": [{"test_name": "web_connectivity", "interval": 600,
                "inputs": [{"input": "https://example.org/", "category_code": "NEWS"}]}]}

    {"v": 1, "kind": "cancel", "command_id": "<uuid7>", "issued_at": "...Z", "not_after": "...Z",
     "audience": {...}, "campaign_id": "<command_id of the campaign to stop>"}
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import ConfigError, EnvelopeError, SignatureError, WireError
from agent.wire.envelope import parse_envelope, probe_id_for, verify_envelope
from agent.wire.record import Target

log = logging.getLogger(__name__)

COMMAND_PAYLOAD_TYPE = "application/vnd.vigil.command+json; version=1"
MAX_COMMAND_BYTES = 262_144  # 256 KiB: room for ~1,000 URLs, refuses floods
MAX_INPUTS = 1000
MAX_TESTS = 8
MIN_INTERVAL = 60.0  # seconds: a campaign may raise the frequency, not turn probes into a DoS
MAX_INTERVAL = 7 * 86400.0
MAX_WINDOW = timedelta(days=31)
CLOCK_SKEW = timedelta(minutes=5)  # tolerated difference between operator's and probe's clocks
REPLAY_FILE = "campaigns.json"

_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_TEST_RE = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
_CC_RE = re.compile(r"^[A-Z]{2}$")
_PROBE_RE = re.compile(r"^[a-z2-7]{26}$")
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


class CommandError(WireError):
    """A signed command that is malformed or not acceptable (never acted upon)."""


class Result(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # already accepted: a retained message or a replay
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Decision:
    result: Result
    reason: str  # machine string: "ok", "signature", "expired", "replayed", "audience", ...
    command: Command | None = None


@dataclass(frozen=True, slots=True)
class Audience:
    probe_id: str | None = None
    cc: str | None = None

    def matches(self, probe_id: str, cc: str | None) -> bool:
        if self.probe_id is not None:
            return self.probe_id == probe_id
        return cc is not None and self.cc == cc.upper()

    def to_json(self) -> dict[str, str]:
        return {"probe_id": self.probe_id} if self.probe_id else {"cc": self.cc or ""}


@dataclass(frozen=True, slots=True)
class CampaignTest:
    test_name: str
    interval: float
    inputs: tuple[Target, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "test_name": self.test_name,
            "interval": self.interval,
            "inputs": [{"input": t.input, "category_code": t.category_code} for t in self.inputs],
        }


@dataclass(frozen=True, slots=True)
class Command:
    """A verified, well-formed operator command (a campaign or the cancellation of one)."""

    kind: str  # "campaign" | "cancel"
    command_id: str
    issued_at: datetime
    not_before: datetime
    not_after: datetime
    audience: Audience
    note: str = ""
    tests: tuple[CampaignTest, ...] = ()
    campaign_id: str | None = None  # for "cancel": which campaign to stop

    def active(self, now: datetime) -> bool:
        return self.not_before <= now < self.not_after

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": 1,
            "kind": self.kind,
            "command_id": self.command_id,
            "issued_at": format_time(self.issued_at),
            "not_before": format_time(self.not_before),
            "not_after": format_time(self.not_after),
            "audience": self.audience.to_json(),
        }
        if self.kind == "campaign":
            out["note"] = self.note
            out["tests"] = [t.to_json() for t in self.tests]
        else:
            out["campaign_id"] = self.campaign_id
        return out


# ---- keys --------------------------------------------------------------------------------------
def key_id_for(public_key: Ed25519PublicKey) -> str:
    """The operator key's id in envelopes: same derivation as a probe id."""
    return probe_id_for(public_key)


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """Read an operator public key as written in the agent config (base64 of 32 raw bytes)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("operator public key is not valid base64") from None
    if len(raw) != 32:
        raise ConfigError(f"operator public key must be 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


# ---- time --------------------------------------------------------------------------------------
def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(obj: Mapping[str, Any], key: str) -> datetime:
    value = obj.get(key)
    if not isinstance(value, str) or not _TIME_RE.match(value):
        raise CommandError(f"{key} must be an RFC 3339 UTC time ending in Z")
    try:
        return datetime.fromisoformat(value[:-1]).replace(tzinfo=UTC)
    except ValueError:
        raise CommandError(f"{key} is not a valid time") from None


# ---- parsing -----------------------------------------------------------------------------------
def _str(obj: Mapping[str, Any], key: str, max_len: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) > max_len:
        raise CommandError(f"{key} must be a string of at most {max_len} characters")
    return value


def _audience(obj: Any) -> Audience:
    if not isinstance(obj, dict) or len(obj) != 1:
        raise CommandError("audience must be {'probe_id': ...} or {'cc': ...}")
    if "probe_id" in obj:
        pid = obj["probe_id"]
        if not isinstance(pid, str) or not _PROBE_RE.match(pid):
            raise CommandError("audience.probe_id is not a probe id")
        return Audience(probe_id=pid)
    cc = obj.get("cc")
    if not isinstance(cc, str) or not _CC_RE.match(cc):
        raise CommandError("audience.cc must be two upper-case letters")
    return Audience(cc=cc)


def _inputs(items: Any, test_name: str) -> tuple[Target, ...]:
    if not isinstance(items, list) or len(items) > MAX_INPUTS:
        raise CommandError(f"{test_name}: inputs must be a list of at most {MAX_INPUTS}")
    out: list[Target] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise CommandError(f"{test_name}: input #{i} is not an object")
        value = item.get("input")
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 2048):
            raise CommandError(f"{test_name}: input #{i} must be a string of 1..2048 characters")
        if test_name == "web_connectivity" and not (
            isinstance(value, str) and value.startswith(("http://", "https://"))
        ):
            raise CommandError(f"{test_name}: input #{i} is not an http(s) URL")
        cat = item.get("category_code")
        if cat is not None and (not isinstance(cat, str) or len(cat) > 32):
            raise CommandError(f"{test_name}: input #{i} has a bad category_code")
        out.append(Target(input=value, category_code=cat, source=f"campaign:{i}"))
    return tuple(out)


def _tests(items: Any) -> tuple[CampaignTest, ...]:
    if not isinstance(items, list) or not 0 < len(items) <= MAX_TESTS:
        raise CommandError(f"tests must be a list of 1..{MAX_TESTS} entries")
    out: list[CampaignTest] = []
    total = 0
    for item in items:
        if not isinstance(item, dict):
            raise CommandError("each test must be an object")
        name = item.get("test_name")
        if not isinstance(name, str) or not _TEST_RE.match(name):
            raise CommandError("test_name is missing or malformed")
        interval = item.get("interval")
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not MIN_INTERVAL <= interval <= MAX_INTERVAL
        ):
            raise CommandError(
                f"{name}: interval must be {MIN_INTERVAL:.0f}..{MAX_INTERVAL:.0f} seconds"
            )
        inputs = _inputs(item.get("inputs", []), name)
        total += len(inputs)
        out.append(CampaignTest(test_name=name, interval=float(interval), inputs=inputs))
    if total > MAX_INPUTS:
        raise CommandError(f"a campaign lists at most {MAX_INPUTS} inputs in all")
    return tuple(out)


def parse_command(payload: bytes) -> Command:
    """Parse verified payload bytes into a Command (strict: unknown versions are refused)."""
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"payload is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CommandError("payload is not a JSON object")
    if obj.get("v") != 1:
        raise CommandError(f"unsupported command version {obj.get('v')!r}")
    kind = obj.get("kind")
    command_id = obj.get("command_id")
    if not isinstance(command_id, str) or not _ID_RE.match(command_id):
        raise CommandError("command_id must be a lower-case UUIDv7")
    issued_at = _time(obj, "issued_at")
    not_after = _time(obj, "not_after")
    not_before = _time(obj, "not_before") if "not_before" in obj else issued_at
    if not not_before < not_after:
        raise CommandError("not_before must be earlier than not_after")
    if not_after - min(issued_at, not_before) > MAX_WINDOW:
        raise CommandError(f"validity window longer than {MAX_WINDOW.days} days")
    audience = _audience(obj.get("audience"))
    if kind == "campaign":
        return Command(
            kind="campaign",
            command_id=command_id,
            issued_at=issued_at,
            not_before=not_before,
            not_after=not_after,
            audience=audience,
            note=_str(obj, "note", 500) if "note" in obj else "",
            tests=_tests(obj.get("tests")),
        )
    if kind == "cancel":
        target = obj.get("campaign_id")
        if not isinstance(target, str) or not _ID_RE.match(target):
            raise CommandError("cancel.campaign_id must be a UUIDv7")
        return Command(
            kind="cancel",
            command_id=command_id,
            issued_at=issued_at,
            not_before=not_before,
            not_after=not_after,
            audience=audience,
            campaign_id=target,
        )
    raise CommandError(f"unknown command kind {kind!r}")


def verify_command(data: bytes, operator_keys: Iterable[Ed25519PublicKey]) -> Command:
    """Check envelope, payloadType and signature over the received bytes; then parse.

    Raises EnvelopeError / SignatureError / CommandError; never returns an unverified command.
    """
    env = parse_envelope(data, max_bytes=MAX_COMMAND_BYTES)
    if env.payload_type != COMMAND_PAYLOAD_TYPE:
        raise EnvelopeError(f"not a command envelope (payloadType {env.payload_type!r})")
    keys = list(operator_keys)
    if not keys:
        raise SignatureError("no operator key configured: commands are ignored")
    for key in keys:
        try:
            payload = verify_envelope(env, key, key_id_for(key), payload_type=COMMAND_PAYLOAD_TYPE)
        except SignatureError:
            continue
        return parse_command(payload)
    raise SignatureError("no valid signature by a configured operator key")
