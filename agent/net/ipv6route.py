"""Does this host have working IPv6 to the internet?  Read from the kernel's own tables.

A dual-stack client (a browser doing happy eyeballs, RFC 8305) uses IPv6 when it has a route to
global destinations and a global source address to send from; otherwise it stays on IPv4.  The
agent measures IPv6 under the same condition, decided from ``/proc/net/ipv6_route`` and
``/proc/net/if_inet6`` of the network namespace it runs in, without sending a packet:

* a route that covers the global unicast space (``::/0`` or ``2000::/3``), up, not a
  reject/blackhole route, not on the loopback device; and
* an address of global scope that is usable (not tentative, not failed duplicate address
  detection) and not unique-local (``fc00::/7``): a host with only ULA addresses prefers IPv4
  for global destinations (RFC 6724's default policy), as do the browsers on it.

Everything but :func:`has_global_ipv6` is pure and takes the files' text.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

RTF_UP: Final = 0x0001
RTF_REJECT: Final = 0x0200
IFA_F_DADFAILED: Final = 0x08
IFA_F_TENTATIVE: Final = 0x40
SCOPE_GLOBAL: Final = 0x00
GLOBAL_UNICAST: Final = ipaddress.IPv6Network("2000::/3")
UNIQUE_LOCAL: Final = ipaddress.IPv6Network("fc00::/7")
ROUTE_FILE: Final = Path("/proc/net/ipv6_route")
ADDRESS_FILE: Final = Path("/proc/net/if_inet6")


@dataclass(frozen=True, slots=True)
class Route:
    network: ipaddress.IPv6Network
    flags: int
    device: str

    @property
    def usable_for_global(self) -> bool:
        """Up, not a reject route, off loopback, and covering the whole global space (an
        on-link /64 leads nowhere beyond the local network)."""
        if not self.flags & RTF_UP or self.flags & RTF_REJECT or self.device == "lo":
            return False
        return GLOBAL_UNICAST.subnet_of(self.network)  # ::/0 or 2000::/3 itself


@dataclass(frozen=True, slots=True)
class Address:
    address: ipaddress.IPv6Address
    scope: int
    flags: int
    device: str

    @property
    def usable_global(self) -> bool:
        if self.scope != SCOPE_GLOBAL or self.device == "lo":
            return False
        if self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
            return False
        return self.address not in UNIQUE_LOCAL and not self.address.is_loopback


def _hex_address(text: str) -> ipaddress.IPv6Address:
    if len(text) != 32:
        raise ValueError(f"not a 32-digit IPv6 address: {text!r}")
    return ipaddress.IPv6Address(int(text, 16))


def parse_routes(text: str) -> list[Route]:
    """``/proc/net/ipv6_route``: dest plen src plen next-hop metric refcnt use flags device.

    Lines that do not parse are skipped (the file is the kernel's; a future format must not
    turn into a crash, only into "no IPv6").
    """
    out: list[Route] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            dest = _hex_address(fields[0])
            plen = int(fields[1], 16)
            flags = int(fields[8], 16)
            network = ipaddress.IPv6Network((dest, plen), strict=False)
        except ValueError:
            continue
        out.append(Route(network, flags, fields[9]))
    return out


def parse_addresses(text: str) -> list[Address]:
    """``/proc/net/if_inet6``: address ifindex plen scope flags device (hex fields)."""
    out: list[Address] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        try:
            address = _hex_address(fields[0])
            scope = int(fields[3], 16)
            flags = int(fields[4], 16)
        except ValueError:
            continue
        out.append(Address(address, scope, flags, fields[5]))
    return out


def global_ipv6(routes: Iterable[Route], addresses: Iterable[Address]) -> bool:
    """The decision, from parsed tables."""
    return any(r.usable_for_global for r in routes) and any(a.usable_global for a in addresses)


def has_global_ipv6(route_file: Path = ROUTE_FILE, address_file: Path = ADDRESS_FILE) -> bool:
    """True when this network namespace has a global IPv6 route and source address.

    False when the files cannot be read (IPv6 disabled in the kernel, no /proc).
    """
    try:
        routes = route_file.read_text(encoding="ascii", errors="replace")
        addresses = address_file.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return global_ipv6(parse_routes(routes), parse_addresses(addresses))


class IPv6Path:
    """Does IPv6 still work on this run's path?  Browsers remember a broken IPv6 path (RFC
    8305 §5 lets them prefer IPv4 after failures); a measurement run must too, or a host whose
    IPv6 silently blackholes would wait a connect timeout on every site.

    The evidence is sites reachable over IPv4 whose IPv6 connects timed out: after
    ``threshold`` of them in a row (no IPv6 success in between), IPv6 is off for the rest of the
    run.  A censor dropping one site's IPv6 address does not look like that; a broken path
    does.  Not thread-safe (one event loop).
    """

    def __init__(self, threshold: int = 8) -> None:
        self.threshold = threshold
        self.broken = False
        self._strikes = 0

    def note(self, ipv6_ok: bool, ipv6_timed_out_while_ipv4_worked: bool) -> bool:
        """Record one measurement's outcome; True when this call declared the path broken."""
        if self.broken:
            return False
        if ipv6_ok:
            self._strikes = 0
        elif ipv6_timed_out_while_ipv4_worked:
            self._strikes += 1
            if self._strikes >= self.threshold:
                self.broken = True
                return True
        return False
