"""Address helpers shared by probe and control helper: "ip:port" endpoints and IP literals.

Endpoints are written ``ip:port`` for IPv4 and ``[ip]:port`` for IPv6, the form OONI uses and
the control protocol's ``tcp_connect`` keys use.  One writer (:func:`endpoint`), one strict
parser for input we act on (:func:`parse_endpoint`: configs, requests) and one tolerant reader
for evidence already recorded (:func:`read_endpoint`: analysis, export), so the probe's keys and
the helper's keys always compare.
"""

from __future__ import annotations

import ipaddress


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def canonical_ip(text: str) -> str:
    """An IP literal in canonical text form (brackets dropped); other text unchanged."""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return text


def endpoint(ip: str, port: int) -> str:
    """``ip:port`` for IPv4, ``[ip]:port`` for IPv6, the address in canonical form."""
    ip = canonical_ip(ip)
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_endpoint(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``ip:port`` or ``[ipv6]:port`` into (canonical ip, port); ValueError otherwise.

    With ``default_port`` a bare address (``192.0.2.1``, ``2001:db8::1``, ``[2001:db8::1]``) is
    accepted too.  Names are refused (an endpoint is an address), as are ports outside 1-65535
    and scoped IPv6 addresses.
    """
    text = text.strip()
    port_text: str | None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not an endpoint: {text!r} (IPv6 endpoints are [address]:port)")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif text.count(":") > 1:
        host, port_text = text, None  # a bare IPv6 address
    else:
        host, port_text = text, None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an endpoint: {text!r} (give an IP address, not a name)") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise ValueError(f"scoped IPv6 addresses are not accepted: {text!r}")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"not an endpoint: {text!r} (write ip:port or [ipv6]:port)")
        return str(addr), default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {text!r}: must be 1-65535")
    return str(addr), int(port_text)


def read_endpoint(text: str | None) -> tuple[str, int | None]:
    """Tolerant reader for recorded evidence: (canonical ip, port or None); never raises.

    An IPv4-mapped IPv6 address reads as its IPv4 address, so ``[::ffff:192.0.2.1]:443`` and
    ``192.0.2.1:443`` are one endpoint.  Text that is not an address comes back as it is.
    """
    if not text:
        return "", None
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    return _unmapped(host), int(port) if port.isdigit() else None


def _unmapped(host: str) -> str:
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.strip().rstrip(".").lower()
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)
