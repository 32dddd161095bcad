"""Address helpers shared by the net layer: "ip:port" endpoints and IP literals.

Endpoints are written ``ip:port`` for IPv4 and ``[ip]:port`` for IPv6, the form OONI uses and
the control protocol's ``tcp_connect`` keys use.
"""

from __future__ import annotations

import ipaddress


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def split_endpoint(text: str) -> tuple[str, int]:
    """Inverse of :func:`endpoint`; raises ValueError on malformed input."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not is_ip(host):
        raise ValueError(f"not an ip:port endpoint: {text!r}")
    value = int(port)
    if not 0 < value < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, value
