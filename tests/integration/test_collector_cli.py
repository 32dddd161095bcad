"""``vigil-collector probes|query`` and the collector config, on a real SQLite store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.errors import ConfigError
from collector.cli.main import main
from collector.config import load_config, parse_config
from collector.ingest.verify import Accepted, KeyTable, Verifier
from collector.store import IngestBatch, QuarantineItem, open_store
from lab.probes import TestProbe

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/collector.db"


def test_probes_add_list_revoke(capsys: pytest.CaptureFixture[str], url: str) -> None:
    p = TestProbe.new()
    code, out, _ = run(capsys, "probes", "add", p.probe_id, p.public_b64, "--note", "Tehran",
                       "--store", url)
    assert code == 0 and "enrolled" in out
    code, out, _ = run(capsys, "probes", "list", "--store", url)
    assert code == 0 and p.probe_id in out and "active" in out and "Tehran" in out
    code, _, err = run(capsys, "probes", "add", p.probe_id, p.public_b64, "--store", url)
    assert code == 2 and "already enrolled" in err
    code, out, _ = run(capsys, "probes", "revoke", p.probe_id, "--store", url)
    assert code == 0 and "revoked" in out
    code, out, _ = run(capsys, "probes", "list", "--json", "--store", url)
    [entry] = [json.loads(line) for line in out.splitlines()]
    assert entry["probe_id"] == p.probe_id and entry["revoked"] is True
    assert entry["public_key"] == p.public_b64
    code, _, err = run(capsys, "probes", "revoke", "aaaaaaaaaaaaaaaaaaaaaaaaaa", "--store", url)
    assert code == 2 and "not enrolled" in err


def test_probes_add_checks_the_id_against_the_key(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    a, b = TestProbe.new(), TestProbe.new()
    code, _, err = run(capsys, "probes", "add", a.probe_id, b.public_b64, "--store", url)
    assert code == 2 and b.probe_id in err  # tells which id the key really has
    code, _, err = run(capsys, "probes", "add", a.probe_id, "not base64!", "--store", url)
    assert code == 2 and "base64" in err
    code, _, err = run(capsys, "probes", "add", a.probe_id, "AAAA", "--store", url)
    assert code == 2 and "32" in err
    assert open_store(url).list_probes() == []


def test_store_is_required(capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_STORE", raising=False)
    code, _, err = run(capsys, "probes", "list")
    assert code == 2 and "--store" in err


def test_store_from_environment_and_config(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VIGIL_STORE", url)
    assert run(capsys, "probes", "list")[1].strip() == "no probes enrolled"
    monkeypatch.delenv("VIGIL_STORE")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "{url}"\n', "utf-8")
    assert run(capsys, "probes", "list", "--config", str(cfg))[0] == 0


def _fill(url: str) -> TestProbe:
    ir = TestProbe.new()
    store = open_store(url)
    store.add_probe(ir.probe_id, ir.public_raw)
    verifier = Verifier(KeyTable(store.list_probes()))
    now = time.time()
    rows = []
    for i, cc in enumerate(["IR", "IR", "IR", "PK"]):
        out = verifier.check(
            ir.topic,
            ir.envelope(probe_cc=cc, input=f"https://site{i % 2}.example/",
                        start=now - 100 + i),
            now,
        )
        assert isinstance(out, Accepted)
        rows.append(out.row)
    store.write_batch(IngestBatch(measurements=rows, rejections=[
        QuarantineItem("bad_signature", "no valid signature", ir.topic, b"\x00raw", now,
                       ir.probe_id)
    ]))
    store.close()
    return ir


def test_query_tables(capsys: pytest.CaptureFixture[str], url: str) -> None:
    _fill(url)
    code, out, _ = run(capsys, "query", "--store", url, "--quarantine", "5")
    assert code == 0
    assert "measurements: 4" in out
    for title in ("by verdict:", "by country:", "by network:", "by domain:",
                  "rejected messages by reason:", "latest quarantined:"):
        assert title in out
    assert "site0.example" in out and "bad_signature" in out


def test_query_json_and_filters(capsys: pytest.CaptureFixture[str], url: str) -> None:
    ir = _fill(url)
    code, out, _ = run(capsys, "query", "--store", url, "--json", "--cc", "ir", "--limit", "2",
                       "--quarantine", "1")
    assert code == 0
    report = json.loads(out)
    assert report["totals"] == {"measurements": 4, "matching": 3, "probes": 1, "quarantined": 1}
    assert len(report["recent"]) == 2 and report["recent"][0]["probe_id"] == ir.probe_id
    assert report["counts"]["country"] == {"IR": 3}
    assert report["counts"]["verdict"] == {"blocked": 3}
    assert report["counts"]["network"] == {"AS44244": 3}
    assert report["counts"]["domain"] == {"site0.example": 2, "site1.example": 1}
    assert report["rejections"] == {"bad_signature": 1}
    assert report["quarantine"][0]["raw_b64"] == "AHJhdw=="
    code, out, _ = run(capsys, "query", "--store", url, "--json", "--since", "2999-01-01")
    assert json.loads(out)["totals"]["matching"] == 0
    code, _, err = run(capsys, "query", "--store", url, "--since", "yesterday")
    assert code == 2 and "ISO 8601" in err


def test_example_config_is_valid() -> None:
    cfg = load_config(REPO / "configs" / "collector.example.toml").validate()
    assert cfg.store.url.startswith("sqlite:")
    assert cfg.broker.receive_maximum >= cfg.ingest.batch_size * (cfg.ingest.pipeline_depth + 2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"brokr": {}}, "unknown section"),
        ({"broker": {"prot": 1}}, "unknown key"),
        ({"broker": {"port": "8883"}}, "must be a number"),
        ({"broker": {"tls": "yes"}}, "true or false"),
        ({"ingest": {"batch_size": 1.5}}, "integer"),
        ({"broker": {"ca_file": 3}}, "string"),
    ],
)
def test_config_errors(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_config_cross_checks() -> None:
    with pytest.raises(ConfigError, match="store"):
        parse_config({}).validate()
    with pytest.raises(ConfigError, match="receive_maximum"):
        parse_config({"store": {"url": "sqlite:///x"}, "broker": {"receive_maximum": 10}}
                     ).validate()
    with pytest.raises(ConfigError, match="go together"):
        parse_config({"store": {"url": "sqlite:///x"}, "broker": {"cert_file": "c.pem"}}
                     ).validate()


def test_ingest_rejects_bad_flags_before_connecting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "ingest", "--store", f"sqlite://{tmp_path}/x.db",
                       "--password-file", str(tmp_path / "missing"))
    assert code == 2 and "password_file" in err
    code, _, err = run(capsys, "ingest", "--config", str(tmp_path / "nope.toml"))
    assert code == 2 and "not found" in err
    code, _, err = run(capsys, "ingest", "--store", f"sqlite://{tmp_path}/x.db",
                       "--password", "pw", "--ca-file", str(tmp_path / "no-ca.pem"))
    assert code == 2 and "TLS" in err
