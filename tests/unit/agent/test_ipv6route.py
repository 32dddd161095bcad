"""Is IPv6 on?  Parsed from the kernel's route and address tables, never by sending a packet."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.net.ipv6route import global_ipv6, has_global_ipv6, parse_addresses, parse_routes

LO = "00000000000000000000000000000001 01 80 10 80       lo"
LINK_LOCAL = "fe8000000000000000fc00fffe000001 04 40 20 80     eth0"
GLOBAL = "20010002000000010000000000000002 02 40 00 80     isp0"  # 2001:2:0:1::2
ULA = "fd000000000000000000000000000002 04 40 00 82     eth0"
TENTATIVE = "20010db8000000000000000000000002 02 40 00 c0     eth0"  # flags 0xc0: tentative
DADFAILED = "20010db8000000000000000000000003 02 40 00 88     eth0"

ZERO = "0" * 32


def route(dest: str, plen: str, nexthop: str, flags: str, dev: str) -> str:
    """One /proc/net/ipv6_route line: dest plen src plen next-hop metric refcnt use flags dev."""
    return f"{dest} {plen} {ZERO} 00 {nexthop} 00000400 00000001 00000000 {flags} {dev:>8}"


GATEWAY = "20010002000000010000000000000001"  # 2001:2:0:1::1
DEFAULT = route(ZERO, "00", GATEWAY, "00000003", "isp0")
DEFAULT_REJECT = route(ZERO, "00", ZERO, "00200200", "lo")
GLOBAL_UNICAST = route("2" + "0" * 31, "03", ZERO, "00000001", "wg0")
ONLINK_64 = route("20010002000000010000000000000000", "40", ZERO, "00000001", "isp0")
LINK_LOCAL_ROUTE = route("fe80" + "0" * 28, "40", ZERO, "00000001", "eth0")
DOWN_DEFAULT = route(ZERO, "00", GATEWAY, "00000000", "eth0")


@pytest.mark.parametrize(
    ("routes", "addresses", "expected"),
    [
        ([DEFAULT], [LO, LINK_LOCAL, GLOBAL], True),
        ([GLOBAL_UNICAST], [GLOBAL], True),  # 2000::/3 through a tunnel, no default route
        ([DEFAULT], [LO, LINK_LOCAL], False),  # no global address: link-local only
        ([DEFAULT], [ULA], False),  # ULA only (NAT66 or none): clients prefer IPv4
        ([DEFAULT], [TENTATIVE], False),  # duplicate address detection not done yet
        ([DEFAULT], [DADFAILED], False),
        ([DEFAULT_REJECT], [GLOBAL], False),  # the kernel's "unreachable" default
        ([ONLINK_64, LINK_LOCAL_ROUTE], [GLOBAL], False),  # only the local /64: no way out
        ([DOWN_DEFAULT], [GLOBAL], False),
        ([], [GLOBAL], False),
        (["garbage line", DEFAULT], ["zz", GLOBAL], True),  # junk is skipped, not fatal
    ],
    ids=["default-and-global", "global-unicast-route", "link-local-only", "ula-only",
         "tentative", "dad-failed", "reject-default", "on-link-only", "route-down", "no-route",
         "junk-lines-skipped"],
)
def test_decision(routes: list[str], addresses: list[str], expected: bool) -> None:
    assert global_ipv6(parse_routes("\n".join(routes)), parse_addresses("\n".join(addresses))) \
        is expected


def test_parsed_fields() -> None:
    (route,) = parse_routes(DEFAULT)
    assert str(route.network) == "::/0" and route.device == "isp0" and route.usable_for_global
    (addr,) = parse_addresses(GLOBAL)
    assert str(addr.address) == "2001:2:0:1::2" and addr.scope == 0 and addr.usable_global


def test_files_read_and_missing_files_mean_no_ipv6(tmp_path: Path) -> None:
    routes, addrs = tmp_path / "ipv6_route", tmp_path / "if_inet6"
    routes.write_text(DEFAULT + "\n")
    addrs.write_text(GLOBAL + "\n")
    assert has_global_ipv6(routes, addrs) is True
    assert has_global_ipv6(tmp_path / "absent", addrs) is False


def test_ipv6_path_is_declared_broken_after_consecutive_blackholes_only() -> None:
    from agent.net.ipv6route import IPv6Path

    path = IPv6Path(threshold=3)
    assert [path.note(False, True), path.note(False, True)] == [False, False]
    path.note(True, False)  # an IPv6 success in between: the path works
    assert not path.broken
    path.note(False, False)  # IPv4 failed too (a blocked or dead site): no evidence either way
    assert [path.note(False, True) for _ in range(3)] == [False, False, True]
    assert path.broken
    assert path.note(False, True) is False  # declared once
