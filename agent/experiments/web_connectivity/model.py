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


@dataclass(frozen=True, slots=True)
class DNSAnswer:
    answer_type: str  # "A", "AAAA", "CNAME"
    value: str  # ip address, or target name for CNAME
    ttl: int


@dataclass(frozen=True, slots=True)
class DNSReply:
    """One UDP datagram received in answer to the query (there may be several: injection)."""

    t: float  # seconds after the query was sent
    rcode: str  # "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", ...
    answers: tuple[DNSAnswer, ...]
    source: str  # "ip:port" the datagram came from


@dataclass(frozen=True, slots=True)
class DNSQuery:
    hostname: str
    query_type: str  # "A" or "AAAA"
    resolver_address: str  # "ip:port" of the system resolver
    engine: str  # "udp"
    failure: str | None  # from the FIRST reply (what an application would have used)
    replies: tuple[DNSReply, ...]
    t0: float
    t: float

    @property
    def addrs(self) -> tuple[str, ...]:
        """Addresses of the first reply: what a browser would connect to."""
        if not self.replies:
            return ()
        return tuple(a.value for a in self.replies[0].answers if a.answer_type in ("A", "AAAA"))

    @property
    def all_addrs(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for r in self.replies:
            for a in r.answers:
                if a.answer_type in ("A", "AAAA"):
                    seen[a.value] = None
        return tuple(seen)


@dataclass(frozen=True, slots=True)
class TCPConnect:
    ip: str
    port: int
    failure: str | None
    t0: float
    t: float
    origin: str  # "dns" (system resolver), "control" (control helper's addresses) or "both"


@dataclass(frozen=True, slots=True)
class TLSHandshake:
    address: str  # "ip:port"
    server_name: str  # SNI sent
    purpose: str  # "target" (SNI = host) or "benign_sni" (retry proving SNI filtering)
    failure: str | None
    tls_version: str | None
    cipher_suite: str | None
    peer_certificate_sha256: str | None  # of the leaf, DER
    cert_valid_for_host: bool | None  # chain+hostname verified for the *target* host
    t0: float
    t: float


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    url: str
    method: str
    address: str | None  # "ip:port" actually connected to, when known
    failure: str | None
    status_code: int | None
    headers: dict[str, str]
    body_length: int | None
    body_sha256: str | None
    body_head: str  # first bytes of the body, decoded with replacement, at most 1024 chars
    title: str
    redirects: tuple[str, ...]  # the chain of Location targets followed
    t0: float
    t: float


@dataclass(frozen=True, slots=True)
class ControlTCP:
    status: bool
    failure: str | None


@dataclass(frozen=True, slots=True)
class ControlTLS:
    server_name: str
    status: bool
    failure: str | None


@dataclass(frozen=True, slots=True)
class ControlHTTP:
    failure: str | None
    status_code: int | None
    body_length: int | None
    title: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class ControlDNS:
    failure: str | None
    addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What the helper says about the caller's address (the address itself is never returned)."""

    asn: str  # "AS1234", "AS0" when unknown
    network_name: str
    cc: str  # "ZZ" when unknown


@dataclass(frozen=True, slots=True)
class ControlResponse:
    dns: ControlDNS
    tcp_connect: dict[str, ControlTCP]  # key "ip:port"
    tls_handshake: dict[str, ControlTLS]  # key "ip:port"
    http_request: ControlHTTP
    client: ClientInfo


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

    # ---- OONI-named rendering ------------------------------------------------------------
    def to_test_keys(self) -> dict[str, Any]:
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
            control=None if control is None else _control_from(control),
            control_failure=tk.get("control_failure"),
            extra=dict(tk.get("extra", {})),
        )


def _query_json(q: DNSQuery) -> dict[str, Any]:
    first = q.replies[0] if q.replies else None
    return {
        "hostname": q.hostname,
        "query_type": q.query_type,
        "resolver_address": q.resolver_address,
        "engine": q.engine,
        "failure": q.failure,
        "answers": [] if first is None else [asdict(a) for a in first.answers],
        "rcode": None if first is None else first.rcode,
        "replies": [
            {
                "t": r.t,
                "rcode": r.rcode,
                "source": r.source,
                "answers": [asdict(a) for a in r.answers],
            }
            for r in q.replies
        ],
        "t0": q.t0,
        "t": q.t,
    }


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


def control_from_json(d: dict[str, Any]) -> ControlResponse:
    """Parse the control helper's JSON answer.

    Raises KeyError, TypeError or ValueError if it is malformed.
    """
    return _control_from(d)


def _control_from(d: dict[str, Any]) -> ControlResponse:
    http = d["http_request"]
    client = d["client"]
    return ControlResponse(
        dns=ControlDNS(failure=d["dns"]["failure"], addrs=tuple(str(a) for a in d["dns"]["addrs"])),
        tcp_connect={
            str(k): ControlTCP(status=bool(v["status"]), failure=v["failure"])
            for k, v in d["tcp_connect"].items()
        },
        tls_handshake={
            str(k): ControlTLS(
                server_name=str(v["server_name"]), status=bool(v["status"]), failure=v["failure"]
            )
            for k, v in d["tls_handshake"].items()
        },
        http_request=ControlHTTP(
            failure=http["failure"],
            status_code=None if http["status_code"] is None else int(http["status_code"]),
            body_length=None if http["body_length"] is None else int(http["body_length"]),
            title=str(http.get("title", "")),
            headers={str(k): str(v) for k, v in http.get("headers", {}).items()},
        ),
        client=ClientInfo(
            asn=str(client["asn"]), network_name=str(client["network_name"]), cc=str(client["cc"])
        ),
    )
