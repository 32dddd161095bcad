"""App verdicts (table-driven) and endpoint-list parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.experiments.apps.analysis import EndpointResult, analyze, group_verdict, reason_for
from agent.experiments.apps.spec import APP_NAMES, bundled, load_specs, parse_app
from agent.wire.record import Blocking, Status


def r(group: str, stage: str | None, failure: str | None = None,
      control: bool | None = None, name: str = "x") -> EndpointResult:
    return EndpointResult(group=group, name=name, host="h", address="198.19.9.1:443",
                          check="tcp", failed_stage=stage, failure=failure, control_ok=control)


TIMEOUT, RESET = "generic_timeout_error", "connection_reset"

CASES = [
    ("all-ok", [r("dc", None), r("web", None)], Status.OK, None, ""),
    ("one-dc-of-two-down", [r("dc", "tcp", TIMEOUT, True, "a"), r("dc", None, name="b")],
     Status.OK, None, ""),
    ("telegram-dcs-dropped",
     [r("dc", "tcp", TIMEOUT, True, "a"), r("dc", "tcp", TIMEOUT, True, "b"), r("web", None)],
     Status.BLOCKED, Blocking.TCP_IP, "tcp.timeout"),
    ("tor-relay-reset", [r("authorities", "tls", RESET, True)],
     Status.BLOCKED, Blocking.TLS, "tls.reset"),
    ("vpn-no-answer", [r("wireguard", "handshake", TIMEOUT, True)],
     Status.BLOCKED, Blocking.TCP_IP, "vpn.no_answer"),
    ("vpn-bad-answer", [r("openvpn", "handshake", "opcode 3 is not 8", True)],
     Status.BLOCKED, Blocking.TCP_IP, "vpn.failure"),
    ("dns-nxdomain", [r("web", "dns", "dns_nxdomain_error", True)],
     Status.BLOCKED, Blocking.DNS, "dns.nxdomain"),
    ("http-reset", [r("web", "http", RESET, True)],
     Status.BLOCKED, Blocking.HTTP_FAILURE, "http.reset"),
    ("down-everywhere", [r("dc", "tcp", "connection_refused", False)],
     Status.DOWN, None, "site.down"),
    ("control-failed", [r("dc", "tcp", TIMEOUT, None)],
     Status.INCONCLUSIVE, None, "control.failed"),
    ("blocked-beats-unknown", [r("dc", "tcp", TIMEOUT, None), r("web", "tls", RESET, True)],
     Status.BLOCKED, Blocking.TLS, "tls.reset"),
]


@pytest.mark.parametrize(("case", "results", "status", "blocking", "reason"), CASES)
def test_app_verdicts(case: str, results: list[EndpointResult], status: Status,
                      blocking: Blocking | None, reason: str) -> None:
    verdict, groups = analyze(results)
    assert (verdict.status, verdict.blocking, verdict.reason) == (status, blocking, reason), case
    assert set(groups) == {x.group for x in results}


def test_group_verdict_counts_and_dominant_failure() -> None:
    gv = group_verdict("dc", [r("dc", "tcp", TIMEOUT, True, "a"),
                              r("dc", "tcp", TIMEOUT, False, "b"),
                              r("dc", "tls", RESET, False, "c")])
    assert (gv.status, gv.stage, gv.failure, gv.working, gv.total) == (
        "blocked", "tcp", TIMEOUT, 0, 3)


def test_reason_words() -> None:
    assert reason_for("tcp", "connection_refused") == "tcp.refused"
    assert reason_for("tls", "ssl_unknown_authority") == "tls.invalid_certificate"
    assert reason_for("handshake", None) == "vpn.no_answer"
    assert reason_for("dns", "unknown_failure: x") == "dns.failure"


def test_result_json_round_trip() -> None:
    x = r("dc", "tcp", TIMEOUT, True)
    assert EndpointResult.from_json(x.to_json()) == x


def test_bundled_lists_parse() -> None:
    specs = bundled()
    assert set(specs) == set(APP_NAMES) - {"vpn"}
    assert {g.name for g in specs["telegram"].groups} == {"dc", "web"}


def test_configured_directory_replaces_bundled(tmp_path: Path) -> None:
    (tmp_path / "telegram.toml").write_text(
        'name = "telegram"\n[[group]]\nname = "dc"\n[[group.endpoint]]\n'
        'host = "198.19.9.1"\nport = 443\ncheck = "tcp"\n', encoding="utf-8")
    specs = load_specs([tmp_path])
    assert [e.host for e in specs["telegram"].endpoints] == ["198.19.9.1"]


BAD = [
    ({"name": "xx"}, "at least one"),
    ({"name": "Bad Name", "group": []}, "name"),
    ({"name": "xx", "group": [{"name": "gg", "endpoint": [{"host": "h", "port": 0}]}]}, "port"),
    ({"name": "xx", "group": [{"name": "gg", "endpoint": [{"host": "h", "port": 1,
                                                          "check": "ping"}]}]}, "check"),
    ({"name": "xx", "group": [{"name": "gg", "endpoint": [{"host": "h", "port": 1,
                                                          "check": "wireguard"}]}]}, "public_key"),
    ({"name": "xx", "group": [{"name": "gg", "endpoint": [{"host": "h", "port": 1,
                                                          "colour": "red"}]}]}, "unknown"),
    ({"name": "xx", "extra": 1}, "unknown"),
]


@pytest.mark.parametrize(("data", "words"), BAD)
def test_bad_lists_are_config_errors(data: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_app("f.toml", data)


def test_unreadable_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "tor.toml").write_text("name = ", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tor\.toml"):
        load_specs([tmp_path])
