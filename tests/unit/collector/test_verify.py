"""collector.ingest.verify: every rejection reason, and what an accepted message becomes."""

from __future__ import annotations

import base64
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.wire import envelope as wire
from collector.ingest.verify import (
    Accepted,
    KeyTable,
    ProbeKey,
    Reason,
    Rejected,
    Signed,
    StatusReceived,
    Verifier,
    VerifyPolicy,
    crypto_jobs,
    crypto_results,
    domain_of,
    init_verify_worker,
    status_state,
    verify_jobs,
)
from collector.store import IngestBatch, open_store
from collector.store.base import ProbeRecord
from lab.probes import TestProbe, iso

NOW = time.time()


def enrolled(*probes: TestProbe, revoked: tuple[TestProbe, ...] = ()) -> KeyTable:
    when = datetime.now(UTC)
    return KeyTable(
        [ProbeRecord(p.probe_id, p.public_raw, "", when) for p in probes]
        + [ProbeRecord(p.probe_id, p.public_raw, "", when, revoked_at=when) for p in revoked]
    )


@pytest.fixture
def probe() -> TestProbe:
    return TestProbe.new()


@pytest.fixture
def other() -> TestProbe:
    return TestProbe.new()


@pytest.fixture
def verifier(probe: TestProbe, other: TestProbe) -> Verifier:
    return Verifier(enrolled(probe, other))


def rejected(outcome: object, reason: Reason) -> Rejected:
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason == reason, outcome.item.detail
    return outcome


# ---- accepted -----------------------------------------------------------------------------------
def test_valid_measurement_is_accepted_with_indexed_fields(
    verifier: Verifier, probe: TestProbe
) -> None:
    record = probe.record(input="https://WWW.Example.org:8443/path?q=1", start=NOW - 60)
    raw = probe.envelope(record)
    outcome = verifier.check(probe.topic, raw, NOW)
    assert isinstance(outcome, Accepted)
    row = outcome.row
    assert row.measurement_id == record["measurement_id"]
    assert row.probe_id == probe.probe_id
    assert row.domain == "www.example.org"
    assert (row.probe_cc, row.probe_asn, row.status, row.blocking, row.reason) == (
        "IR", "AS44244", "blocked", "tls", "tls.sni_reset"
    )
    assert row.start_ts == pytest.approx(NOW - 60, abs=1e-3)
    assert row.received_ts == NOW
    # The stored bytes are exactly the signed bytes: anyone can re-verify the row.
    assert row.payload == wire.encode_record(record)
    probe.key.public_key().verify(row.signature, wire.pae(row.payload_type, row.payload))


def test_check_batch_keeps_order(verifier: Verifier, probe: TestProbe) -> None:
    good = probe.envelope()
    msgs = [(probe.topic, good), (probe.topic, b"junk"), (probe.topic, probe.envelope())]
    kinds = [type(o).__name__ for o in verifier.check_batch(msgs, NOW)]
    assert kinds == ["Accepted", "Rejected", "Accepted"]


# ---- size and envelope --------------------------------------------------------------------------
def test_oversized_is_rejected_before_parsing(probe: TestProbe) -> None:
    v = Verifier(enrolled(probe), VerifyPolicy(max_bytes=2000))
    big = probe.envelope(probe.record(test_keys={"blob": "x" * 5000}))
    item = rejected(v.check(probe.topic, big, NOW), Reason.OVERSIZED).item
    assert item.raw == big  # raw bytes kept (the store caps what it keeps)
    assert item.probe_id == probe.probe_id


def test_default_limit_is_the_wire_limit(verifier: Verifier, probe: TestProbe) -> None:
    raw = b"{" + b" " * wire.MAX_ENVELOPE_BYTES + b"}"
    rejected(verifier.check(probe.topic, raw, NOW), Reason.OVERSIZED)


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b"{}",
        b'{"payloadType": "x", "payload": "!!notb64", "signatures": [{"keyid": "a", "sig": ""}]}',
        b'{"payloadType": "x", "payload": "", "signatures": []}',
    ],
)
def test_malformed_envelopes(verifier: Verifier, probe: TestProbe, raw: bytes) -> None:
    rejected(verifier.check(probe.topic, raw, NOW), Reason.MALFORMED_ENVELOPE)


def test_other_payload_type_is_not_a_measurement(verifier: Verifier, probe: TestProbe) -> None:
    payload = wire.encode_record(probe.record())
    raw = wire.sign_envelope(payload, probe.key, probe.probe_id, payload_type="text/plain")
    rejected(verifier.check(probe.topic, raw, NOW), Reason.MALFORMED_ENVELOPE)


# ---- keys and signatures ------------------------------------------------------------------------
def test_unknown_key(verifier: Verifier) -> None:
    stranger = TestProbe.new()
    rejected(verifier.check(stranger.topic, stranger.envelope(), NOW), Reason.UNKNOWN_KEY)


def test_revoked_key(probe: TestProbe) -> None:
    v = Verifier(enrolled(revoked=(probe,)))
    rejected(v.check(probe.topic, probe.envelope(), NOW), Reason.REVOKED_KEY)


def test_forged_signature_with_another_key(verifier: Verifier, probe: TestProbe) -> None:
    forger = TestProbe.new()
    payload = wire.encode_record(probe.record())
    raw = wire.sign_envelope(payload, forger.key, probe.probe_id)  # claims to be `probe`
    rejected(verifier.check(probe.topic, raw, NOW), Reason.BAD_SIGNATURE)


def test_tampered_payload_fails_signature(verifier: Verifier, probe: TestProbe) -> None:
    env = json.loads(probe.envelope(probe.record(verdict={
        "status": "blocked", "blocking": "dns", "reason": "dns.nxdomain", "confirmed": False})))
    payload = base64.b64decode(env["payload"]).replace(b'"blocked"', b'"ok"     ')
    env["payload"] = base64.b64encode(payload).decode()
    raw = json.dumps(env).encode()
    rejected(verifier.check(probe.topic, raw, NOW), Reason.BAD_SIGNATURE)


# ---- payload ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"\xff\xfe not utf-8",
        b'{"a": NaN}',
        b'{"probe_id": "x", "probe_id": "y"}',  # duplicate keys: parsers could disagree
    ],
)
def test_malformed_json(verifier: Verifier, probe: TestProbe, payload: bytes) -> None:
    rejected(verifier.check(probe.topic, probe.sign(payload), NOW), Reason.MALFORMED_JSON)


@pytest.mark.parametrize(
    "change",
    [
        {"verdict": {"status": "censored", "blocking": None, "reason": "", "confirmed": False}},
        {"probe_cc": "iran"},
        {"measurement_id": "not-a-uuid"},
        {"test_runtime": -1},
        {"unexpected_field": 1},
        {"measurement_start_time": "2025-02-30T00:00:00Z"},  # matches the pattern, not a date
        {"measurement_id": wire.uuid7() + "\n"},  # Python's "$" would accept this
    ],
)
def test_schema_violations(
    verifier: Verifier, probe: TestProbe, change: dict[str, object]
) -> None:
    record = probe.record(**change)
    item = rejected(verifier.check(probe.topic, probe.envelope(record), NOW),
                    Reason.SCHEMA_VIOLATION).item
    assert item.detail


def test_missing_field_is_a_schema_violation(verifier: Verifier, probe: TestProbe) -> None:
    record = probe.record()
    del record["verdict"]
    rejected(verifier.check(probe.topic, probe.envelope(record), NOW), Reason.SCHEMA_VIOLATION)


def test_payload_claiming_another_probes_id(
    verifier: Verifier, probe: TestProbe, other: TestProbe
) -> None:
    record = probe.record(probe_id=other.probe_id)  # signed by `probe`, claims to be `other`
    rejected(verifier.check(probe.topic, probe.envelope(record), NOW), Reason.PROBE_MISMATCH)


def test_published_under_another_probes_topic(
    verifier: Verifier, probe: TestProbe, other: TestProbe
) -> None:
    rejected(verifier.check(other.topic, probe.envelope(), NOW), Reason.TOPIC_MISMATCH)


def test_not_a_probe_topic(verifier: Verifier, probe: TestProbe) -> None:
    rejected(verifier.check("vigil/v1/other", probe.envelope(), NOW), Reason.TOPIC_MISMATCH)
    rejected(verifier.check(f"vigil/v1/probes/{probe.probe_id}/commands", probe.envelope(), NOW),
             Reason.TOPIC_MISMATCH)


# ---- time ---------------------------------------------------------------------------------------
def test_future_timestamp_is_stored_at_its_arrival(verifier: Verifier, probe: TestProbe) -> None:
    """A probe clock days ahead (no RTC, wrong NTP) must not lose the record: it is stored,
    its signed bytes untouched, placed at its arrival (it cannot have started later)."""
    record = probe.record(start=NOW + 2 * 86400)
    outcome = verifier.check(probe.topic, probe.envelope(record), NOW)
    assert isinstance(outcome, Accepted), outcome
    assert outcome.row.start_ts == NOW
    assert json.loads(outcome.row.payload)["measurement_start_time"] == iso(NOW + 2 * 86400)
    assert verifier.placed == {"arrival": 1}


DAY = 86400.0


@pytest.mark.parametrize(
    ("claimed", "age", "placed_at", "how"),
    [
        (NOW - 60, 60.0, NOW - 60, None),  # right clock: the claim stands
        (NOW - 600 + 1800, 600.0, NOW - 600 + 1800, None),  # half an hour off: tolerated
        (NOW + 2 * DAY, 600.0, NOW - 600, "age"),  # clock ran 2 days ahead: placed by age
        (NOW - 3 * 365 * DAY, 600.0, NOW - 600, "age"),  # clock years behind (1970-ish)
        (NOW - 20 * DAY, 60.0, NOW - 20 * DAY, None),  # queued at the broker for 20 days
        (NOW - 40 * DAY, 60.0, NOW - 60, "age"),  # longer than any broker keeps it
        (NOW + 2 * DAY, None, NOW, "arrival"),  # no age told (older agent, rebooted)
        (NOW - 5 * DAY, None, NOW - 5 * DAY, None),  # backlog without an age: as claimed
    ],
    # ids without NOW: pytest-xdist's workers must collect the same test names
    ids=["right-clock", "half-an-hour-off", "two-days-ahead", "years-behind",
         "queued-20-days", "queued-40-days", "no-age-ahead", "no-age-backlog"],
)
def test_start_time_placement(
    verifier: Verifier, claimed: float, age: float | None, placed_at: float, how: str | None
) -> None:
    assert verifier.place_start(claimed, age, NOW) == pytest.approx(placed_at)
    assert dict(verifier.placed) == ({how: 1} if how else {})


def test_age_reaches_the_row(verifier: Verifier, probe: TestProbe) -> None:
    raw = probe.envelope(probe.record(start=NOW + 3 * DAY))
    prepared = verifier.prepare_batch([(probe.topic, raw)], NOW, [120.0])
    signed = [p for p in prepared if isinstance(p, Signed)]
    (outcome,) = verifier.finish_batch(prepared, verifier.crypto(signed), NOW)
    assert isinstance(outcome, Accepted) and outcome.row.start_ts == pytest.approx(NOW - 120)


def test_small_clock_skew_is_tolerated(verifier: Verifier, probe: TestProbe) -> None:
    record = probe.record(start=NOW + 600)
    assert isinstance(verifier.check(probe.topic, probe.envelope(record), NOW), Accepted)


def test_stale_timestamp(verifier: Verifier, probe: TestProbe) -> None:
    record = probe.record(measurement_start_time="1970-01-01T00:00:00Z")
    rejected(verifier.check(probe.topic, probe.envelope(record), NOW), Reason.STALE_TIMESTAMP)


def test_months_old_backlog_is_accepted(verifier: Verifier, probe: TestProbe) -> None:
    record = probe.record(start=NOW - 90 * 86400)  # a probe that was offline for a shutdown
    assert isinstance(verifier.check(probe.topic, probe.envelope(record), NOW), Accepted)


# ---- duplicates (decided by the store) -----------------------------------------------------------
def test_replayed_envelope_is_stored_once_and_counted(
    tmp_path: Path, verifier: Verifier, probe: TestProbe
) -> None:
    raw = probe.envelope()
    first = verifier.check(probe.topic, raw, NOW)
    replay = verifier.check(probe.topic, raw, NOW + 5)
    assert isinstance(first, Accepted) and isinstance(replay, Accepted)
    store = open_store(f"sqlite://{tmp_path}/c.db")
    try:
        assert store.write_batch(IngestBatch(measurements=[first.row])).new == 1
        result = store.write_batch(IngestBatch(measurements=[replay.row]))
        assert (result.new, result.duplicates, result.conflicts) == (
            0, (first.row.measurement_id,), ()
        )
        assert store.rejection_counts() == {str(Reason.DUPLICATE): 1}
        assert store.measurement_count() == 1
    finally:
        store.close()


def test_same_id_other_content_is_a_quarantined_duplicate(
    tmp_path: Path, verifier: Verifier, probe: TestProbe
) -> None:
    rec = probe.record()
    first = verifier.check(probe.topic, probe.envelope(rec), NOW)
    altered = verifier.check(
        probe.topic, probe.envelope(dict(rec, input="https://other.example/")), NOW
    )
    assert isinstance(first, Accepted) and isinstance(altered, Accepted)
    store = open_store(f"sqlite://{tmp_path}/c.db")
    try:
        store.write_batch(IngestBatch(measurements=[first.row]))
        result = store.write_batch(IngestBatch(measurements=[altered.row]))
        assert result.conflicts == (rec["measurement_id"],)
        kept = store.get_measurement(rec["measurement_id"])
        assert kept is not None and kept.payload == first.row.payload  # first one wins
        [q] = store.quarantined()
        assert q.reason == "duplicate" and q.raw == altered.row.payload
    finally:
        store.close()


# ---- status -------------------------------------------------------------------------------------
def test_status_messages(verifier: Verifier, probe: TestProbe) -> None:
    online = verifier.check(probe.status_topic, b'{"state": "online", "sent": 3}', NOW)
    assert isinstance(online, StatusReceived)
    assert (online.update.probe_id, online.update.state) == (probe.probe_id, "online")
    offline = verifier.check(probe.status_topic, b"offline", NOW)
    assert isinstance(offline, StatusReceived) and offline.update.state == "offline"
    stranger = TestProbe.new()
    rejected(verifier.check(stranger.status_topic, b"online", NOW), Reason.UNKNOWN_KEY)
    rejected(verifier.check(probe.status_topic, b"x" * 20_000, NOW), Reason.OVERSIZED)


@pytest.mark.parametrize(
    ("raw", "state"),
    [(b"", "cleared"), (b"online", "online"), (b'"offline"', "offline"),
     (b'{"status": "online"}', "online"), (b"{]", "unknown"), (b'{"state": 1}', "unknown")],
)
def test_status_state(raw: bytes, state: str) -> None:
    assert status_state(raw) == state


# ---- robustness ---------------------------------------------------------------------------------
class _BrokenKeys:
    def get(self, probe_id: str) -> ProbeKey | None:
        raise RuntimeError("database driver exploded")


def test_internal_error_is_a_rejection_not_a_crash(probe: TestProbe) -> None:
    v = Verifier(_BrokenKeys())
    item = rejected(v.check(probe.topic, probe.envelope(), NOW), Reason.INTERNAL_ERROR).item
    assert "exploded" in item.detail


@settings(max_examples=200, deadline=None)
@given(topic=st.text(max_size=80), raw=st.binary(max_size=2000))
def test_arbitrary_input_never_raises(topic: str, raw: bytes) -> None:
    p = TestProbe.new()
    outcome = Verifier(enrolled(p)).check(topic, raw, NOW)
    assert isinstance(outcome, Rejected | StatusReceived)


def test_every_reason_is_a_distinct_machine_string() -> None:
    values = [str(r) for r in Reason]
    assert len(set(values)) == len(values)
    assert all(v.replace("_", "").isalpha() and v.islower() for v in values)


@pytest.mark.parametrize(
    ("value", "domain"),
    [
        ("https://www.example.com/x", "www.example.com"),
        ("http://EXAMPLE.org.:80", "example.org"),
        ("example.net", "example.net"),
        ("example.net:443/path", "example.net"),
        ("http://[2001:db8::1]/", "2001:db8::1"),
        ("http://[::1", None),
        (None, None),
        ("", None),
    ],
)
def test_domain_of(value: str | None, domain: str | None) -> None:
    assert domain_of(value) == domain


def test_iso_helper_round_trips() -> None:
    ts = 1_700_000_000.25
    assert datetime.fromisoformat(iso(ts)).timestamp() == ts


# ---- crypto as plain data (the verification-process path) --------------------------------------
def _job(probe: TestProbe, payload: bytes, signer: TestProbe | None = None) -> tuple[
    bytes, bytes, bytes
]:
    message = wire.pae(wire.PAYLOAD_TYPE, payload)
    return probe.public_raw, message, (signer or probe).key.sign(message)


def test_verify_jobs_valid_forged_and_wrong_key(probe: TestProbe, other: TestProbe) -> None:
    payload = wire.encode_record(probe.record())
    raw, message, sig = _job(probe, payload)
    forged = _job(probe, payload, signer=other)  # other's signature claiming to be probe's
    tampered = (raw, message.replace(b'"IR"', b'"US"'), sig)
    wrong_key = (other.public_raw, message, sig)  # probe's signature, checked under other's key
    not_a_key = (b"\x00" * 31, message, sig)
    jobs = [(raw, message, sig), forged, tampered, wrong_key, not_a_key, (raw, message, sig)]
    assert verify_jobs(jobs) == [True, False, False, False, False, True]
    assert verify_jobs([]) == []


def test_verify_jobs_runs_in_a_spawned_worker(probe: TestProbe, other: TestProbe) -> None:
    """Plain data in, bools out: picklable both ways, importable by a fresh interpreter."""
    payload = wire.encode_record(probe.record())
    jobs = [_job(probe, payload), _job(probe, payload, signer=other)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=init_verify_worker) as pool:
        assert pool.submit(verify_jobs, jobs).result(timeout=60) == [True, False]


def test_crypto_jobs_round_trip_matches_inline_crypto(
    verifier: Verifier, probe: TestProbe, other: TestProbe
) -> None:
    """crypto_jobs -> verify_jobs -> crypto_results gives exactly what Verifier.crypto does,
    including envelopes with several signatures by the same keyid (the first valid wins)."""
    payload = wire.encode_record(probe.record())
    good_sig = probe.key.sign(wire.pae(wire.PAYLOAD_TYPE, payload))
    bad_sig = other.key.sign(wire.pae(wire.PAYLOAD_TYPE, payload))
    env = json.loads(probe.envelope())
    env["payload"] = base64.b64encode(payload).decode()
    env["signatures"] = [
        {"keyid": other.probe_id, "sig": base64.b64encode(bad_sig).decode()},
        {"keyid": probe.probe_id, "sig": base64.b64encode(bad_sig).decode()},
        {"keyid": probe.probe_id, "sig": base64.b64encode(good_sig).decode()},
    ]
    multi = json.dumps(env).encode()
    forged = wire.sign_envelope(payload, other.key, probe.probe_id)
    msgs = [(probe.topic, probe.envelope()), (probe.topic, forged), (probe.topic, multi),
            (other.topic, other.envelope())]
    prepared = verifier.prepare_batch(msgs, NOW)
    signed = [p for p in prepared if isinstance(p, Signed)]
    assert len(signed) == 4
    jobs = crypto_jobs(signed)
    assert len(jobs) == 5  # one per signature by the signer's keyid
    via_jobs = crypto_results(signed, verify_jobs(jobs))
    assert via_jobs == Verifier.crypto(signed)
    assert via_jobs[1] is None and via_jobs[2] == good_sig
    kinds = [type(o).__name__ for o in verifier.finish_batch(prepared, via_jobs, NOW)]
    assert kinds == ["Accepted", "Rejected", "Accepted", "Accepted"]
