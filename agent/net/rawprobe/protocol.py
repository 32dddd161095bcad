"""The narrow interface between the agent and the packet process: JSON lines, bounded requests.

Requests (one JSON object a line; every reply carries ``ok``):

    {"op": "hello"}                                  -> {"ok", "version", "ops"} or ok=false
    {"op": "capture", "ports": [53, 443], "seconds": 20, "max_packets": 400}
                                                     -> {"ok", "event": "started"}
    {"op": "stop", "endpoints": ["198.19.1.5:443", "198.18.1.53:53"]}
                                                     -> {"ok", "event": "packets", "packets": [...]}
    {"op": "trace", "protocol": "tls", "address": "198.19.1.5", "port": 443, "name": "blocked",
     "twin": "example.com", "max_hops": 16, "probes_per_hop": 1, "timeout": 1.0, "budget_s": 40}
                                                     -> {"ok", "event": "trace", "hops": [...]}

A capture ends at ``stop`` or after ``seconds``, whichever comes first; only packets to or from
the endpoints named in ``stop`` are returned (the process sees the whole interface; the agent
gets only its own flows).  Every limit is enforced by the packet process itself.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

VERSION = 1
MAX_LINE = 4 << 20  # a reply with max_packets packets fits well within this
MAX_CAPTURE_S = 120.0
MAX_CAPTURE_PACKETS = 4000
MAX_PORTS = 8
MAX_ENDPOINTS = 64
MAX_HOPS = 32
MAX_PROBES_PER_HOP = 3
MAX_PROBE_TIMEOUT_S = 3.0
MAX_TRACE_BUDGET_S = 120.0
_NAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*"
                      r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?$", re.I)


class ProtocolError(ValueError):
    """A request or reply that does not follow the interface."""


@dataclass(frozen=True, slots=True)
class CaptureRequest:
    ports: tuple[int, ...]
    seconds: float
    max_packets: int

    def to_json(self) -> dict[str, Any]:
        return {"op": "capture", "ports": list(self.ports), "seconds": self.seconds,
                "max_packets": self.max_packets}


@dataclass(frozen=True, slots=True)
class TraceRequest:
    protocol: str  # "tls" | "http" | "dns"
    address: str
    port: int
    name: str  # what triggers the censor
    twin: str  # the benign twin
    max_hops: int = 16
    probes_per_hop: int = 1
    timeout: float = 1.0
    budget_s: float = 40.0

    def to_json(self) -> dict[str, Any]:
        return {"op": "trace", "protocol": self.protocol, "address": self.address,
                "port": self.port, "name": self.name, "twin": self.twin,
                "max_hops": self.max_hops, "probes_per_hop": self.probes_per_hop,
                "timeout": self.timeout, "budget_s": self.budget_s}


def _num(data: dict[str, Any], key: str, lo: float, hi: float, default: float | None = None
         ) -> float:
    value = data.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(f"{key} must be a number in [{lo}, {hi}]")
    return float(value)


def parse_capture(data: dict[str, Any]) -> CaptureRequest:
    ports = data.get("ports")
    if (not isinstance(ports, list) or not 1 <= len(ports) <= MAX_PORTS
            or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
                       for p in ports)):
        raise ProtocolError(f"ports must be 1 to {MAX_PORTS} port numbers")
    return CaptureRequest(
        ports=tuple(ports), seconds=_num(data, "seconds", 0.1, MAX_CAPTURE_S),
        max_packets=int(_num(data, "max_packets", 1, MAX_CAPTURE_PACKETS)),
    )


def parse_endpoints(data: dict[str, Any]) -> set[tuple[str, int]]:
    eps = data.get("endpoints", [])
    if not isinstance(eps, list) or len(eps) > MAX_ENDPOINTS:
        raise ProtocolError(f"endpoints must be a list of at most {MAX_ENDPOINTS} ip:port")
    out: set[tuple[str, int]] = set()
    for ep in eps:
        out.add(split_endpoint(ep))
    return out


def split_endpoint(ep: Any) -> tuple[str, int]:
    if not isinstance(ep, str) or ":" not in ep:
        raise ProtocolError(f"not an ip:port endpoint: {str(ep)[:64]!r}")
    host, _, port = ep.rpartition(":")
    host = host.strip("[]")
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        raise ProtocolError(f"not an ip:port endpoint: {ep[:64]!r}") from None


def parse_trace(data: dict[str, Any]) -> TraceRequest:
    protocol = data.get("protocol")
    if protocol not in ("tls", "http", "dns"):
        raise ProtocolError("protocol must be tls, http or dns")
    try:
        address = ipaddress.ip_address(str(data.get("address")))
    except ValueError:
        raise ProtocolError("address must be an IP address") from None
    if address.version != 4:
        raise ProtocolError("traces are IPv4 only")
    names = [data.get("name"), data.get("twin")]
    if not all(isinstance(n, str) and _NAME_RE.match(n) for n in names):
        raise ProtocolError("name and twin must be domain names")
    return TraceRequest(
        protocol=str(protocol), address=str(address),
        port=int(_num(data, "port", 1, 65535)), name=str(names[0]), twin=str(names[1]),
        max_hops=int(_num(data, "max_hops", 1, MAX_HOPS, 16)),
        probes_per_hop=int(_num(data, "probes_per_hop", 1, MAX_PROBES_PER_HOP, 1)),
        timeout=_num(data, "timeout", 0.1, MAX_PROBE_TIMEOUT_S, 1.0),
        budget_s=_num(data, "budget_s", 1, MAX_TRACE_BUDGET_S, 40.0),
    )
