"""Both address families are measured: the per-origin address cap applies per family."""

from __future__ import annotations

from agent.experiments.web_connectivity.measure import _first_unique, _usable_family


def test_cap_is_per_family_so_ipv6_is_not_crowded_out() -> None:
    v4 = [f"198.19.1.{i}" for i in range(1, 9)]
    v6 = ["2001:2:0:11::1", "2001:2:0:11::2"]
    assert _first_unique(v4 + v6 + v4, 4) == v4[:4] + v6


def test_duplicates_and_order_are_kept() -> None:
    assert _first_unique(["2001:2::1", "198.19.1.1", "2001:2::1", "198.19.1.1"], 4) == [
        "2001:2::1", "198.19.1.1"]


def test_ipv6_addresses_are_used_only_when_ipv6_is_on() -> None:
    assert _usable_family("2001:2::1", True)
    assert not _usable_family("2001:2::1", False)
    assert not _usable_family("2001:2::1", None)  # not decided: IPv4 only
    assert _usable_family("198.19.1.1", False)
    assert not _usable_family("not-an-address", True)
