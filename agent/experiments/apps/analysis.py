"""Verdict per app from per-endpoint results and the control's view (pure, table-driven).

An endpoint result says which stage failed first: ``dns`` (the name did not resolve), ``tcp``
(connect), ``tls`` (handshake), ``http`` (request over TLS) or ``handshake`` (the VPN protocol's
first packet got no valid answer).  A *group* (Telegram's data centres, its web client, Tor's
directory authorities, ...) works when any of its endpoints works, because the apps themselves
fall back from one endpoint to the next.

Group status, following the field's hard-won rules:

* ``ok``: some endpoint worked;
* ``blocked``: every endpoint failed here while the control helper reached at least one of the
  failing endpoints from outside (so it is not just down);
* ``down``: every endpoint failed here and the control failed on all of them too;
* ``unknown``: every endpoint failed and the control could not be asked (``inconclusive``,
  never ``blocked``).

App verdict: ``blocked`` if any group is blocked (blocking one part of an app is censorship,
e.g. Telegram's data centres dropped while web.telegram.org loads), then ``inconclusive`` if
any group is unknown, then ``down`` if any group is down, else ``ok``.  The reason names the
layer and the failure (``tcp.timeout``, ``tls.reset``, ``vpn.no_answer``...) of the blocked
group's endpoints; the per-group details are in the test keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.wire.record import Blocking, Status, Verdict

STAGES = ("dns", "tcp", "tls", "http", "handshake")


@dataclass(frozen=True, slots=True)
class EndpointResult:
    group: str
    name: str
    host: str
    address: str | None  # "ip:port" tried (the first resolved address), None if DNS failed
    check: str
    failed_stage: str | None  # one of STAGES, None on success
    failure: str | None  # OONI failure string (or a handshake reason) of that stage
    control_ok: bool | None = None  # the helper's view of the same endpoint; None: not asked
    control_failure: str | None = None
    t0: float = 0.0
    t: float = 0.0
    detail: Mapping[str, Any] = field(default_factory=dict)  # TLS version, HTTP status...

    @property
    def ok(self) -> bool:
        return self.failed_stage is None

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "host": self.host,
            "address": self.address,
            "check": self.check,
            "failed_stage": self.failed_stage,
            "failure": self.failure,
            "control_ok": self.control_ok,
            "control_failure": self.control_failure,
            "t0": self.t0,
            "t": self.t,
            "detail": dict(self.detail),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EndpointResult:
        return cls(
            group=str(d["group"]),
            name=str(d["name"]),
            host=str(d["host"]),
            address=d.get("address"),
            check=str(d["check"]),
            failed_stage=d.get("failed_stage"),
            failure=d.get("failure"),
            control_ok=d.get("control_ok"),
            control_failure=d.get("control_failure"),
            t0=float(d.get("t0", 0.0)),
            t=float(d.get("t", 0.0)),
            detail=dict(d.get("detail") or {}),
        )


_FAILURE_WORD = {
    "generic_timeout_error": "timeout",
    "connection_reset": "reset",
    "connection_refused": "refused",
    "eof_error": "eof",
    "host_unreachable": "unreachable",
    "network_unreachable": "unreachable",
    "dns_nxdomain_error": "nxdomain",
    "dns_no_answer": "no_answer",
    "dns_servfail_error": "servfail",
    "dns_refused_error": "refused",
    "ssl_invalid_hostname": "invalid_certificate",
    "ssl_invalid_certificate": "invalid_certificate",
    "ssl_unknown_authority": "invalid_certificate",
    "ssl_failed_handshake": "failed",
}

_STAGE_BLOCKING = {
    "dns": Blocking.DNS,
    "tcp": Blocking.TCP_IP,
    "tls": Blocking.TLS,
    "http": Blocking.HTTP_FAILURE,
    "handshake": Blocking.TCP_IP,
}

_STAGE_PREFIX = {"dns": "dns", "tcp": "tcp", "tls": "tls", "http": "http", "handshake": "vpn"}


def reason_for(stage: str, failure: str | None) -> str:
    """``<layer>.<word>``: ``tcp.timeout``, ``tls.reset``, ``vpn.no_answer``, ``dns.nxdomain``."""
    if stage == "handshake" and failure in (None, "generic_timeout_error"):
        return "vpn.no_answer"
    word = _FAILURE_WORD.get(failure or "", "failure")
    return f"{_STAGE_PREFIX[stage]}.{word}"


@dataclass(frozen=True, slots=True)
class GroupVerdict:
    group: str
    status: str  # "ok" | "blocked" | "down" | "unknown"
    stage: str | None  # the dominant failing stage when not ok
    failure: str | None
    working: int
    total: int

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "stage": self.stage,
            "failure": self.failure,
            "working": self.working,
            "total": self.total,
        }


def group_verdict(group: str, results: Sequence[EndpointResult]) -> GroupVerdict:
    working = sum(1 for r in results if r.ok)
    if working or not results:
        return GroupVerdict(group, "ok", None, None, working, len(results))
    # the most common (stage, failure) among failing endpoints, earliest stage on ties
    counts = Counter((r.failed_stage or "tcp", r.failure) for r in results)
    (stage, failure), _ = max(
        counts.items(), key=lambda kv: (kv[1], -STAGES.index(kv[0][0]))
    )
    if any(r.control_ok for r in results):
        status = "blocked"
    elif all(r.control_ok is False for r in results):
        status = "down"
    else:
        status = "unknown"
    return GroupVerdict(group, status, stage, failure, 0, len(results))


def analyze(
    results: Sequence[EndpointResult], group_order: Sequence[str] = ()
) -> tuple[Verdict, dict[str, GroupVerdict]]:
    by_group: dict[str, list[EndpointResult]] = {g: [] for g in group_order}
    for r in results:
        by_group.setdefault(r.group, []).append(r)
    groups = {g: group_verdict(g, rs) for g, rs in by_group.items()}
    for gv in groups.values():
        if gv.status == "blocked" and gv.stage is not None:
            reason = reason_for(gv.stage, gv.failure)
            return Verdict(Status.BLOCKED, _STAGE_BLOCKING[gv.stage], reason), groups
    if any(gv.status == "unknown" for gv in groups.values()):
        return Verdict(Status.INCONCLUSIVE, reason="control.failed"), groups
    if any(gv.status == "down" for gv in groups.values()):
        return Verdict(Status.DOWN, reason="site.down"), groups
    return Verdict(Status.OK), groups
