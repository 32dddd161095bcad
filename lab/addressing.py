"""The lab's address plan: every address lives in 198.18.0.0/15 (RFC 2544 benchmarking space).

Each lab run has its own three namespaces, so two runs may use the same addresses without
seeing each other; nothing here is ever configured in the machine's root namespace.

    probe ns                isp ns (censor router, ISP resolver)          inet ns
    isp0 198.18.1.2/24 ──── probe0 198.18.1.1/24      inet0 198.18.0.1/30 ──── isp0 198.18.0.2/30
                            resolver 198.18.1.53                              lo: services and sites
                                                                                  in 198.19.0.0/16
"""

from __future__ import annotations

import ipaddress
from typing import Final

LAB_RANGE: Final = ipaddress.IPv4Network("198.18.0.0/15")

# probe <-> isp link (the "last mile")
PROBE_NET: Final = ipaddress.IPv4Network("198.18.1.0/24")
PROBE_ADDR: Final = "198.18.1.2"
ISP_GATEWAY: Final = "198.18.1.1"
ISP_RESOLVER: Final = "198.18.1.53"

# isp <-> inet link (the "uplink" a shutdown cuts)
UPLINK_NET: Final = ipaddress.IPv4Network("198.18.0.0/30")
ISP_UPLINK: Final = "198.18.0.1"
INET_DOWNLINK: Final = "198.18.0.2"

# the internet side
INET_NET: Final = ipaddress.IPv4Network("198.19.0.0/16")
AUTH_DNS: Final = "198.19.0.53"  # authoritative for lab.test (and every other lab zone)
OPEN_RESOLVER: Final = "198.19.0.54"  # uncensored recursive resolver used by the control helper
HELPER_ADDR: Final = "198.19.0.10"
HELPER_PORT: Final = 8080
BLOCKPAGE_ADDR: Final = "198.19.0.20"
PROXY_ADDR: Final = "198.19.0.40"  # an ISP's transparent proxy: relays to the genuine sites
ISP_CLIENTS: Final = ipaddress.IPv4Network("198.18.0.0/16")  # sources sites see from the ISP
BROKER_ADDR: Final = "198.19.0.30"  # reserved for the MQTT broker
COLLECTOR_ADDR: Final = "198.19.0.31"  # reserved for the collector
DEAD_ADDR: Final = "198.19.254.1"  # routed to inet, never assigned: packets vanish (timeout)

SITE_POOL: Final = ipaddress.IPv4Network("198.19.1.0/24")  # one address per scenario site
CDN_EDGE_POOL: Final = ipaddress.IPv4Network("198.19.3.0/24")  # what the ISP-side CDN answer is
SCALE_POOL: Final = ipaddress.IPv4Network("198.19.100.0/24")  # scale-mode servers (few, shared)

BOGON_ANSWER: Final = "10.10.34.35"  # what Iran's national filter answers (a known fingerprint)

# interface names (inside the namespaces, so they never collide between runs)
PROBE_IF: Final = "isp0"  # in probe ns
ISP_PROBE_IF: Final = "probe0"  # in isp ns, towards the probe
ISP_UPLINK_IF: Final = "inet0"  # in isp ns, towards inet
INET_IF: Final = "isp0"  # in inet ns


class AddressPool:
    """Hands out addresses of a pool in order; a bounded, deterministic allocator."""

    def __init__(self, network: ipaddress.IPv4Network, skip: int = 1) -> None:
        self._hosts = list(network.hosts())[skip - 1 :] if skip > 0 else list(network.hosts())
        self._next = 0
        self._network = network

    def take(self) -> str:
        if self._next >= len(self._hosts):
            raise ValueError(f"address pool {self._network} exhausted ({len(self._hosts)} hosts)")
        addr = str(self._hosts[self._next])
        self._next += 1
        return addr


def in_lab(addr: str) -> bool:
    """True when ``addr`` is inside the lab's range (the only addresses tests may touch)."""
    try:
        return ipaddress.IPv4Address(addr) in LAB_RANGE
    except ValueError:
        return False


# ---- IPv6 (dual-stack labs): the benchmarking prefix 2001:2::/48 (RFC 5180), same topology ----
# Only labs with IPv6 sites enable IPv6 in their namespaces; nothing routes outside the prefix.
LAB_RANGE6: Final = ipaddress.IPv6Network("2001:2::/48")
PROBE6_NET: Final = ipaddress.IPv6Network("2001:2:0:1::/64")
PROBE6_ADDR: Final = "2001:2:0:1::2"
ISP6_GATEWAY: Final = "2001:2:0:1::1"
UPLINK6_NET: Final = ipaddress.IPv6Network("2001:2:0:2::/64")
ISP6_UPLINK: Final = "2001:2:0:2::1"
INET6_DOWNLINK: Final = "2001:2:0:2::2"
INET6_NET: Final = ipaddress.IPv6Network("2001:2:0:10::/60")  # services and sites
SITE6_POOL: Final = ipaddress.IPv6Network("2001:2:0:11::/64")  # one address per IPv6 site
SCALE6_POOL: Final = ipaddress.IPv6Network("2001:2:0:12::/64")  # scale-mode servers (dual-stack)


class AddressPool6:
    """Hands out addresses of an IPv6 pool in order (::1, ::2, ...), bounded."""

    def __init__(self, network: ipaddress.IPv6Network, limit: int = 4096) -> None:
        self._network = network
        self._next = 1
        self._limit = limit

    def take(self) -> str:
        if self._next > self._limit:
            raise ValueError(f"address pool {self._network} exhausted ({self._limit} hosts)")
        addr = str(self._network.network_address + self._next)
        self._next += 1
        return addr


def in_lab6(addr: str) -> bool:
    try:
        return ipaddress.IPv6Address(addr) in LAB_RANGE6
    except ValueError:
        return False
