"""Signed requests to the control helper: agent-side signing, collector-side verification."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.identity import Identity
from agent.wire.envelope import probe_id_for, raw_public_key
from agent.wire.helper_auth import (
    HEADER_NONCE,
    HEADER_PROBE_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    sign_request,
    signing_message,
)
from collector.helper.auth import (
    FileProbeKeys,
    ProbesFileError,
    ReplayCache,
    RequestVerifier,
    parse_probes,
)
from collector.helper.errors import Refusal

NOW = 1_780_000_000.0
PATH = "/api/v1/control"
BODY = b'{"url": "https://example.org/"}'


def make_identity() -> Identity:
    key = Ed25519PrivateKey.generate()
    return Identity(key, probe_id_for(key.public_key()))


def probe_line(identity: Identity, revoked: bool = False) -> str:
    raw = raw_public_key(identity.public_key)
    return json.dumps(
        {"probe_id": identity.probe_id, "public_key": base64.b64encode(raw).decode(),
         "revoked": revoked}
    )


class MemoryKeys:
    def __init__(self, entries: dict[str, tuple[Ed25519PublicKey, bool]]) -> None:
        self.entries = entries

    async def lookup(self, probe_id: str) -> tuple[Ed25519PublicKey, bool] | None:
        return self.entries.get(probe_id)


@pytest.fixture
def probe() -> Identity:
    return make_identity()


@pytest.fixture
def verifier(probe: Identity) -> RequestVerifier:
    return RequestVerifier(MemoryKeys({probe.probe_id: (probe.public_key, False)}),
                           max_skew=300, clock=lambda: NOW)


async def refused(verifier: RequestVerifier, headers: dict[str, str], *,
                  method: str = "POST", path: str = PATH, body: bytes = BODY) -> str:
    with pytest.raises(Refusal) as info:
        await verifier.verify(method, path, headers, body)
    return info.value.reason


def test_sign_request_headers_and_message(probe: Identity) -> None:
    nonce = "A" * 24
    headers = sign_request(probe, "post", PATH, BODY, NOW + 0.9, nonce=nonce)
    assert headers[HEADER_PROBE_ID] == probe.probe_id
    assert headers[HEADER_TIMESTAMP] == str(int(NOW))
    assert headers[HEADER_NONCE] == nonce
    signature = base64.b64decode(headers[HEADER_SIGNATURE])
    message = signing_message("POST", PATH, probe.probe_id, str(int(NOW)), nonce,
                              hashlib.sha256(BODY).hexdigest())
    assert message.startswith(b"vigil-helper-request-v1\nPOST\n/api/v1/control\n")
    probe.public_key.verify(signature, message)  # raises if wrong


def test_fresh_nonce_per_call(probe: Identity) -> None:
    a = sign_request(probe, "GET", "/api/v1/whoami", b"", NOW)
    b = sign_request(probe, "GET", "/api/v1/whoami", b"", NOW)
    assert a[HEADER_NONCE] != b[HEADER_NONCE]
    assert a[HEADER_SIGNATURE] != b[HEADER_SIGNATURE]


def test_fields_with_line_breaks_cannot_be_signed(probe: Identity) -> None:
    with pytest.raises(ValueError):
        sign_request(probe, "GET", "/a\nb", b"", NOW)


async def test_valid_request_verifies(verifier: RequestVerifier, probe: Identity) -> None:
    headers = sign_request(probe, "POST", PATH, BODY, NOW - 100)
    assert await verifier.verify("POST", PATH, headers, BODY) == probe.probe_id


async def test_missing_headers_are_unauthenticated(verifier: RequestVerifier,
                                                   probe: Identity) -> None:
    assert await refused(verifier, {}) == "unauthenticated"
    headers = sign_request(probe, "POST", PATH, BODY, NOW)
    del headers[HEADER_SIGNATURE]
    assert await refused(verifier, headers) == "unauthenticated"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (HEADER_PROBE_ID, "NOT-A-PROBE-ID"),
        (HEADER_TIMESTAMP, "yesterday"),
        (HEADER_NONCE, "short"),
        (HEADER_SIGNATURE, "%%%"),
        (HEADER_SIGNATURE, base64.b64encode(b"x" * 10).decode()),
    ],
)
async def test_malformed_headers_are_unauthenticated(
    verifier: RequestVerifier, probe: Identity, field: str, value: str
) -> None:
    headers = sign_request(probe, "POST", PATH, BODY, NOW)
    headers[field] = value
    assert await refused(verifier, headers) == "unauthenticated"


async def test_tampering_breaks_the_signature(verifier: RequestVerifier, probe: Identity) -> None:
    headers = sign_request(probe, "POST", PATH, BODY, NOW)
    assert await refused(verifier, headers, body=BODY + b" ") == "unauthenticated"
    assert await refused(verifier, headers, path="/api/v1/whoami") == "unauthenticated"
    assert await refused(verifier, headers, method="GET") == "unauthenticated"


async def test_other_probes_key_does_not_verify(verifier: RequestVerifier, probe: Identity) -> None:
    impostor = Identity(Ed25519PrivateKey.generate(), probe.probe_id)  # claims the id
    headers = sign_request(impostor, "POST", PATH, BODY, NOW)
    assert await refused(verifier, headers) == "unauthenticated"


async def test_unknown_probe(verifier: RequestVerifier) -> None:
    headers = sign_request(make_identity(), "POST", PATH, BODY, NOW)
    assert await refused(verifier, headers) == "unauthenticated"


@pytest.mark.parametrize("offset", [-301, 301, -86400])
async def test_stale_or_future_timestamps(verifier: RequestVerifier, probe: Identity,
                                          offset: int) -> None:
    headers = sign_request(probe, "POST", PATH, BODY, NOW + offset)
    assert await refused(verifier, headers) == "clock_skew"


async def test_replay_is_refused(verifier: RequestVerifier, probe: Identity) -> None:
    headers = sign_request(probe, "POST", PATH, BODY, NOW)
    await verifier.verify("POST", PATH, headers, BODY)
    assert await refused(verifier, headers) == "replayed"


async def test_revoked_probe_is_told_only_after_a_valid_signature(probe: Identity) -> None:
    verifier = RequestVerifier(MemoryKeys({probe.probe_id: (probe.public_key, True)}),
                               clock=lambda: NOW)
    good = sign_request(probe, "POST", PATH, BODY, NOW)
    assert await refused(verifier, good) == "probe_revoked"
    forged = dict(good, **{HEADER_SIGNATURE: base64.b64encode(b"\0" * 64).decode()})
    assert await refused(verifier, forged) == "unauthenticated"


def test_replay_cache_expires_and_evicts_by_age_when_full() -> None:
    now = [0.0]
    cache = ReplayCache(ttl=10, capacity=2, clock=lambda: now[0])
    assert cache.check_and_add(b"a", 100.0)
    assert not cache.check_and_add(b"a", 100.0)
    assert cache.check_and_add(b"b", 101.0)
    assert cache.check_and_add(b"c", 102.0)  # full: "a" evicted, nobody refused
    assert cache.evicted == 1 and cache.horizon == 100.0
    assert not cache.check_and_add(b"a", 100.0)  # forgotten, but issued before the horizon
    assert not cache.check_and_add(b"d", 99.0)  # same: anything that old is refused
    assert len(cache) == 2
    now[0] = 11
    assert cache.check_and_add(b"e", 103.0)  # the others expired
    assert len(cache) == 1


# ---- probes file --------------------------------------------------------------------------------
def test_parse_probes_file(probe: Identity) -> None:
    other = make_identity()
    text = "\n".join([
        "# enrolled probes", probe_line(probe), probe_line(other), "",
        probe_line(other, revoked=True),  # appended revocation
        probe_line(other, revoked=False),  # cannot un-revoke by appending
    ])
    entries = parse_probes(text, "probes.jsonl")
    assert entries[probe.probe_id][1] is False
    assert entries[other.probe_id][1] is True


def test_bad_probes_file_is_rejected_whole_with_locations(probe: Identity) -> None:
    wrong_id = json.loads(probe_line(probe))
    wrong_id["probe_id"] = make_identity().probe_id
    text = "\n".join([probe_line(probe), "{not json", json.dumps(wrong_id),
                      json.dumps({"probe_id": probe.probe_id, "public_key": "AAAA",
                                  "revoked": False}),
                      json.dumps({"probe_id": probe.probe_id,
                                  "public_key": json.loads(probe_line(probe))["public_key"]})])
    with pytest.raises(ProbesFileError) as info:
        parse_probes(text, "p.jsonl")
    message = str(info.value)
    for line in ("p.jsonl:2", "p.jsonl:3", "p.jsonl:4", "p.jsonl:5"):
        assert line in message
    assert "p.jsonl:1" not in message


async def test_file_probe_keys_follow_file_changes(tmp_path: Path, probe: Identity) -> None:
    path = tmp_path / "probes.jsonl"
    path.write_text(probe_line(probe) + "\n")
    now = [0.0]
    keys = FileProbeKeys(path, check_interval=5, clock=lambda: now[0])
    found = await keys.lookup(probe.probe_id)
    assert found is not None and found[1] is False
    path.write_text(probe_line(probe) + "\n" + probe_line(probe, revoked=True) + "\n")
    now[0] = 6
    found = await keys.lookup(probe.probe_id)
    assert found is not None and found[1] is True
    path.write_text("{broken\n")  # a bad replacement keeps the previous keys
    now[0] = 12
    found = await keys.lookup(probe.probe_id)
    assert found is not None and found[1] is True
    assert await keys.lookup(make_identity().probe_id) is None


def test_missing_probes_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProbesFileError, match="cannot read"):
        FileProbeKeys(tmp_path / "absent.jsonl")
