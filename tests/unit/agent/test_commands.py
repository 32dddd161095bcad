"""Signed operator campaigns: the agent acts only on fresh, unreplayed commands signed by the
operator key it trusts, and ignores everything else without raising."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.daemon.campaigns import CampaignBook, handle_command
from agent.errors import ConfigError, UsageError
from agent.wire.commands import (
    COMMAND_PAYLOAD_TYPE,
    MAX_INPUTS,
    Audience,
    Result,
    key_id_for,
    parse_command,
    public_key_from_b64,
)
from agent.wire.envelope import PAYLOAD_TYPE, encode_record, sign_envelope
from collector.campaigns import (
    CampaignSpec,
    build_campaign,
    build_cancel,
    read_signed,
    sign_command,
    topic_for,
)
from collector.cli.campaign import campaign as campaign_cli

PROBE = "a" * 26
OTHER = "b" * 26
NOW = datetime(2026, 6, 18, 6, 0, tzinfo=UTC)


@pytest.fixture
def operator() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _spec(**kw: object) -> CampaignSpec:
    base: dict[str, object] = {
        "audience": Audience(cc="IR"),
        "urls": [("https://news.example/", "NEWS"), ("https://vote.example/", None)],
        "interval": 300.0,
        "start": NOW,
        "end": NOW + timedelta(hours=48),
        "note": "election day",
    }
    base.update(kw)
    return CampaignSpec(**base)  # type: ignore[arg-type]


def _handle(
    data: bytes,
    op: Ed25519PrivateKey,
    book: CampaignBook,
    now: datetime = NOW,
    cc: str | None = "IR",
    probe: str = PROBE,
):  # type: ignore[no-untyped-def]
    return handle_command(
        data, operator_keys=[op.public_key()], book=book, probe_id=probe, cc=cc, now=now
    )


def test_valid_campaign_is_accepted_and_persisted(tmp_path: Path, operator: Ed25519PrivateKey):
    cmd = build_campaign(_spec(), NOW)
    book = CampaignBook(tmp_path)
    d = _handle(sign_command(cmd, operator), operator, book)
    assert (d.result, d.reason) == (Result.ACCEPTED, "ok")
    assert d.command is not None and d.command.command_id == cmd.command_id
    active = CampaignBook(tmp_path).active(NOW + timedelta(hours=1))  # survives a restart
    assert [c.command_id for c in active] == [cmd.command_id]
    (test,) = active[0].tests
    assert test.interval == 300.0
    assert [t.input for t in test.inputs] == ["https://news.example/", "https://vote.example/"]
    assert test.inputs[0].category_code == "NEWS"
    assert active[0].note == "election day"
    # outside its window it is not active
    assert CampaignBook(tmp_path).active(NOW + timedelta(hours=49)) == []


def test_replayed_campaign_changes_nothing(tmp_path: Path, operator: Ed25519PrivateKey):
    book = CampaignBook(tmp_path)
    data = sign_command(build_campaign(_spec(), NOW), operator)
    assert _handle(data, operator, book).result is Result.ACCEPTED
    before = (tmp_path / "campaigns.json").read_bytes()
    d = _handle(data, operator, book, now=NOW + timedelta(minutes=5))
    assert (d.result, d.reason) == (Result.DUPLICATE, "replayed")
    # a fresh process (new book from disk) still knows it: the replay store is durable
    d2 = _handle(data, operator, CampaignBook(tmp_path), now=NOW + timedelta(hours=2))
    assert d2.result is Result.DUPLICATE
    assert (tmp_path / "campaigns.json").read_bytes() == before


def test_replay_after_cancel_does_not_resurrect(tmp_path: Path, operator: Ed25519PrivateKey):
    book = CampaignBook(tmp_path)
    camp = build_campaign(_spec(), NOW)
    data = sign_command(camp, operator)
    assert _handle(data, operator, book).result is Result.ACCEPTED
    cancel = build_cancel(Audience(cc="IR"), camp.command_id, NOW, timedelta(days=7))
    assert _handle(sign_command(cancel, operator), operator, book).result is Result.ACCEPTED
    assert book.active(NOW + timedelta(minutes=1)) == []
    assert _handle(data, operator, book).result is Result.DUPLICATE
    assert book.active(NOW + timedelta(minutes=1)) == []


def test_expired_campaign_is_rejected(tmp_path: Path, operator: Ed25519PrivateKey):
    book = CampaignBook(tmp_path)
    data = sign_command(build_campaign(_spec(), NOW), operator)
    d = _handle(data, operator, book, now=NOW + timedelta(hours=48))
    assert (d.result, d.reason) == (Result.REJECTED, "expired")
    assert not (tmp_path / "campaigns.json").exists()


def test_campaign_from_the_future_is_rejected(tmp_path: Path, operator: Ed25519PrivateKey):
    data = sign_command(build_campaign(_spec(), NOW + timedelta(hours=1)), operator)
    d = _handle(data, operator, CampaignBook(tmp_path))
    assert (d.result, d.reason) == (Result.REJECTED, "not_yet_issued")
    # within the tolerated clock skew it is fine
    data = sign_command(build_campaign(_spec(), NOW + timedelta(minutes=2)), operator)
    assert _handle(data, operator, CampaignBook(tmp_path)).result is Result.ACCEPTED


def test_unsigned_campaign_is_rejected(tmp_path: Path, operator: Ed25519PrivateKey):
    payload = encode_record(build_campaign(_spec(), NOW).to_json())
    no_sigs = json.dumps(
        {
            "payloadType": COMMAND_PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [],
        }
    ).encode()
    book = CampaignBook(tmp_path)
    assert _handle(no_sigs, operator, book).reason == "envelope"
    bare_json = payload  # the payload alone, not an envelope
    assert _handle(bare_json, operator, book).result is Result.REJECTED
    forged = json.dumps(
        {
            "payloadType": COMMAND_PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [
                {
                    "keyid": key_id_for(operator.public_key()),
                    "sig": base64.b64encode(b"\0" * 64).decode(),
                }
            ],
        }
    ).encode()
    assert _handle(forged, operator, book).reason == "signature"
    assert book.active(NOW) == []


def test_wrong_key_is_rejected(tmp_path: Path, operator: Ed25519PrivateKey):
    intruder = Ed25519PrivateKey.generate()
    data = sign_command(build_campaign(_spec(), NOW), intruder)
    d = _handle(data, operator, CampaignBook(tmp_path))
    assert (d.result, d.reason) == (Result.REJECTED, "signature")
    # ... also when the intruder claims the operator's key id
    payload = encode_record(build_campaign(_spec(), NOW).to_json())
    claimed = sign_envelope(
        payload, intruder, key_id_for(operator.public_key()), COMMAND_PAYLOAD_TYPE
    )
    assert _handle(claimed, operator, CampaignBook(tmp_path)).reason == "signature"


def test_no_operator_key_configured_ignores_everything(tmp_path: Path, operator):  # type: ignore[no-untyped-def]
    data = sign_command(build_campaign(_spec(), NOW), operator)
    d = handle_command(
        data, operator_keys=[], book=CampaignBook(tmp_path), probe_id=PROBE, cc="IR", now=NOW
    )
    assert (d.result, d.reason) == (Result.REJECTED, "signature")


def test_tampered_payload_is_rejected(tmp_path: Path, operator: Ed25519PrivateKey):
    env = json.loads(sign_command(build_campaign(_spec(), NOW), operator))
    body = json.loads(base64.b64decode(env["payload"]))
    body["tests"][0]["inputs"].append({"input": "https://evil.example/", "category_code": None})
    env["payload"] = base64.b64encode(encode_record(body)).decode()
    d = _handle(json.dumps(env).encode(), operator, CampaignBook(tmp_path))
    assert (d.result, d.reason) == (Result.REJECTED, "signature")


def test_measurement_envelope_is_not_a_command(tmp_path: Path, operator: Ed25519PrivateKey):
    payload = encode_record(build_campaign(_spec(), NOW).to_json())
    as_measurement = sign_envelope(
        payload, operator, key_id_for(operator.public_key()), PAYLOAD_TYPE
    )
    d = _handle(as_measurement, operator, CampaignBook(tmp_path))
    assert (d.result, d.reason) == (Result.REJECTED, "envelope")


def test_audience_other_probe_or_country(tmp_path: Path, operator: Ed25519PrivateKey):
    book = CampaignBook(tmp_path)
    for_other = sign_command(
        build_campaign(_spec(audience=Audience(probe_id=OTHER)), NOW), operator
    )
    assert _handle(for_other, operator, book).reason == "audience"
    for_me = sign_command(build_campaign(_spec(audience=Audience(probe_id=PROBE)), NOW), operator)
    assert _handle(for_me, operator, book, cc=None).result is Result.ACCEPTED
    other_cc = sign_command(build_campaign(_spec(audience=Audience(cc="PK")), NOW), operator)
    assert _handle(other_cc, operator, book).reason == "audience"
    assert _handle(other_cc, operator, book, cc=None).reason == "audience"  # country unknown


def test_signed_but_malformed_is_rejected_without_raising(
    tmp_path: Path, operator: Ed25519PrivateKey
):
    good = build_campaign(_spec(), NOW).to_json()
    bad_variants = [
        {**good, "v": 2},
        {**good, "kind": "reboot"},
        {**good, "command_id": "not-a-uuid"},
        {**good, "not_after": good["issued_at"]},
        {**good, "not_after": "2026-09-01T00:00:00Z"},  # window > 31 days
        {**good, "tests": [{"test_name": "web_connectivity", "interval": 1, "inputs": []}]},
        {
            **good,
            "tests": [
                {"test_name": "web_connectivity", "interval": 300, "inputs": [{"input": "ftp://x"}]}
            ],
        },
        {
            **good,
            "tests": [
                {
                    "test_name": "web_connectivity",
                    "interval": 300,
                    "inputs": [{"input": f"https://e{i}.example/"} for i in range(MAX_INPUTS + 1)],
                }
            ],
        },
        {**good, "audience": {"cc": "IR", "probe_id": PROBE}},
        [1, 2, 3],
    ]
    for variant in bad_variants:
        env = sign_envelope(
            encode_record(variant),  # type: ignore[arg-type]
            operator,  # type: ignore[arg-type]
            key_id_for(operator.public_key()),
            COMMAND_PAYLOAD_TYPE,
        )
        d = _handle(env, operator, CampaignBook(tmp_path))
        assert (d.result, d.reason) == (Result.REJECTED, "malformed"), variant
    for garbage in (b"", b"\xff\xfe", b"{}", b"[]", b"x" * 300_000):
        assert _handle(garbage, operator, CampaignBook(tmp_path)).result is Result.REJECTED


def test_prune_forgets_only_expired(tmp_path: Path, operator: Ed25519PrivateKey):
    book = CampaignBook(tmp_path)
    short = build_campaign(_spec(end=NOW + timedelta(hours=1)), NOW)
    long = build_campaign(_spec(end=NOW + timedelta(days=3)), NOW + timedelta(seconds=1))
    for c in (short, long):
        assert _handle(sign_command(c, operator), operator, book).result is Result.ACCEPTED
    book.prune(NOW + timedelta(hours=2))
    reloaded = CampaignBook(tmp_path)
    assert [c.command_id for c in reloaded.all()] == [long.command_id]
    assert reloaded.seen(long.command_id) and not reloaded.seen(short.command_id)
    # the forgotten one cannot come back: it is expired
    d = _handle(sign_command(short, operator), operator, reloaded, now=NOW + timedelta(hours=2))
    assert d.reason == "expired"


def test_corrupt_store_is_set_aside(tmp_path: Path, operator: Ed25519PrivateKey):
    (tmp_path / "campaigns.json").write_text("{not json")
    book = CampaignBook(tmp_path)
    assert book.all() == []
    assert (tmp_path / "campaigns.corrupt").exists()
    data = sign_command(build_campaign(_spec(), NOW), operator)
    assert _handle(data, operator, book).result is Result.ACCEPTED


def test_public_key_from_config(operator: Ed25519PrivateKey):
    from agent.wire.envelope import raw_public_key

    text = base64.b64encode(raw_public_key(operator.public_key())).decode()
    assert key_id_for(public_key_from_b64(text)) == key_id_for(operator.public_key())
    for bad in ("???", base64.b64encode(b"short").decode()):
        with pytest.raises(ConfigError):
            public_key_from_b64(bad)


def test_topics():
    assert topic_for(Audience(probe_id=PROBE)) == f"edge/vigil/v1/probes/{PROBE}/commands"
    assert topic_for(Audience(cc="IR")) == "edge/vigil/v1/campaigns/IR"


def test_cli_keygen_create_cancel_roundtrip(tmp_path: Path):
    runner = CliRunner()
    key = tmp_path / "operator.key"
    res = runner.invoke(campaign_cli, ["keygen", "--key", str(key)])
    assert res.exit_code == 0, res.output
    pub = res.output.split('operator_keys = ["')[1].split('"')[0]
    assert (key.stat().st_mode & 0o777) == 0o600
    again = runner.invoke(campaign_cli, ["keygen", "--key", str(key)])
    assert again.exit_code != 0  # never replaces the operator key
    urls = tmp_path / "urls.txt"
    urls.write_text("# extra\nhttps://a.example/,NEWS\n\nhttps://b.example/\nhttps://a.example/\n")
    out = tmp_path / "c.json"
    res = runner.invoke(
        campaign_cli,
        [
            "create",
            "--key",
            str(key),
            "--cc",
            "ir",
            "--urls-file",
            str(urls),
            "--url",
            "https://c.example/",
            "--interval",
            "120",
            "--hours",
            "6",
            "--note",
            "vote",
            "--also",
            "throttling",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    data = out.read_bytes().strip()
    cmd = read_signed(data)
    assert topic_for(cmd.audience) == "edge/vigil/v1/campaigns/IR"
    book = CampaignBook(tmp_path / "state")
    d = handle_command(
        data,
        operator_keys=[public_key_from_b64(pub)],
        book=book,
        probe_id=PROBE,
        cc="IR",
        now=datetime.now(UTC),
    )
    assert d.result is Result.ACCEPTED
    web, thr = book.all()[0].tests
    assert [t.input for t in web.inputs] == [
        "https://c.example/",
        "https://a.example/",
        "https://b.example/",
    ]
    assert thr.test_name == "throttling" and thr.inputs == () and thr.interval == 120
    res = runner.invoke(
        campaign_cli,
        [
            "cancel",
            "--key",
            str(key),
            "--cc",
            "IR",
            "--campaign-id",
            cmd.command_id,
            "--out",
            str(tmp_path / "x.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    d = handle_command(
        (tmp_path / "x.json").read_bytes().strip(),
        operator_keys=[public_key_from_b64(pub)],
        book=book,
        probe_id=PROBE,
        cc="IR",
        now=datetime.now(UTC),
    )
    assert d.result is Result.ACCEPTED and book.all() == []


def test_cli_create_needs_urls_and_one_audience(tmp_path: Path):
    runner = CliRunner()
    key = tmp_path / "k"
    assert runner.invoke(campaign_cli, ["keygen", "--key", str(key)]).exit_code == 0
    res = runner.invoke(campaign_cli, ["create", "--key", str(key), "--cc", "IR"])
    assert isinstance(res.exception, UsageError)
    res = runner.invoke(campaign_cli, ["create", "--key", str(key), "--url", "https://x/"])
    assert isinstance(res.exception, UsageError)
    res = runner.invoke(
        campaign_cli,
        ["create", "--key", str(key), "--cc", "IR", "--url", "https://x/", "--interval", "5"],
    )
    assert isinstance(res.exception, UsageError)  # below the agents' minimum interval


def test_parse_roundtrip_is_stable():
    cmd = build_campaign(_spec(), NOW)
    assert parse_command(encode_record(cmd.to_json())) == cmd
