"""agent.config: TOML into frozen dataclasses, strict on our sections, raw for the others."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import config as C
from agent.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "configs" / "agent.example.toml"


def test_example_config_loads_and_matches_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_STATE_DIR", raising=False)
    cfg = C.load(EXAMPLE)
    assert cfg.path == EXAMPLE
    assert cfg.net == C.NetConfig()
    assert cfg.run == C.RunConfig()
    assert cfg.control == C.ControlConfig()
    assert cfg.lists == C.ListsConfig()


def test_values_paths_and_other_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_STATE_DIR", raising=False)
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nstate_dir = "state"\n'
        '[control]\nurl = "https://helper.example.org"\n'
        '[net]\nresolver = "10.0.0.1:5353"\nca_file = "ca.pem"\ndns_timeout = 2\nipv6 = true\n'
        '[run]\nconcurrency = 32\ndata_budget_mb = 1.5\ntests = ["web_connectivity"]\n'
        '[lists]\nfiles = ["a.csv", "/abs/b.csv"]\ncountries = ["ir"]\n'
        '[mqtt]\nhost = "broker.example.org"\n'
    )
    cfg = C.load(path)
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.control.url == "https://helper.example.org"
    assert cfg.net.resolver == "10.0.0.1:5353" and cfg.net.ca_file == tmp_path / "ca.pem"
    assert cfg.net.dns_timeout == 2.0 and isinstance(cfg.net.dns_timeout, float)
    assert cfg.net.ipv6 is True
    assert cfg.run.concurrency == 32 and cfg.run.data_budget_bytes == 1_500_000
    assert cfg.run.tests == ("web_connectivity",)
    assert cfg.lists.files == (tmp_path / "a.csv", Path("/abs/b.csv"))
    assert cfg.section("mqtt") == {"host": "broker.example.org"}
    assert cfg.section("absent") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[net]\ndns_timeot = 3\n", r"unknown key\(s\) in \[net\]: dns_timeot"),
        ("[agent]\nfoo = 1\n", r"unknown key\(s\) in \[agent\]: foo"),
        ("[net]\ndns_timeout = -1\n", "net.dns_timeout must be a positive number"),
        ("[net]\ndns_timeout = \"5\"\n", "net.dns_timeout must be a number"),
        ("[net]\nipv6 = 1\n", "net.ipv6 must be true or false"),
        ("[net]\nresolver = \"dns.example\"\n", "net.resolver"),
        ("[net]\nbenign_sni = \"\"\n", "benign_sni"),
        ("[run]\nconcurrency = 0\n", "run.concurrency must be within"),
        ("[run]\nconcurrency = 2.5\n", "run.concurrency must be an integer"),
        ("[run]\ntests = \"web\"\n", "run.tests must be a list"),
        ("[control]\nurl = \"helper.example.org\"\n", "control.url must be an http"),
        ("[lists]\ncountries = [\"iran\"]\n", "not a two-letter country code"),
        ("net = 3\n", r"\[net\] must be a table"),
        ("[net\n", "invalid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        C.load(path)
    assert str(path) in str(info.value)


def test_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        C.load(tmp_path / "nope.toml")
    monkeypatch.setenv("VIGIL_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        C.load()
    monkeypatch.delenv("VIGIL_CONFIG")
    monkeypatch.setattr(C, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert C.load().path is None  # the default path may be absent: defaults apply
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        C.load(binary)


def test_state_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[agent]\nstate_dir = "/from/config"\n')
    monkeypatch.setenv("VIGIL_STATE_DIR", str(tmp_path / "env"))
    assert C.load(path).state_dir == tmp_path / "env"
    monkeypatch.delenv("VIGIL_STATE_DIR")
    assert C.load(path).state_dir == Path("/from/config")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert C.default_state_dir() == tmp_path / "xdg" / "vigil"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert C.default_state_dir() == Path("/var/lib/vigil")
