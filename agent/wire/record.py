"""Typed data shared by every experiment: verdicts and measurement records.

The vocabulary and its rules: docs/design.md, Contracts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.StrEnum):
    OK = "ok"
    BLOCKED = "blocked"
    THROTTLED = "throttled"
    DOWN = "down"
    INCONCLUSIVE = "inconclusive"


class Blocking(enum.StrEnum):
    DNS = "dns"
    TCP_IP = "tcp_ip"
    TLS = "tls"
    HTTP_FAILURE = "http-failure"
    HTTP_DIFF = "http-diff"
    THROTTLING = "throttling"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The conclusion of one measurement.

    ``reason`` is a dotted machine string (``dns.nxdomain``, ``tls.sni_reset``, ``site.down``...);
    ``confirmed`` is true only when a known blockpage fingerprint matched.  ``interference`` is
    tampering seen on the way that did not decide the verdict (a dotted reason such as
    ``dns.injected`` on an ``ok`` verdict: the genuine page still arrived).
    """

    status: Status
    blocking: Blocking | None = None
    reason: str = ""
    confirmed: bool = False
    fingerprint: str | None = None
    interference: str | None = None
    # raw-packet evidence about who ended the flow (``packets.rst_injected.hop3``,
    # ``packets.dns_injected.hop2``, ``packets.server_reset``); None without packets
    evidence: str | None = None

    def __post_init__(self) -> None:
        blocked = self.status in (Status.BLOCKED, Status.THROTTLED)
        if blocked != (self.blocking is not None):
            raise ValueError(f"status {self.status} is inconsistent with blocking {self.blocking}")
        if self.confirmed and self.fingerprint is None:
            raise ValueError("a confirmed verdict names the fingerprint that matched")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": str(self.status),
            "blocking": None if self.blocking is None else str(self.blocking),
            "reason": self.reason,
            "confirmed": self.confirmed,
        }
        if self.fingerprint is not None:
            out["fingerprint"] = self.fingerprint
        if self.interference is not None:
            out["interference"] = self.interference
        if self.evidence is not None:
            out["evidence"] = self.evidence
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        blocking = data.get("blocking")
        return cls(
            status=Status(data["status"]),
            blocking=None if blocking is None else Blocking(blocking),
            reason=data.get("reason", ""),
            confirmed=bool(data.get("confirmed", False)),
            fingerprint=data.get("fingerprint"),
            interference=data.get("interference"),
            evidence=data.get("evidence"),
        )


@dataclass(frozen=True, slots=True)
class ProbeInfo:
    """Where the probe is, as told by the control helper (never the probe's own IP)."""

    probe_id: str = ""
    probe_asn: str = "AS0"
    probe_cc: str = "ZZ"
    probe_network_name: str = ""
    resolver_asn: str = "AS0"
    probe_registration_cc: str = ""  # where the network is registered ("" unknown)
    resolver_ip: str = ""  # the resolver's egress as seen from outside ("" unknown)
    resolver_network_name: str = ""


@dataclass(frozen=True, slots=True)
class MeasurementRecord:
    """One measurement as published; field names are the wire contract (schema file)."""

    measurement_id: str
    test_name: str
    test_version: str
    input: str | None
    category_code: str | None
    probe_id: str
    probe_asn: str
    probe_cc: str
    probe_network_name: str
    resolver_asn: str
    measurement_start_time: str
    test_runtime: float
    software_name: str
    software_version: str
    test_keys: dict[str, Any]
    verdict: Verdict
    annotations: dict[str, str] = field(default_factory=dict)
    # Known only when the control helper told them; absent from the JSON otherwise.
    probe_registration_cc: str = ""  # where probe_asn's network is registered
    resolver_ip: str = ""  # the DNS resolver's egress address seen from outside
    resolver_network_name: str = ""

    # Set by the outbox when it takes the record (1, 2, 3, ... per probe); optional on the wire.
    probe_seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "measurement_id": self.measurement_id,
            "test_name": self.test_name,
            "test_version": self.test_version,
            "input": self.input,
            "category_code": self.category_code,
            "probe_id": self.probe_id,
            "probe_asn": self.probe_asn,
            "probe_cc": self.probe_cc,
            "probe_network_name": self.probe_network_name,
            "resolver_asn": self.resolver_asn,
            "measurement_start_time": self.measurement_start_time,
            "test_runtime": self.test_runtime,
            "software_name": self.software_name,
            "software_version": self.software_version,
            "test_keys": self.test_keys,
            "verdict": self.verdict.to_json(),
            "annotations": self.annotations,
        }
        optional = {
            "probe_registration_cc": self.probe_registration_cc,
            "resolver_ip": self.resolver_ip,
            "resolver_network_name": self.resolver_network_name,
        }
        out.update({k: v for k, v in optional.items() if v})
        if self.probe_seq is not None:
            out["probe_seq"] = self.probe_seq
        return out


@dataclass(frozen=True, slots=True)
class Target:
    """One input of one experiment: a URL for web tests, a host or app name for others."""

    input: str | None
    category_code: str | None = None
    source: str = ""  # "file:line" the input came from, for error messages
