"""Settings parsing of the issue-5 tests and the bulk stream's determinism."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError
from agent.experiments.connectivity import ConnectivitySettings
from agent.experiments.throttling.measure import ThrottlingSettings, benign_name, target_of
from collector.helper.bulk import BLOCK_SIZE, bulk_block, bulk_bytes


def test_throttling_settings_defaults_and_overrides() -> None:
    d = ThrottlingSettings.from_section({})
    assert d.budget_bytes == 2_000_000 and d.max_rounds == 4
    s = ThrottlingSettings.from_section({"data_budget_mb": 1, "max_rounds": 3, "alpha": 0.01,
                                         "names": ["twitter.com"], "address_test": False})
    assert s.budget_bytes == 1_000_000 and s.thresholds.alpha == 0.01
    assert s.names == ("twitter.com",) and s.address_test is False


@pytest.mark.parametrize("section", [
    {"colour": 1}, {"max_rounds": 2.5}, {"data_budget_mb": -1}, {"address_test": "yes"},
    {"names": "twitter.com"},
])
def test_throttling_settings_errors(section: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ThrottlingSettings.from_section(section)


def test_connectivity_settings() -> None:
    s = ConnectivitySettings.from_section({"anchors": ["192.0.2.1:443@domestic"],
                                           "dns_names": ["example.org"], "timeout": 3})
    assert s.anchors[0].scope == "domestic" and s.timeout == 3.0
    for bad in ({"anchors": "x"}, {"timeout": 0}, {"nope": 1}):
        with pytest.raises(ConfigError):
            ConnectivitySettings.from_section(bad)


def test_target_and_benign_name() -> None:
    assert target_of("https://Twitter.com/home?x=1") == (
        "twitter.com", "https://Twitter.com/home?x=1", 443, "/home?x=1")
    assert target_of("abs.twimg.com")[0] == "abs.twimg.com"
    with pytest.raises(ValueError):
        target_of("https:///nohost")
    name = benign_name()
    assert name.endswith(".example") and len(name) == len("x" * 12 + ".example")


def test_bulk_stream_is_deterministic_and_wraps() -> None:
    block = bulk_block()
    assert len(block) == BLOCK_SIZE and block == bulk_block()
    assert bulk_bytes(BLOCK_SIZE - 10, 20) == block[-10:] + block[:10]
    assert bulk_bytes(0, 3 * BLOCK_SIZE) == block * 3
