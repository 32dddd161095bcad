"""What the network primitives observe: timed DNS, TCP, TLS and HTTP events.

``agent.net`` fills these; experiments keep them as raw evidence and analyse them.  Times are
seconds: ``t0`` since the start of the measurement, ``t`` when the operation ended.  Failures are
OONI failure strings (``agent.net.failures``) or None for success.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DNSAnswer:
    answer_type: str  # "A", "AAAA", "CNAME"
    value: str  # ip address, or target name for CNAME
    ttl: int


@dataclass(frozen=True, slots=True)
class DNSReply:
    """One reply received for the query (several over UDP: injection).

    ``truncated``: the TC bit was set (the answer did not fit in UDP); a stub resolver then asks
    again over TCP, whose reply is recorded with ``transport = "tcp"``.
    """

    t: float  # seconds after the query was sent
    rcode: str  # "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", ...
    answers: tuple[DNSAnswer, ...]
    source: str  # "ip:port" the datagram came from
    truncated: bool = False
    transport: str = "udp"  # "udp" or "tcp"


def used_reply(replies: tuple[DNSReply, ...]) -> DNSReply | None:
    """The reply an application would have used: the first one, or, when that one was
    truncated, the reply to the retry over TCP (None when that retry got no answer)."""
    if not replies:
        return None
    first = replies[0]
    if not first.truncated:
        return first
    return next((r for r in replies if r.transport == "tcp"), None)


@dataclass(frozen=True, slots=True)
class DNSQuery:
    hostname: str
    query_type: str  # "A" or "AAAA"
    resolver_address: str  # "ip:port" of the system resolver
    engine: str  # "udp" (a truncated reply is retried over TCP: see DNSReply.transport)
    failure: str | None  # from the reply an application would have used (``used_reply``)
    replies: tuple[DNSReply, ...]
    t0: float
    t: float

    @property
    def addrs(self) -> tuple[str, ...]:
        """Addresses of the reply used (``used_reply``): what a browser would connect to."""
        reply = used_reply(self.replies)
        if reply is None:
            return ()
        return tuple(a.value for a in reply.answers if a.answer_type in ("A", "AAAA"))

    @property
    def retried_over_tcp(self) -> bool:
        """The first reply was truncated, so the query was asked again over TCP."""
        return bool(self.replies) and self.replies[0].truncated

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
    origin: str  # "dns" (system resolver), "control" (control helper's addresses), "both",
    # or "redirect" (the address of a redirect target the fetch failed on, opened afterwards)


@dataclass(frozen=True, slots=True)
class TLSHandshake:
    address: str  # "ip:port"
    server_name: str  # SNI sent
    purpose: str  # "target" (SNI = host), "benign_sni" (retry proving SNI filtering), or
    # "redirect" / "redirect_benign_sni": the same two for a redirect target the fetch failed on
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
    body_head: str  # first part of the body, decoded with replacement (16 KiB chars at most)
    title: str
    redirects: tuple[str, ...]  # the chain of Location targets followed
    t0: float
    t: float
