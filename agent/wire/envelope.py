"""The wire format both sides verify: record bytes, DSSE envelopes, Ed25519, the JSON Schema.

Only the standard library and ``cryptography`` (plus a JSON Schema validator, imported when a
record is checked: ``jsonschema`` where installed, the pure-Python ``fastjsonschema`` on the
probe): the collector imports this module, and a third party can re-implement it from
``docs/envelope-spec.md``.

Envelope (DSSE v1, https://github.com/secure-systems-lab/dsse)::

    {"payloadType": PAYLOAD_TYPE, "payload": base64(record bytes),
     "signatures": [{"keyid": probe_id, "sig": base64(Ed25519(PAE(payloadType, record bytes)))}]}

The signature is checked over the payload bytes exactly as received, before they are parsed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.errors import EnvelopeError, SchemaError, SignatureError

PAYLOAD_TYPE = "application/vnd.vigil.measurement+json; version=1"
MAX_ENVELOPE_BYTES = 1_048_576  # 1 MiB: measurements are a few kB; anything larger is refused


# ---- identifiers -------------------------------------------------------------------------------
def uuid7(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, random rest; sorts by time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return str(uuid.UUID(int=value))


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def probe_id_for(public_key: Ed25519PublicKey | bytes) -> str:
    """Probe id: lower-case unpadded base32 of the first 16 bytes of SHA-256(raw public key)."""
    raw = public_key if isinstance(public_key, bytes) else raw_public_key(public_key)
    digest = hashlib.sha256(raw).digest()[:16]
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


# ---- record bytes ------------------------------------------------------------------------------
def encode_record(record: dict[str, Any]) -> bytes:
    """Canonical-enough bytes for a record: sorted keys, no spaces, UTF-8.

    Verification never re-encodes: it checks the bytes received.  Sorting only makes two
    encodings of the same record by this implementation identical (useful for dedup checks).

    Raises SchemaError for values that have no strict JSON/UTF-8 form (NaN, Infinity, lone
    surrogates): Python would otherwise emit ``NaN`` (not JSON, which other parsers reject)
    or fail with a bare UnicodeEncodeError.
    """
    try:
        text = json.dumps(
            record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise SchemaError(f"record has no strict JSON encoding: {exc}") from None


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


# ---- envelopes ---------------------------------------------------------------------------------
def sign_envelope(
    payload: bytes, key: Ed25519PrivateKey, keyid: str, payload_type: str = PAYLOAD_TYPE
) -> bytes:
    sig = key.sign(pae(payload_type, payload))
    env = {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": keyid, "sig": base64.b64encode(sig).decode("ascii")}],
    }
    return json.dumps(env, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, raw signature)

    @property
    def keyid(self) -> str:
        return self.signatures[0][0]


_URLSAFE_TO_STD = str.maketrans("-_", "+/")


def _b64(value: Any, what: str) -> bytes:
    """Decode base64 as DSSE v1.0 allows it: standard or URL-safe alphabet, padded or not.

    Anything else (whitespace, other characters, impossible lengths) is an EnvelopeError.
    """
    if not isinstance(value, str):
        raise EnvelopeError(f"{what} is not a base64 string")
    std = value.translate(_URLSAFE_TO_STD)
    if len(std) % 4 == 1:
        raise EnvelopeError(f"{what} is not valid base64 (impossible length)")
    if "=" not in std:
        std += "=" * (-len(std) % 4)
    try:
        return base64.b64decode(std, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f"{what} is not valid base64") from exc


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a repeated key is an error, not "last one wins".

    Parsers disagree on duplicates (first wins, last wins, error); an envelope that means
    different things to different verifiers must be refused by all of them.
    """
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise EnvelopeError(f"duplicate key {key!r} in envelope")
        obj[key] = value
    return obj


def parse_envelope(data: bytes, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    if len(data) > max_bytes:
        raise EnvelopeError(f"envelope is {len(data)} bytes, over the {max_bytes} limit")
    try:
        obj = json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EnvelopeError(f"envelope is not JSON: {exc}") from exc
    except RecursionError:
        raise EnvelopeError("envelope is nested too deeply") from None
    if not isinstance(obj, dict):
        raise EnvelopeError("envelope is not a JSON object")
    ptype = obj.get("payloadType")
    if not isinstance(ptype, str):
        raise EnvelopeError("payloadType missing")
    payload = _b64(obj.get("payload"), "payload")
    sigs = obj.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise EnvelopeError("signatures missing")
    parsed: list[tuple[str, bytes]] = []
    for s in sigs[:8]:
        # DSSE: keyid is optional and "unset" means "empty"; a verifier looking for a probe's
        # key then finds no signature by it (SignatureError), which is the right rejection.
        if not isinstance(s, dict) or not isinstance(s.get("keyid", ""), str):
            raise EnvelopeError("signature entry is not an object with a string keyid")
        parsed.append((s.get("keyid", ""), _b64(s.get("sig"), "sig")))
    return Envelope(payload_type=ptype, payload=payload, signatures=tuple(parsed))


def verify_envelope(
    env: Envelope, public_key: Ed25519PublicKey, keyid: str, payload_type: str = PAYLOAD_TYPE
) -> bytes:
    """Return the payload bytes if a signature by ``keyid`` verifies; raise SignatureError.

    ``payload_type`` is the type the caller expects (measurements by default; operator
    commands use their own), so an envelope of one kind is never accepted as the other.
    """
    if env.payload_type != payload_type:
        raise EnvelopeError(f"unexpected payloadType {env.payload_type!r}")
    message = pae(env.payload_type, env.payload)
    for kid, sig in env.signatures:
        if kid != keyid:
            continue
        try:
            public_key.verify(sig, message)
        except InvalidSignature:
            continue
        return env.payload
    raise SignatureError(f"no valid signature by {keyid}")


# ---- schema ------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def measurement_schema() -> dict[str, Any]:
    text = resources.files("agent").joinpath("schema/measurement.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@lru_cache(maxsize=1)
def _validator() -> Any:
    """jsonschema when installed (the collector's and the developers' judge), else the
    pure-Python fastjsonschema: the probe does not need jsonschema's compiled dependencies
    (rpds-py has no wheels for 32-bit ARM) only to check its own records before signing."""
    try:
        import jsonschema
    except ImportError:
        return None
    return jsonschema.Draft202012Validator(measurement_schema())


@lru_cache(maxsize=1)
def _light_validator() -> Any:
    import fastjsonschema

    return fastjsonschema.compile(measurement_schema())


def validate_record(record: Any) -> None:
    """Raise SchemaError naming the first violation."""
    validator = _validator()
    if validator is None:
        _validate_light(record)
        return
    errors = sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        raise SchemaError(f"{where}: {err.message}")


def _validate_light(record: Any) -> None:
    import fastjsonschema

    try:
        _light_validator()(record)
    except fastjsonschema.JsonSchemaValueException as exc:
        path = [str(p) for p in (exc.path or [])][1:]  # the first element is "data"
        raise SchemaError(f"{'/'.join(path) or '(root)'}: {exc.message}") from None
