"""Packet headers as the capture process reports them: typed, validated, JSON round-trip.

Only headers cross the interface (no payload bytes), plus the answers of DNS replies, which are
evidence in themselves.  ``Packet.from_json`` accepts exactly what ``to_json`` writes and raises
``ValueError`` on anything else, so a confused or hostile capture process cannot feed the
analysis malformed data.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

PROTOCOLS = ("tcp", "udp", "icmp")
_TCP_FLAGS = frozenset("FSRPAUEC")
MAX_ANSWERS = 32
MAX_OPTIONS = 40


@dataclass(frozen=True, slots=True)
class Quoted:
    """The flow an ICMP error quotes (the probe's own packet that expired or was refused)."""

    src: str
    dst: str
    proto: str
    sport: int
    dport: int


@dataclass(frozen=True, slots=True)
class Packet:
    t: float  # seconds since the capture started
    src: str
    dst: str
    proto: str  # "tcp" | "udp" | "icmp"
    ttl: int  # IPv4 TTL or IPv6 hop limit, as received
    ip_id: int  # 0 for IPv6
    df: bool
    sport: int = 0
    dport: int = 0
    flags: str = ""  # TCP flags as scapy spells them ("SA", "R", "RA", "FA", "PA")
    seq: int = 0
    ack: int = 0
    window: int = 0
    options: tuple[str, ...] = ()  # TCP option names in order
    payload_len: int = 0
    dns_id: int | None = None  # DNS over UDP: the message id of a reply
    dns_rcode: str | None = None
    dns_answers: tuple[str, ...] = ()  # A/AAAA values of a reply
    icmp_type: int | None = None
    icmp_code: int | None = None
    quoted: Quoted | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "t": round(self.t, 6), "src": self.src, "dst": self.dst, "proto": self.proto,
            "ttl": self.ttl, "ip_id": self.ip_id, "df": self.df,
        }
        if self.proto in ("tcp", "udp"):
            out.update(sport=self.sport, dport=self.dport, payload_len=self.payload_len)
        if self.proto == "tcp":
            out.update(flags=self.flags, seq=self.seq, ack=self.ack, window=self.window,
                       options=list(self.options))
        if self.dns_id is not None:
            out.update(dns_id=self.dns_id, dns_rcode=self.dns_rcode,
                       dns_answers=list(self.dns_answers))
        if self.proto == "icmp":
            out.update(icmp_type=self.icmp_type, icmp_code=self.icmp_code)
            if self.quoted is not None:
                q = self.quoted
                out["quoted"] = {"src": q.src, "dst": q.dst, "proto": q.proto,
                                 "sport": q.sport, "dport": q.dport}
        return out

    @classmethod
    def from_json(cls, data: Any) -> Packet:
        if not isinstance(data, dict):
            raise ValueError("a packet is a JSON object")
        proto = data.get("proto")
        if proto not in PROTOCOLS:
            raise ValueError(f"packet protocol must be one of {PROTOCOLS}")
        quoted = None
        if data.get("quoted") is not None:
            q = data["quoted"]
            if not isinstance(q, dict) or q.get("proto") not in PROTOCOLS:
                raise ValueError("quoted must be an object with a known protocol")
            quoted = Quoted(_addr(q.get("src")), _addr(q.get("dst")), str(q["proto"]),
                            _int(q.get("sport", 0), 0, 65535), _int(q.get("dport", 0), 0, 65535))
        flags = data.get("flags", "")
        if not isinstance(flags, str) or not set(flags) <= _TCP_FLAGS:
            raise ValueError("flags must be TCP flag letters")
        options = data.get("options", [])
        answers = data.get("dns_answers", [])
        if (not isinstance(options, list) or len(options) > MAX_OPTIONS
                or not all(isinstance(o, str) and len(o) <= 32 for o in options)):
            raise ValueError("options must be a short list of option names")
        if not isinstance(answers, list) or len(answers) > MAX_ANSWERS:
            raise ValueError("dns_answers must be a short list of addresses")
        rcode = data.get("dns_rcode")
        if rcode is not None and (not isinstance(rcode, str) or len(rcode) > 16):
            raise ValueError("dns_rcode must be a short string")
        t = data.get("t")
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t < 86400:
            raise ValueError("t must be seconds since the capture started")
        df = data.get("df")
        if not isinstance(df, bool):
            raise ValueError("df must be a boolean")
        dns_id = data.get("dns_id")
        return cls(
            t=float(t), src=_addr(data.get("src")), dst=_addr(data.get("dst")), proto=proto,
            ttl=_int(data.get("ttl"), 0, 255), ip_id=_int(data.get("ip_id"), 0, 65535), df=df,
            sport=_int(data.get("sport", 0), 0, 65535), dport=_int(data.get("dport", 0), 0, 65535),
            flags=flags, seq=_int(data.get("seq", 0), 0, 2**32 - 1),
            ack=_int(data.get("ack", 0), 0, 2**32 - 1),
            window=_int(data.get("window", 0), 0, 65535),
            options=tuple(options), payload_len=_int(data.get("payload_len", 0), 0, 65535),
            dns_id=None if dns_id is None else _int(dns_id, 0, 65535), dns_rcode=rcode,
            dns_answers=tuple(_addr(a) for a in answers),
            icmp_type=_opt_int(data.get("icmp_type"), 255),
            icmp_code=_opt_int(data.get("icmp_code"), 255), quoted=quoted,
        )


def _int(value: Any, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"expected an integer in [{lo}, {hi}], got {value!r}")
    return value


def _opt_int(value: Any, hi: int) -> int | None:
    return None if value is None else _int(value, 0, hi)


def _addr(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("an address must be a string")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"not an IP address: {value[:64]!r}") from None
