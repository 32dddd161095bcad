"""Observations of the web_connectivity experiment: the contract between measure() and analyze().

measure() fills these (all I/O), analyze() reads them (pure).  ``to_test_keys`` renders them
with OONI's key names so analysts can compare with OONI data; ``from_test_keys`` reads them back
so a stored measurement can be re-analysed later with better rules.

Times are seconds: ``t0`` since the start of the measurement, ``t`` when the operation ended.
Failures are OONI failure strings (docs/design.md, Contracts) or None for success.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agent.net.observations import (
    DNSAnswer,
    DNSQuery,
    DNSReply,
    HTTPRequest,
    TCPConnect,
    TLSHandshake,
    used_reply,
)
from agent.wire.helper_api import (
    ControlResponse,
    control_from_json,
)


@dataclass(frozen=True, slots=True)
class WebObservations:
    input: str  # the URL measured
    hostname: str
    dns: tuple[DNSQuery, ...] = ()
    tcp_connect: tuple[TCPConnect, ...] = ()
    tls_handshakes: tuple[TLSHandshake, ...] = ()
    requests: tuple[HTTPRequest, ...] = ()
    control: ControlResponse | None = None
    control_failure: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # raw-packet forensics (``agent.experiments.forensics``): {"status": "ok", ...} or
    # {"status": "not_available", "reason": ...}; None when nobody asked for packets
    packet_evidence: dict[str, Any] | None = None

    # ---- OONI-named rendering ------------------------------------------------------------
    def to_test_keys(self) -> dict[str, Any]:
        keys = self._test_keys()
        if self.packet_evidence is not None:
            keys["packet_evidence"] = self.packet_evidence
        return keys

    def _test_keys(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "queries": [_query_json(q) for q in self.dns],
            "tcp_connect": [
                {
                    "ip": c.ip,
                    "port": c.port,
                    "origin": c.origin,
                    "status": {"success": c.failure is None, "failure": c.failure},
                    "t0": c.t0,
                    "t": c.t,
                }
                for c in self.tcp_connect
            ],
            "tls_handshakes": [asdict(h) for h in self.tls_handshakes],
            "requests": [_request_json(r) for r in self.requests],
            "control": None if self.control is None else asdict(self.control),
            "control_failure": self.control_failure,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_test_keys(cls, input_url: str, tk: dict[str, Any]) -> WebObservations:
        control = tk.get("control")
        return cls(
            input=input_url,
            hostname=tk["hostname"],
            dns=tuple(_query_from(q) for q in tk.get("queries", [])),
            tcp_connect=tuple(
                TCPConnect(
                    ip=c["ip"], port=c["port"], failure=c["status"]["failure"],
                    t0=c["t0"], t=c["t"], origin=c["origin"],
                )
                for c in tk.get("tcp_connect", [])
            ),
            tls_handshakes=tuple(TLSHandshake(**h) for h in tk.get("tls_handshakes", [])),
            requests=tuple(_request_from(r) for r in tk.get("requests", [])),
            control=None if control is None else control_from_json(control),
            control_failure=tk.get("control_failure"),
            extra=dict(tk.get("extra", {})),
            packet_evidence=tk.get("packet_evidence"),
        )


def _query_json(q: DNSQuery) -> dict[str, Any]:
    first = used_reply(q.replies)
    return {
        "hostname": q.hostname,
        "query_type": q.query_type,
        "resolver_address": q.resolver_address,
        "engine": q.engine,
        "failure": q.failure,
        "answers": [] if first is None else [asdict(a) for a in first.answers],
        "rcode": None if first is None else first.rcode,
        "replies": [_reply_json(r) for r in q.replies],
        "t0": q.t0,
        "t": q.t,
    }


def _reply_json(r: DNSReply) -> dict[str, Any]:
    out: dict[str, Any] = {
        "t": r.t,
        "rcode": r.rcode,
        "source": r.source,
        "answers": [asdict(a) for a in r.answers],
    }
    if r.truncated:  # only when set: most replies never carry them, older readers ignore them
        out["truncated"] = True
    if r.transport != "udp":
        out["transport"] = r.transport
    return out


def _query_from(d: dict[str, Any]) -> DNSQuery:
    return DNSQuery(
        hostname=d["hostname"],
        query_type=d["query_type"],
        resolver_address=d["resolver_address"],
        engine=d["engine"],
        failure=d["failure"],
        replies=tuple(
            DNSReply(
                t=r["t"], rcode=r["rcode"], source=r["source"],
                answers=tuple(DNSAnswer(**a) for a in r["answers"]),
                truncated=bool(r.get("truncated", False)),
                transport=str(r.get("transport", "udp")),
            )
            for r in d.get("replies", [])
        ),
        t0=d["t0"],
        t=d["t"],
    )


def _request_json(r: HTTPRequest) -> dict[str, Any]:
    return {
        "request": {"url": r.url, "method": r.method},
        "address": r.address,
        "failure": r.failure,
        "response": {
            "code": r.status_code,
            "headers": dict(r.headers),
            "body_length": r.body_length,
            "body_sha256": r.body_sha256,
            "body_head": r.body_head,
            "title": r.title,
        },
        "redirects": list(r.redirects),
        "t0": r.t0,
        "t": r.t,
    }


def _request_from(d: dict[str, Any]) -> HTTPRequest:
    resp = d["response"]
    return HTTPRequest(
        url=d["request"]["url"],
        method=d["request"]["method"],
        address=d.get("address"),
        failure=d["failure"],
        status_code=resp["code"],
        headers=dict(resp["headers"]),
        body_length=resp["body_length"],
        body_sha256=resp["body_sha256"],
        body_head=resp["body_head"],
        title=resp["title"],
        redirects=tuple(d.get("redirects", [])),
        t0=d["t0"],
        t=d["t"],
    )
