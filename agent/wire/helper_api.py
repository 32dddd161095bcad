"""The control helper's answer, as both sides read it (docs/control-protocol.md).

The helper (``collector.helper``) writes this JSON; the agent's client
(``agent.engine.helper_client``) parses it with :func:`control_from_json`, and experiments
compare it with their own observations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    body_length: int | None  # bytes read; the cap when ``body_truncated``
    title: str
    headers: dict[str, str]
    body_truncated: bool = False  # the helper stopped at the byte cap (a large page, not a failure)


@dataclass(frozen=True, slots=True)
class ControlDNS:
    failure: str | None
    addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What the helper says about the caller's address (the address itself is never returned)."""

    asn: str  # "AS1234", "AS0" when unknown
    network_name: str
    cc: str  # where the address is used (location), else registered; "ZZ" when unknown
    registration_cc: str = ""  # where the network is registered; "" from older helpers


@dataclass(frozen=True, slots=True)
class ControlResponse:
    dns: ControlDNS
    tcp_connect: dict[str, ControlTCP]  # key "ip:port"
    tls_handshake: dict[str, ControlTLS]  # key "ip:port"
    http_request: ControlHTTP
    client: ClientInfo


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
            body_truncated=http.get("body_truncated") is True,
        ),
        client=client_info_from(client),
    )


def client_info_from(d: dict[str, Any]) -> ClientInfo:
    """The ``client`` object (control answers, whoami); raises KeyError/TypeError if malformed."""
    return ClientInfo(
        asn=str(d["asn"]),
        network_name=str(d["network_name"]),
        cc=str(d["cc"]),
        registration_cc=str(d.get("registration_cc") or ""),
    )


@dataclass(frozen=True, slots=True)
class ResolverSighting:
    """What the helper's DNS whoami zone saw for a nonce: the resolver's egress, as seen from
    outside, and its network.  ``seen`` false: no query with that nonce reached the helper."""

    seen: bool
    ip: str = ""
    client: ClientInfo | None = None


def resolver_sighting_from(d: dict[str, Any]) -> ResolverSighting:
    """Parse ``POST /api/v1/resolver``'s answer; raises KeyError/TypeError/ValueError."""
    if not d["seen"]:
        return ResolverSighting(seen=False)
    return ResolverSighting(seen=True, ip=str(d["ip"]), client=client_info_from(d))
