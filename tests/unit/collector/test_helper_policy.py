"""The control helper's target policy: every refused range, allow/deny precedence."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.helper.policy import (
    PolicyError,
    TargetPolicy,
    parse_network,
    port_allowed,
    special_purpose,
)

NO_CONFIG = TargetPolicy()
LAB = TargetPolicy(allow=["198.18.0.0/15"])

# (address, reason) that must be refused with no allow range configured.
REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),  # v4-mapped
    ("::ffff:7f00:1", "loopback"),  # the same, hex-written
    ("10.0.0.0", "private"),
    ("10.1.2.3", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.0", "private"),
    ("172.20.1.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.0.0", "private"),
    ("192.168.1.1", "private"),
    ("192.168.255.255", "private"),
    ("::ffff:192.168.1.1", "private"),
    ("169.254.169.254", "link_local"),  # cloud metadata
    ("::ffff:169.254.169.254", "link_local"),
    ("fe80::", "link_local"),
    ("fe80::1", "link_local"),
    ("fe80::1%eth0", "link_local"),
    ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "link_local"),  # last of fe80::/10
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("100.64.0.1", "shared_address_space"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.10", "documentation"),
    ("2001:db8::1", "documentation"),
    ("198.18.0.1", "benchmarking"),  # the lab's range: refused unless allowed explicitly
    ("fc00::1", "unique_local"),
    ("fd12:3456::1", "unique_local"),
    ("fec0::1", "site_local"),
    ("64:ff9b::7f00:1", "nat64_loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a00:1", "nat64_private"),  # NAT64 of 10.0.0.1
    ("64:ff9b:1::1", "nat64_local_use"),
    ("2002:7f00:1::1", "6to4"),
    ("2001:0:4136:e378::1", "teredo"),
    ("::127.0.0.1", "ipv4_compatible"),
    ("100::1", "discard_only"),
    ("4000::1", "reserved"),  # outside 2000::/3
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "172.15.255.255",  # just below 172.16/12
    "172.32.0.0",  # just above
    "169.253.255.255",
    "198.17.255.255",
    "198.20.0.0",  # just past 198.18.0.0/15
    "::ffff:8.8.8.8",
    "2001:4860:4860::8888",
    "2a00:1450::1",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_special_ranges_are_refused_with_their_reason(address: str, reason: str) -> None:
    decision = NO_CONFIG.check(address)
    assert not decision.allowed
    assert decision.reason == reason


@pytest.mark.parametrize("address", ALLOWED)
def test_global_unicast_is_allowed(address: str) -> None:
    decision = NO_CONFIG.check(address)
    assert decision.allowed
    assert decision.reason == "global"


def test_v4_mapped_is_decided_and_connected_as_ipv4() -> None:
    decision = NO_CONFIG.check("::ffff:8.8.8.8")
    assert decision.address == IPv4Address("8.8.8.8")
    assert NO_CONFIG.check("::ffff:127.0.0.1").address == IPv4Address("127.0.0.1")


def test_allow_range_opens_only_that_range() -> None:
    assert LAB.check("198.18.0.1").reason == "allowed_range"
    assert LAB.check("198.19.255.254").allowed
    assert LAB.check("::ffff:198.18.10.5").allowed  # mapped form of an allowed address
    assert LAB.check("198.20.0.0").reason == "global"  # outside the range: the tables decide
    for address, _ in REFUSED:
        if not address.startswith(("198.18.", "198.19.")):
            assert not LAB.check(address).allowed, address


def test_nothing_is_allowed_implicitly() -> None:
    for address, _ in REFUSED:
        assert not NO_CONFIG.allows(address)


def test_deny_range_beats_allow_range_and_global() -> None:
    policy = TargetPolicy(allow=["127.0.0.0/8"], deny=["127.0.0.2/32", "8.8.8.0/24"])
    assert policy.check("127.0.0.1").allowed
    assert policy.check("127.0.0.2").reason == "denied_range"
    assert policy.check("::ffff:127.0.0.2").reason == "denied_range"
    assert policy.check("8.8.8.8").reason == "denied_range"


def test_own_addresses_are_refused_unless_explicitly_allowed() -> None:
    policy = TargetPolicy(own=["203.0.114.7", "2a01:4f8::7"])
    assert policy.check("203.0.114.7").reason == "own_address"
    assert policy.check("::ffff:203.0.114.7").reason == "own_address"
    assert policy.check("2a01:4f8::7").reason == "own_address"
    assert policy.check("203.0.114.8").allowed
    # An explicit allow range is the operator's word: it wins over auto-detected addresses.
    assert TargetPolicy(allow=["203.0.114.0/24"], own=["203.0.114.7"]).allows("203.0.114.7")


def test_nat64_follows_the_embedded_ipv4_policy() -> None:
    assert LAB.check("64:ff9b::c612:5").allowed  # 198.18.0.5 via NAT64
    assert not NO_CONFIG.check("64:ff9b::c612:5").allowed
    deny = TargetPolicy(deny=["8.8.8.0/24"])
    assert deny.check("64:ff9b::808:808").reason == "nat64_denied_range"


@pytest.mark.parametrize("text", ["0.0.0.0/0", "::/0", "10.0.0.1/8", "not-a-range", "10.0.0.0/33"])
def test_bad_configured_ranges_are_rejected(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_network(text)


def test_mapped_allow_range_is_converted_to_ipv4() -> None:
    assert parse_network("::ffff:127.0.0.0/104") == IPv4Network("127.0.0.0/8")


def test_non_addresses_raise_value_error() -> None:
    with pytest.raises(ValueError):
        NO_CONFIG.check("example.org")
    with pytest.raises(ValueError):
        NO_CONFIG.check("2130706433")  # decimal form of 127.0.0.1: not an address here


@pytest.mark.parametrize(("port", "allowed"), [
    (80, True), (443, True), (8080, True), (8443, True),
    (0, False), (22, False), (25, False), (6667, False), (65536, False),
])
def test_ports(port: int, allowed: bool) -> None:
    assert port_allowed(port) is allowed


# ---- properties ---------------------------------------------------------------------------------
v4 = st.integers(0, 2**32 - 1).map(IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(IPv6Address)


def _in(net: str) -> st.SearchStrategy[IPv4Address | IPv6Address]:
    n = IPv4Network(net) if ":" not in net else IPv6Network(net)
    first = int(n.network_address)
    return st.integers(first, first + n.num_addresses - 1).map(
        IPv4Address if n.version == 4 else IPv6Address
    )


@given(v4)
def test_mapped_form_gets_the_same_decision(addr: IPv4Address) -> None:
    mapped = IPv6Address(f"::ffff:{addr}")
    assert NO_CONFIG.check(mapped) == NO_CONFIG.check(addr)
    assert LAB.check(mapped) == LAB.check(addr)


@given(
    st.one_of(
        _in("10.0.0.0/8"),
        _in("172.16.0.0/12"),
        _in("192.168.0.0/16"),
        _in("127.0.0.0/8"),
        _in("169.254.0.0/16"),
        _in("fe80::/10"),
        _in("fc00::/7"),
        _in("::ffff:10.0.0.0/104"),
    )
)
def test_private_space_is_refused_and_an_allow_range_opens_it(
    addr: IPv4Address | IPv6Address,
) -> None:
    assert not NO_CONFIG.allows(addr)
    assert not LAB.allows(addr)
    unwrapped = addr.ipv4_mapped if isinstance(addr, IPv6Address) and addr.ipv4_mapped else addr
    net = IPv4Network((int(unwrapped), 32)) if unwrapped.version == 4 else IPv6Network(
        (int(unwrapped), 128)
    )
    assert TargetPolicy(allow=[net]).allows(addr)
    assert not TargetPolicy(allow=[net], deny=[net]).allows(addr)


def _python_says_special(addr: IPv4Address | IPv6Address) -> bool:
    return any(
        (
            addr.is_private,
            addr.is_loopback,
            addr.is_link_local,
            addr.is_multicast,
            addr.is_reserved,
            addr.is_unspecified,
        )
    )


@given(st.one_of(v4, v6, _in("::ffff:0:0/96"), _in("64:ff9b::/96")))
def test_allowed_addresses_are_never_special_by_pythons_tables(
    addr: IPv4Address | IPv6Address,
) -> None:
    """Cross-check against ipaddress: our policy is at least as strict (after unwrapping the
    forms that carry an IPv4 address, which is what gets connected to)."""
    if not NO_CONFIG.allows(addr):
        return
    inner: IPv4Address | IPv6Address = addr
    if isinstance(addr, IPv6Address):
        if addr.ipv4_mapped is not None:
            inner = addr.ipv4_mapped
        elif addr in IPv6Network("64:ff9b::/96"):
            inner = IPv4Address(int(addr) & 0xFFFFFFFF)
    assert not _python_says_special(inner)
    assert special_purpose(addr) is None


@given(st.one_of(v4, v6))
def test_decision_is_total_and_deterministic(addr: IPv4Address | IPv6Address) -> None:
    first = LAB.check(addr)
    assert first == LAB.check(str(addr))
    assert first.allowed == (first.reason in ("global", "allowed_range"))
    assert ip_address(first.address) == first.address
