"""Who the caller is behind trusted proxies (right-most untrusted X-Forwarded-For entry), and
the helper's path prefix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ConfigError
from collector.helper.proxy import (
    MAX_FORWARDED_HOPS,
    forwarded_client,
    normalize_prefix,
    parse_trusted_proxies,
)

TRUSTED = parse_trusted_proxies(["10.0.0.0/24", "127.0.0.1", "fd00::/64"])


@pytest.mark.parametrize(("peer", "headers", "expected"), [
    # not from a proxy: the header is the caller's own words, ignored
    ("198.51.100.7", ["203.0.113.9"], "198.51.100.7"),
    ("198.51.100.7", [], "198.51.100.7"),
    # one proxy: the address it appended
    ("127.0.0.1", ["203.0.113.9"], "203.0.113.9"),
    # the caller's forged entries stay to the left of what the proxy appended
    ("127.0.0.1", ["1.2.3.4, 203.0.113.9"], "203.0.113.9"),
    ("127.0.0.1", ["1.2.3.4", "203.0.113.9"], "203.0.113.9"),  # several header lines
    # a chain of trusted proxies is skipped from the right
    ("127.0.0.1", ["203.0.113.9, 10.0.0.5"], "203.0.113.9"),
    ("127.0.0.1", ["8.8.8.8, 203.0.113.9, 10.0.0.5, 10.0.0.6"], "203.0.113.9"),
    # only trusted hops: the left-most of them
    ("127.0.0.1", ["10.0.0.5, 10.0.0.6"], "10.0.0.5"),
    # from a proxy, no header: the proxy itself
    ("127.0.0.1", [], "127.0.0.1"),
    # a malformed entry: stop at the last trusted hop, never believe what is left of it
    ("127.0.0.1", ["203.0.113.9, junk"], "127.0.0.1"),
    ("127.0.0.1", ["203.0.113.9, junk, 10.0.0.5"], "10.0.0.5"),
    ("127.0.0.1", [" 203.0.113.9 ,"], "203.0.113.9"),
    # IPv6 and IPv4-mapped forms
    ("fd00::1", ["2001:db8::5"], "2001:db8::5"),
    ("::ffff:127.0.0.1", ["::ffff:203.0.113.9"], "203.0.113.9"),
    ("127.0.0.1", ["fd00::2, 2001:db8::1"], "2001:db8::1"),
])
def test_forwarded_client(peer: str, headers: list[str], expected: str) -> None:
    assert forwarded_client(peer, headers, TRUSTED) == expected


def test_no_trusted_proxies_means_no_header_is_read() -> None:
    assert forwarded_client("127.0.0.1", ["203.0.113.9"], ()) == "127.0.0.1"


def test_a_long_chain_is_cut() -> None:
    chain = ", ".join(["203.0.113.9"] + ["10.0.0.5"] * (MAX_FORWARDED_HOPS + 5))
    assert forwarded_client("127.0.0.1", [chain], TRUSTED) == "10.0.0.5"


@given(st.lists(st.text(max_size=40), max_size=5))
def test_the_answer_is_the_peer_or_an_address_the_header_holds(headers: list[str]) -> None:
    got = forwarded_client("127.0.0.1", headers, TRUSTED)
    entries = {e.strip() for h in headers for e in h.split(",")}
    assert got == "127.0.0.1" or got in entries or any(got in e for e in entries)
    # and from an untrusted peer, never anything but the peer
    assert forwarded_client("198.51.100.7", headers, TRUSTED) == "198.51.100.7"


@pytest.mark.parametrize(("text", "expected"), [
    ("", ""), ("/", ""), ("/vigil-helper", "/vigil-helper"), ("vigil-helper/", "/vigil-helper"),
    ("/a/b.c/~d", "/a/b.c/~d"),
])
def test_prefix(text: str, expected: str) -> None:
    assert normalize_prefix(text) == expected


@pytest.mark.parametrize("text", ["/a/../b", "/a b", "/a//b", "/%2e", "/a?x", "/./a"])
def test_bad_prefix(text: str) -> None:
    with pytest.raises(ConfigError, match="path_prefix"):
        normalize_prefix(text)


def test_bad_trusted_proxy() -> None:
    with pytest.raises(ConfigError, match="not-an-ip"):
        parse_trusted_proxies(["127.0.0.1", "not-an-ip"])
