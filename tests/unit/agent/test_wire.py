"""agent.wire.envelope against the published vectors (docs/envelope-spec.md), forgeries and
identifiers."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import EnvelopeError, SchemaError, SignatureError, WireError
from agent.wire import envelope as wire

VECTORS_FILE = Path(__file__).resolve().parents[2] / "data" / "envelope_vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_FILE.read_text("utf-8"))
KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["key"]["seed_hex"]))
PROBE_ID = VECTORS["key"]["probe_id"]
UUID7_RE = re.compile(wire.measurement_schema()["properties"]["measurement_id"]["pattern"])


def vector(name: str) -> dict[str, Any]:
    return next(v for v in VECTORS["vectors"] if v["name"] == name)


def envelope_dict(**changes: Any) -> dict[str, Any]:
    env: dict[str, Any] = json.loads(vector("record-agent-wire")["envelope"])
    env.update(changes)
    return env


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# ---- the published vectors ----------------------------------------------------------------------
def test_vector_key_is_rfc8032_test_1() -> None:
    raw = wire.raw_public_key(KEY.public_key())
    assert raw.hex() == VECTORS["key"]["public_key_hex"]
    assert base64.b64encode(raw).decode() == VECTORS["key"]["public_key_b64"]
    assert hashlib.sha256(raw).hexdigest() == VECTORS["key"]["public_key_sha256_hex"]


def test_vector_probe_id() -> None:
    assert wire.probe_id_for(KEY.public_key()) == PROBE_ID
    assert wire.probe_id_for(bytes.fromhex(VECTORS["key"]["public_key_hex"])) == PROBE_ID


def test_pae_matches_dsse_spec_example() -> None:
    ex = VECTORS["pae_dsse_spec_example"]
    got = wire.pae(ex["payload_type"], ex["payload_utf8"].encode())
    assert got == ex["pae_utf8"].encode()


def test_record_vector_is_schema_valid_and_encodes_to_the_payload_bytes() -> None:
    record = VECTORS["record"]
    wire.validate_record(record)
    v = vector("record-agent-wire")
    payload = wire.encode_record(record)
    assert payload == base64.b64decode(v["payload_b64"])
    assert hashlib.sha256(payload).hexdigest() == v["payload_sha256"]


def test_pae_counts_bytes_not_characters() -> None:
    v = vector("record-agent-wire")
    payload = base64.b64decode(v["payload_b64"])
    assert len(payload) > len(payload.decode("utf-8"))  # the vector has non-ASCII text
    pae = wire.pae(wire.PAYLOAD_TYPE, payload)
    assert pae == base64.b64decode(v["pae_b64"])
    assert pae.startswith(b"DSSEv1 %d %s %d " % (len(wire.PAYLOAD_TYPE), wire.PAYLOAD_TYPE.encode(),
                                                   len(payload)))


def test_sign_envelope_reproduces_the_vector_byte_for_byte() -> None:
    v = vector("record-agent-wire")
    payload = base64.b64decode(v["payload_b64"])
    assert wire.sign_envelope(payload, KEY, PROBE_ID) == v["envelope"].encode()


@pytest.mark.parametrize("name", [v["name"] for v in VECTORS["vectors"]])
def test_every_vector_verifies_and_yields_the_exact_payload(name: str) -> None:
    v = vector(name)
    env = wire.parse_envelope(v["envelope"].encode())
    assert env.keyid == PROBE_ID
    assert env.signatures[0][1] == base64.b64decode(v["sig_b64"])
    payload = wire.verify_envelope(env, KEY.public_key(), PROBE_ID)
    assert payload == base64.b64decode(v["payload_b64"])
    assert wire.pae(env.payload_type, payload) == base64.b64decode(v["pae_b64"])
    wire.validate_record(json.loads(payload))


def test_independent_implementation_signed_the_same_bytes_identically() -> None:
    ours, theirs = vector("record-agent-wire"), vector("record-securesystemslib")
    assert theirs["producer"].startswith("securesystemslib")
    assert theirs["envelope"] != ours["envelope"]  # its own JSON serialisation...
    for key in ("payload_b64", "pae_b64", "sig_b64"):  # ...of the same signed content
        assert theirs[key] == ours[key]


def test_pretty_printed_payload_verifies_without_reencoding() -> None:
    v = vector("pretty-record-securesystemslib")
    payload = wire.verify_envelope(
        wire.parse_envelope(v["envelope"].encode()), KEY.public_key(), PROBE_ID
    )
    assert b"\n  " in payload  # verified as received, indentation and all
    assert wire.encode_record(json.loads(payload)) != payload


def test_securesystemslib_verifies_our_envelope_now() -> None:
    """Cross-check live, in case the installed securesystemslib differs from the recorded one."""
    dsse = pytest.importorskip("securesystemslib.dsse")
    signer_mod = pytest.importorskip("securesystemslib.signer")
    payload = wire.encode_record(VECTORS["record"])
    ours = json.loads(wire.sign_envelope(payload, KEY, PROBE_ID))
    env = dsse.Envelope.from_dict(ours)
    public = signer_mod.SSlibKey.from_crypto(KEY.public_key(), keyid=PROBE_ID)
    accepted = env.verify([public], 1)
    assert list(accepted) == [PROBE_ID]
    assert env.pae() == wire.pae(wire.PAYLOAD_TYPE, payload)


def test_vectors_file_is_what_the_generator_makes() -> None:
    pytest.importorskip("securesystemslib")
    from scripts.make_envelope_vectors import build

    assert build() == VECTORS


# ---- forged and malformed envelopes -------------------------------------------------------------
def _verify(data: bytes, key: Ed25519PrivateKey = KEY, keyid: str = PROBE_ID) -> bytes:
    return wire.verify_envelope(wire.parse_envelope(data), key.public_key(), keyid)


def _flip(b64: str, index: int) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_flipped_payload_bit_is_refused() -> None:
    env = envelope_dict()
    env["payload"] = _flip(env["payload"], 40)
    with pytest.raises(SignatureError):
        _verify(dumps(env))


def test_flipped_signature_bit_is_refused() -> None:
    env = envelope_dict()
    env["signatures"][0]["sig"] = _flip(env["signatures"][0]["sig"], 5)
    with pytest.raises(SignatureError):
        _verify(dumps(env))


def test_other_key_is_refused() -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError):
        _verify(vector("record-agent-wire")["envelope"].encode(), key=other)


def test_signature_under_another_keyid_is_not_used() -> None:
    env = envelope_dict()
    env["signatures"][0]["keyid"] = "someoneelse"
    with pytest.raises(SignatureError):
        _verify(dumps(env))


def test_changed_payload_type_is_refused_even_if_resigned() -> None:
    payload = base64.b64decode(vector("record-agent-wire")["payload_b64"])
    data = wire.sign_envelope(payload, KEY, PROBE_ID, payload_type="application/json")
    with pytest.raises(EnvelopeError, match="payloadType"):
        _verify(data)


def test_payload_type_is_authenticated() -> None:
    """Swap payloadType after signing: the PAE differs, so the signature no longer holds."""
    payload = base64.b64decode(vector("record-agent-wire")["payload_b64"])
    data = json.loads(wire.sign_envelope(payload, KEY, PROBE_ID, payload_type="x/y"))
    data["payloadType"] = wire.PAYLOAD_TYPE
    with pytest.raises(SignatureError):
        _verify(dumps(data))


def test_truncated_signature_is_refused() -> None:
    env = envelope_dict()
    sig = base64.b64decode(env["signatures"][0]["sig"])
    env["signatures"][0]["sig"] = base64.b64encode(sig[:32]).decode()
    with pytest.raises(SignatureError):
        _verify(dumps(env))


def test_extra_signatures_by_others_do_not_hide_a_valid_one() -> None:
    env = envelope_dict()
    bogus = {"keyid": PROBE_ID, "sig": base64.b64encode(b"\x00" * 64).decode()}
    env["signatures"] = [bogus, *env["signatures"]]
    assert _verify(dumps(env)) == base64.b64decode(env["payload"])


def test_unknown_fields_are_ignored_as_dsse_requires() -> None:
    env = envelope_dict(comment="hello")
    env["signatures"][0]["extra"] = 1
    assert _verify(dumps(env)) == base64.b64decode(env["payload"])


def test_urlsafe_unpadded_base64_is_accepted_as_dsse_allows() -> None:
    env = envelope_dict()
    payload = base64.b64decode(env["payload"])
    env["payload"] = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    sig = base64.b64decode(env["signatures"][0]["sig"])
    env["signatures"][0]["sig"] = base64.urlsafe_b64encode(sig).decode().rstrip("=")
    assert _verify(dumps(env)) == payload


def test_missing_keyid_means_empty_and_finds_no_probe_signature() -> None:
    env = envelope_dict()
    del env["signatures"][0]["keyid"]
    parsed = wire.parse_envelope(dumps(env))
    assert parsed.keyid == ""
    with pytest.raises(SignatureError):
        wire.verify_envelope(parsed, KEY.public_key(), PROBE_ID)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'"a string"', "not a JSON object"),
        (dumps({"payload": "aGk=", "signatures": [{"keyid": "k", "sig": "aGk="}]}),
         "payloadType"),
        (dumps({"payloadType": 5, "payload": "aGk=", "signatures": [{"keyid": "k", "sig": ""}]}),
         "payloadType"),
        (dumps({"payloadType": "t", "signatures": [{"keyid": "k", "sig": "aGk="}]}), "payload"),
        (dumps({"payloadType": "t", "payload": 12, "signatures": [{"sig": "aGk="}]}), "payload"),
        (dumps({"payloadType": "t", "payload": "a$b=", "signatures": [{"sig": "aGk="}]}),
         "payload is not valid base64"),
        (dumps({"payloadType": "t", "payload": "aGk=\n", "signatures": [{"sig": "aGk="}]}),
         "base64"),
        (dumps({"payloadType": "t", "payload": "aGkxa", "signatures": [{"sig": "aGk="}]}),
         "impossible length"),
        (dumps({"payloadType": "t", "payload": "aGk="}), "signatures"),
        (dumps({"payloadType": "t", "payload": "aGk=", "signatures": []}), "signatures"),
        (dumps({"payloadType": "t", "payload": "aGk=", "signatures": {"keyid": "k"}}),
         "signatures"),
        (dumps({"payloadType": "t", "payload": "aGk=", "signatures": ["x"]}), "signature entry"),
        (dumps({"payloadType": "t", "payload": "aGk=", "signatures": [{"keyid": 1, "sig": ""}]}),
         "signature entry"),
        (dumps({"payloadType": "t", "payload": "aGk=", "signatures": [{"keyid": "k"}]}), "sig"),
        (b'{"payloadType":"t","payload":"aGk=","payload":"aGk=","signatures":[]}',
         "duplicate key 'payload'"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not JSON"),
    ],
)
def test_malformed_envelopes_raise_envelope_error(data: bytes, match: str) -> None:
    with pytest.raises(EnvelopeError, match=match):
        wire.parse_envelope(data)


def test_oversized_envelope_is_refused_before_parsing() -> None:
    data = b" " * (wire.MAX_ENVELOPE_BYTES + 1)
    with pytest.raises(EnvelopeError, match="over the"):
        wire.parse_envelope(data)
    with pytest.raises(EnvelopeError, match="over the 10 limit"):
        wire.parse_envelope(b'{"a": 1234567}', max_bytes=10)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        env = wire.parse_envelope(data)
    except WireError:
        return
    with pytest.raises(WireError):
        wire.verify_envelope(env, KEY.public_key(), PROBE_ID)


@settings(max_examples=50, deadline=None)
@given(payload=st.binary(max_size=4096), ptype=st.text(min_size=1, max_size=80))
def test_sign_then_verify_roundtrip(payload: bytes, ptype: str) -> None:
    data = wire.sign_envelope(payload, KEY, PROBE_ID, payload_type=ptype)
    env = wire.parse_envelope(data)
    assert wire.verify_envelope(env, KEY.public_key(), PROBE_ID, payload_type=ptype) == payload


# ---- record bytes -------------------------------------------------------------------------------
def test_encode_record_is_sorted_compact_utf8() -> None:
    assert wire.encode_record({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_encode_record_refuses_non_json_numbers(value: float) -> None:
    with pytest.raises(SchemaError, match="no strict JSON"):
        wire.encode_record({"test_runtime": value})


def test_encode_record_refuses_lone_surrogates() -> None:
    with pytest.raises(SchemaError, match="no strict JSON"):
        wire.encode_record({"input": "\udcff"})


# ---- probe ids ----------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_probe_id_shape_and_derivation(raw: bytes) -> None:
    pid = wire.probe_id_for(raw)
    assert re.fullmatch(r"[a-z2-7]{26}", pid)
    decoded = base64.b32decode(pid.upper() + "=" * 6)
    assert decoded == hashlib.sha256(raw).digest()[:16]


def test_probe_id_matches_the_schema_and_differs_per_key() -> None:
    pattern = wire.measurement_schema()["properties"]["probe_id"]["pattern"]
    ids = {wire.probe_id_for(Ed25519PrivateKey.generate().public_key()) for _ in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(pattern, i) for i in ids)


# ---- UUIDv7 -------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 48) - 1))
def test_uuid7_layout(ms: int) -> None:
    value = wire.uuid7(ms)
    assert UUID7_RE.fullmatch(value)
    u = uuid.UUID(value)
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    assert u.int >> 80 == ms


def test_uuid7_now_is_current_and_sorts_by_time() -> None:
    import time

    before = int(time.time() * 1000)
    value = wire.uuid7()
    after = int(time.time() * 1000)
    assert before <= uuid.UUID(value).int >> 80 <= after
    ids = [wire.uuid7(1_700_000_000_000 + i) for i in range(50)]
    assert sorted(ids) == ids
    assert len({wire.uuid7(5) for _ in range(100)}) == 100  # random bits differ within one ms


def test_the_specs_example_verifier_accepts_the_vectors_and_refuses_a_forgery() -> None:
    """docs/envelope-spec.md's standalone verifier must keep working (docs that cannot rot)."""
    spec = (Path(__file__).resolve().parents[3] / "docs" / "envelope-spec.md").read_text("utf-8")
    block = spec.split("<!-- verify-example -->", 1)[1].split("```python", 1)[1]
    namespace: dict[str, Any] = {}
    exec(block.split("```", 1)[0], namespace)
    verify = namespace["verify"]
    for v in VECTORS["vectors"]:
        record = verify(v["envelope"].encode(), VECTORS["key"]["public_key_b64"])
        assert record["probe_id"] == PROBE_ID
    forged = envelope_dict()
    forged["payload"] = _flip(forged["payload"], 3)
    with pytest.raises(ValueError, match="no valid signature"):
        verify(dumps(forged), VECTORS["key"]["public_key_b64"])
