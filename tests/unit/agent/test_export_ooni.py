"""The OONI rendering of Vigil records: table-driven on each mapping, and property tests that
no record, however odd, makes the converter or ``vigil-agent export`` fail with a traceback."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli.export import export
from agent.export.ooni import (
    ExportError,
    blocking_accessible,
    body_proportion,
    dns_consistency,
    exported_test_name,
    headers_match,
    rcode_number,
    title_match,
    to_ooni,
)
from lab.archive import NETWORKS, SITES, VERDICTS, record
from lab.probes import TestProbe

PROBE = TestProbe.new()


def vigil(scenario: str, url: str = "https://twitter.com/") -> dict[str, Any]:
    rng = random.Random(5)
    rec = record(PROBE, NETWORKS[2], url, "GRP", 1_780_000_000.0, scenario, rng)
    loaded: dict[str, Any] = json.loads(json.dumps(rec))  # as a signed record reads back
    return loaded


@pytest.mark.parametrize(("name", "number"), [
    ("NOERROR", 0), ("noerror", 0), ("SERVFAIL", 2), ("NXDOMAIN", 3), ("REFUSED", 5),
    (3, 3), ("16", 16), (None, None), ("WHATEVER", None), (True, None),
])
def test_rcode_is_an_integer_as_df002_says(name: Any, number: int | None) -> None:
    assert rcode_number(name) == number


@pytest.mark.parametrize(("verdict", "pair"), [
    ({"status": "ok", "blocking": None}, (False, True)),
    ({"status": "blocked", "blocking": "dns"}, ("dns", False)),
    ({"status": "blocked", "blocking": "tcp_ip"}, ("tcp_ip", False)),
    ({"status": "blocked", "blocking": "tls"}, ("http-failure", False)),
    ({"status": "blocked", "blocking": "http-failure"}, ("http-failure", False)),
    ({"status": "blocked", "blocking": "http-diff"}, ("http-diff", False)),
    ({"status": "throttled", "blocking": "throttling"}, (False, True)),
    ({"status": "down", "blocking": None}, (False, False)),
    ({"status": "inconclusive", "blocking": None}, (None, None)),
])
def test_blocking_in_oonis_vocabulary(verdict: dict[str, Any], pair: tuple[Any, Any]) -> None:
    assert blocking_accessible(verdict) == pair


@pytest.mark.parametrize(("scenario", "blocking", "dns", "http_match"), [
    ("ok", False, "consistent", True),
    ("dns", "dns", "inconsistent", None),
    ("tls", "http-failure", "consistent", None),
    ("http", "http-diff", "consistent", False),
    ("down", False, "consistent", None),
    ("inconclusive", None, None, None),
])
def test_web_connectivity_carries_the_ts017_keys(
        scenario: str, blocking: Any, dns: str | None, http_match: bool | None) -> None:
    rec = vigil(scenario)
    out = to_ooni(rec)
    tk = out["test_keys"]
    assert out["test_name"] == "web_connectivity"
    for key in ("dns_consistency", "body_length_match", "body_proportion", "headers_match",
                "status_code_match", "title_match", "dns_experiment_failure",
                "http_experiment_failure", "control_failure", "blocking", "accessible"):
        assert key in tk, key
    assert tk["blocking"] == blocking and tk["dns_consistency"] == dns
    assert tk["status_code_match"] == http_match and tk["body_length_match"] == http_match
    assert tk["x_vigil_status"] == rec["verdict"]["status"]
    assert tk["x_vigil_blocking"] == rec["verdict"]["blocking"]
    assert all(isinstance(q["rcode"], int) for q in tk["queries"])
    if scenario == "dns":  # the injected reply first, the genuine one after it
        replies = tk["queries"][0]["x_vigil_replies"]
        assert [r["answers"][0]["ipv4"] for r in replies] == ["10.10.34.35", "203.0.113.80"]
    if scenario == "http":
        body = tk["requests"][0]["response"]["body"]
        assert "10.10.34.34" in body and tk["requests"][0]["response"]["body_is_truncated"] is False


def test_helper_supplied_connects_are_tagged() -> None:
    rec = vigil("ok")
    rec["test_keys"]["tcp_connect"].append({
        "ip": "203.0.113.99", "port": 443, "origin": "control",
        "status": {"success": False, "failure": "connection_reset"}, "t0": 0.1, "t": 0.2})
    tags = [c["tags"] for c in to_ooni(rec)["test_keys"]["tcp_connect"]]
    assert tags == [["x_vigil_origin=dns"], ["x_vigil_origin=control"]]


def test_bodies_longer_than_kept_are_marked_truncated() -> None:
    rec = vigil("ok")
    resp = rec["test_keys"]["requests"][0]["response"]
    assert resp["body_length"] > len(resp["body_head"])  # the lab page is longer than kept
    out = to_ooni(rec)["test_keys"]["requests"][0]["response"]
    assert out["body"] == resp["body_head"] and out["body_is_truncated"] is True


@pytest.mark.parametrize("name", ["telegram", "whatsapp", "signal", "facebook_messenger",
                                  "tor", "throttling", "connectivity", "vpn"])
def test_tests_whose_keys_are_not_oonis_get_names_of_their_own(name: str) -> None:
    assert exported_test_name(name) == f"vigil_{name}"
    rec = vigil("ok") | {"test_name": name, "test_keys": {"endpoints": []}}
    out = to_ooni(rec)
    assert out["test_name"] == f"vigil_{name}"
    assert out["annotations"]["vigil_test_name"] == name
    assert out["test_keys"]["endpoints"] == []


@pytest.mark.parametrize(("ours", "theirs", "want"), [
    ("Twitter Homepage", "Twitter Homepage", True),
    ("Access denied", "Twitter Homepage", False),
    ("x", "", None), (None, "Twitter", None), ("abc", "a b c", None),
])
def test_title_match(ours: str | None, theirs: str | None, want: bool | None) -> None:
    assert title_match(ours, theirs) is want


@pytest.mark.parametrize(("ours", "theirs", "want"), [
    ({"Date": "x"}, {"Server": "y"}, True),
    ({"X-Site": "a"}, {"X-Site": "a", "Date": "d"}, True),
    ({"X-Blockpage": "1"}, {"X-Site": "a"}, False),
    (None, {"X-Site": "a"}, None),
])
def test_headers_match(ours: Any, theirs: Any, want: bool | None) -> None:
    assert headers_match(ours, theirs) is want


def test_body_proportion() -> None:
    assert body_proportion(100, 100) == 1.0
    assert body_proportion(50, 100) == 0.5
    assert body_proportion(None, 100) is None and body_proportion(-1, 3) is None


def test_dns_consistency_without_control_is_unknown() -> None:
    assert dns_consistency({"queries": []}, {"status": "ok"}) is None


# ---- odd records ------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12,
)
KEYS = ["queries", "tcp_connect", "tls_handshakes", "requests", "control", "control_failure",
        "hostname", "extra"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6), st.sampled_from(
    list(VERDICTS)), JSON)
def test_odd_test_keys_never_break_the_conversion(tk: dict[str, Any], scenario: str,
                                                  verdict_noise: Any) -> None:
    rec = vigil("ok") | {"test_keys": tk, "verdict": dict(VERDICTS[scenario])}
    out = to_ooni(rec)
    json.dumps(out)
    rec["verdict"] = verdict_noise
    try:
        json.dumps(to_ooni(rec))
    except ExportError as exc:
        assert str(exc)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["measurement_id", "test_name", "probe_id",
                                        "measurement_start_time", "probe_cc", "probe_asn",
                                        "test_keys", "verdict", "input"]), JSON, max_size=9))
def test_any_record_converts_or_says_why(rec: dict[str, Any]) -> None:
    try:
        json.dumps(to_ooni(rec))
    except ExportError as exc:
        assert "record" in str(exc) or "measurement_start_time" in str(exc)


def export_line(rec: dict[str, Any]) -> str:
    from agent.wire import envelope as wire

    env = json.loads(PROBE.sign(wire.encode_record(rec)))
    return json.dumps({"measurement_id": rec["measurement_id"], "probe_id": PROBE.probe_id,
                       "received_at": "2026-05-01T00:00:00.000000Z", "envelope": env})


def test_cli_accepts_collector_export_lines_and_reports_odd_ones(tmp_path: Path) -> None:
    good = [vigil(s, url) for s in ("ok", "dns", "tls") for url, _ in SITES[:2]]
    lines = [export_line(r) for r in good]
    lines += [
        '{"envelope": {"payloadType": "x", "payload": "!!", "signatures": []}}',
        '{"envelope": 3}',
        "[" * 5000 + "]" * 5000,
        json.dumps({"measurement_id": "x"}),
        json.dumps(good[0]),  # a bare record is still fine
    ]
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(export, ["--format", "ooni", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit) or \
        type(result.exception).__name__ == "VigilError", result.exception
    out = [json.loads(x) for x in result.stdout.splitlines()]
    assert [o["id"] for o in out] == [r["measurement_id"] for r in good] + [
        good[0]["measurement_id"]]
    bad_lines = [line.split(":")[1] for line in result.stderr.splitlines()]
    assert bad_lines == [str(n) for n in range(len(good) + 1, len(good) + 5)]
    assert "Traceback" not in result.output
