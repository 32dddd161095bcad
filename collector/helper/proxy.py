"""The helper behind a reverse proxy: who the caller is, and where the helper's routes live.

``[helper] trusted_proxies`` lists the proxies' addresses (CIDRs).  ``X-Forwarded-For`` is
read only when the TCP peer is one of them, and then from the right: each trusted proxy
appends the address it received the request from, so the right-most address that is *not* a
trusted proxy is the caller (anything to its left was written by the caller and proves
nothing).  From any other peer the header is ignored: a probe cannot pick its rate-limit
bucket or its reported address by sending one.

``[helper] path_prefix`` (e.g. ``/vigil-helper``) serves every route under that prefix.  The
proxy must pass the request target unchanged (nginx: ``proxy_pass`` without a URI): signed
requests sign the path the probe sent, prefix included (agent.wire.helper_auth), and the
helper checks the signature against the path it receives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from agent.errors import ConfigError

Network = IPv4Network | IPv6Network
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
MAX_FORWARDED_HOPS = 32  # entries read from the right; a longer chain is cut there


def parse_trusted_proxies(items: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) of the trusted proxies; ConfigError naming a bad one."""
    out: list[Network] = []
    for item in items:
        try:
            out.append(ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"[helper] trusted_proxies: {item!r} is not an address or CIDR"
                              ) from None
    return tuple(out)


def normalize_prefix(text: str) -> str:
    """``""`` or ``/seg[/seg...]`` without a trailing slash; ConfigError otherwise."""
    stripped = text.strip().strip("/")
    if not stripped:
        return ""
    segments = stripped.split("/")
    if any(s in (".", "..") or not _PREFIX_SEGMENT.fullmatch(s) for s in segments):
        raise ConfigError(f"[helper] path_prefix {text!r}: use plain path segments "
                          "(letters, digits, . _ ~ -), e.g. /vigil-helper")
    return "/" + "/".join(segments)


def _canonical(text: str) -> str | None:
    try:
        addr = ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _trusted(addr: str, trusted: Sequence[Network]) -> bool:
    ip = ip_address(addr)
    return any(ip.version == net.version and ip in net for net in trusted)


def forwarded_client(peer: str, forwarded_for: Sequence[str],
                     trusted: Sequence[Network]) -> str:
    """The caller's address: ``peer`` unless it is a trusted proxy, then the right-most
    X-Forwarded-For entry that is not one.  ``forwarded_for`` is every header value, in
    order.  A malformed entry stops the walk at the last trusted hop (which is returned:
    the request is then accounted to the proxy, never to an address nobody vouched for)."""
    current = _canonical(peer)
    if current is None or not trusted or not _trusted(current, trusted):
        return peer if current is None else current
    entries = [e for value in forwarded_for for e in value.split(",") if e.strip()]
    for entry in reversed(entries[-MAX_FORWARDED_HOPS:]):
        addr = _canonical(entry)
        if addr is None:
            return current
        current = addr
        if not _trusted(addr, trusted):
            return addr
    return current
