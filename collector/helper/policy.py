"""Which addresses the control helper may connect to: a pure function of the address and config.

The helper opens connections on request from the internet, so without this policy it would be
an SSRF tool: anyone could make it reach the operator's database port, a cloud metadata service
(169.254.169.254) or a private network.  Every address the helper actually connects to (after
DNS resolution, after every redirect, for addresses the probe supplies) goes through
``TargetPolicy.check`` immediately before the connection, and the helper connects to the vetted
address itself, never to a name resolved again later (DNS rebinding).

Decision order (first match wins)::

    1. explicit deny ranges (config; e.g. the collector's public, NATed addresses)  -> refuse
    2. explicit allow ranges (config; e.g. the namespace lab's 198.18.0.0/15)        -> allow
    3. the helper's own addresses (detected at start)                               -> refuse
    4. special-purpose ranges: loopback, private, link-local, multicast, reserved,
       unspecified, documentation, benchmarking, ... (tables below)                 -> refuse
    5. anything else: globally routable unicast                                     -> allow

Nothing is allowed implicitly: rule 2 only holds what the operator wrote.  Allow ranges beat the
helper's own addresses on purpose, so a test on loopback or a lab whose helper lives inside the
allowed range works; an operator who needs both adds the own address as a deny range.

Address forms that smuggle one family inside the other are unwrapped before deciding:
IPv4-mapped IPv6 (``::ffff:127.0.0.1``) is decided, and connected to, as the IPv4 address it
is; the NAT64 well-known prefix (``64:ff9b::/96``, used by DNS64 on IPv6-only hosts) is decided
by its embedded IPv4 address.  6to4 (2002::/16, deprecated by RFC 7526), Teredo, the deprecated
IPv4-compatible form and the local-use NAT64 prefix are refused outright: no website needs
them and each can tunnel to an address the tables would refuse.  IPv6 outside 2000::/3 is
refused as reserved, because IANA has allocated nothing else for global unicast.

Ports: the helper never connects to the WHATWG Fetch standard's "bad ports" (SMTP, SSH, IRC,
...), like a browser, so a GET cannot be smuggled into another protocol (``port_allowed``).

Pure: no I/O.  ``collector.helper.fetch`` enforces it at the socket level.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


def _v4(table: Iterable[tuple[str, str]]) -> tuple[tuple[IPv4Network, str], ...]:
    return tuple((IPv4Network(net), reason) for net, reason in table)


def _v6(table: Iterable[tuple[str, str]]) -> tuple[tuple[IPv6Network, str], ...]:
    return tuple((IPv6Network(net), reason) for net, reason in table)


# IANA IPv4 Special-Purpose Address Registry (RFC 6890 and successors), every block that is not
# globally reachable unicast, plus 192.88.99.0/24 (deprecated 6to4 relay anycast).
SPECIAL_V4: tuple[tuple[IPv4Network, str], ...] = _v4(
    (
        ("0.0.0.0/8", "unspecified"),  # "this network"; 0.0.0.0 connects to the host itself
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared_address_space"),  # carrier-grade NAT
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link_local"),  # includes cloud metadata 169.254.169.254
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "ietf_protocol_assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4_relay_anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),  # the namespace lab: allow it explicitly
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes the limited broadcast 255.255.255.255
    )
)

NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")
IPV4_MAPPED = IPv6Network("::ffff:0:0/96")
GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")

# Checked in order; the first match names the reason.  Anything outside 2000::/3 that is not
# listed here is "reserved" (except the NAT64 well-known prefix, unwrapped before this table).
SPECIAL_V6: tuple[tuple[IPv6Network, str], ...] = _v6(
    (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "ipv4_compatible"),  # deprecated ::a.b.c.d
        ("::ffff:0:0:0/96", "ipv4_translated"),  # SIIT
        ("64:ff9b:1::/48", "nat64_local_use"),
        ("100::/64", "discard_only"),
        ("2001::/32", "teredo"),
        ("2001::/23", "ietf_protocol_assignments"),  # incl. benchmarking 2001:2::/48, ORCHID
        ("2001:db8::/32", "documentation"),
        ("2002::/16", "6to4"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "srv6_sids"),
        ("fc00::/7", "unique_local"),  # the IPv6 private space
        ("fe80::/10", "link_local"),
        ("fec0::/10", "site_local"),  # deprecated, still routed internally by some networks
        ("ff00::/8", "multicast"),
    )
)


# The WHATWG Fetch standard's "bad ports": services a browser never sends HTTP to, because a GET
# line can be misread as a command (SMTP, IRC, ...).  The helper refuses them the same way, so it
# cannot be used for cross-protocol requests; no web page a probe measures lives there.
BAD_PORTS: frozenset[int] = frozenset(
    {
        0, 1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95,
        101, 102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179,
        389, 427, 465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601,
        636, 989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000,
        6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080,
    }
)


def port_allowed(port: int) -> bool:
    """True for a TCP port the helper may connect to (1-65535, not a Fetch "bad port")."""
    return 0 < port < 65536 and port not in BAD_PORTS


class PolicyError(ValueError):
    """An allow or deny range in the configuration is not usable."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome of a policy check.

    ``address`` is what to connect to: the input with IPv4-mapped IPv6 unwrapped to IPv4.
    ``reason`` is a machine string: ``global``, ``allowed_range``, ``denied_range``,
    ``own_address`` or a special-purpose category such as ``loopback`` or ``private``.
    """

    allowed: bool
    reason: str
    address: Address


def parse_address(value: str | Address) -> Address:
    """Parse an address the helper is about to use; raises ValueError on anything else.

    Scoped IPv6 (``fe80::1%eth0``) parses; its range decides, and link-local is refused unless
    the operator explicitly allowed it.
    """
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    return ip_address(value.strip().strip("[]"))


def normalise(addr: Address) -> Address:
    """Unwrap IPv4-mapped IPv6: ``::ffff:127.0.0.1`` *is* 127.0.0.1 when connected to."""
    if isinstance(addr, IPv6Address):
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return mapped
    return addr


def nat64_embedded(addr: Address) -> IPv4Address | None:
    """The IPv4 address inside a NAT64 well-known-prefix address (RFC 6052), else None."""
    if isinstance(addr, IPv6Address) and addr in NAT64_WELL_KNOWN:
        return IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def special_purpose(addr: Address) -> str | None:
    """The special-purpose category of an address, or None when it is global unicast.

    Ignores configuration; ``TargetPolicy.check`` applies allow/deny ranges first.
    """
    addr = normalise(addr)
    if isinstance(addr, IPv4Address):
        for net4, reason in SPECIAL_V4:
            if addr in net4:
                return reason
        return None
    embedded = nat64_embedded(addr)
    if embedded is not None:
        inner = special_purpose(embedded)
        return None if inner is None else f"nat64_{inner}"
    unscoped = _unscoped(addr)  # scope ids do not change the range
    for net6, reason in SPECIAL_V6:
        if unscoped in net6:
            return reason
    if unscoped not in GLOBAL_UNICAST_V6:
        return "reserved"
    return None


def parse_network(text: str) -> Network:
    """Parse a configured CIDR range strictly (host bits set is a typo worth reporting).

    IPv4-mapped IPv6 ranges are converted to IPv4, since mapped addresses are decided as IPv4.
    A /0 is refused: it would silently switch the whole policy off.
    """
    try:
        net = ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise PolicyError(f"not a CIDR range: {text!r} ({exc})") from None
    if isinstance(net, IPv6Network) and net.subnet_of(IPV4_MAPPED) and net.prefixlen >= 96:
        net = IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    if net.prefixlen == 0:
        raise PolicyError(f"range {text!r} covers every address; list the ranges you need")
    return net


class TargetPolicy:
    """The address policy, built once from configuration; ``check`` is cheap and pure."""

    __slots__ = ("_allow", "_deny", "_own")

    def __init__(
        self,
        allow: Iterable[Network | str] = (),
        deny: Iterable[Network | str] = (),
        own: Iterable[Address | str] = (),
    ) -> None:
        self._allow = tuple(n if not isinstance(n, str) else parse_network(n) for n in allow)
        self._deny = tuple(n if not isinstance(n, str) else parse_network(n) for n in deny)
        self._own = frozenset(_unscoped(normalise(parse_address(a))) for a in own)

    @property
    def allow_ranges(self) -> tuple[Network, ...]:
        return self._allow

    @property
    def deny_ranges(self) -> tuple[Network, ...]:
        return self._deny

    def check(self, value: str | Address) -> Decision:
        """Decide one address.  Raises ValueError only when ``value`` is not an address."""
        addr = normalise(parse_address(value))
        unscoped = _unscoped(addr)
        if _within(unscoped, self._deny):
            return Decision(False, "denied_range", addr)
        if _within(unscoped, self._allow):
            return Decision(True, "allowed_range", addr)
        embedded = nat64_embedded(unscoped)
        if embedded is not None:
            inner = self.check(embedded)
            reason = inner.reason if inner.allowed else f"nat64_{inner.reason}"
            return Decision(inner.allowed, reason, addr)
        if unscoped in self._own:
            return Decision(False, "own_address", addr)
        category = special_purpose(unscoped)
        if category is not None:
            return Decision(False, category, addr)
        return Decision(True, "global", addr)

    def allows(self, value: str | Address) -> bool:
        return self.check(value).allowed

    def __repr__(self) -> str:  # own addresses are the operator's, not a caller's: fine to show
        return (
            f"TargetPolicy(allow={[str(n) for n in self._allow]}, "
            f"deny={[str(n) for n in self._deny]}, own={len(self._own)} addresses)"
        )


def _within(addr: Address, networks: tuple[Network, ...]) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)


def _unscoped(addr: Address) -> Address:
    return IPv6Address(int(addr)) if isinstance(addr, IPv6Address) else addr
