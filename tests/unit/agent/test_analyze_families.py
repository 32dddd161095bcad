"""analyze() rows for IPv6 next to IPv4 and for DNS over TCP after a truncated answer.

A dual-stack probe measures both families, as a happy-eyeballs browser uses both: a site that
loads over one family is reachable; an IPv6 path that fails with "unreachable" is the probe's
own network, never a censor.  A truncated UDP answer is asked again over TCP; what happens to
that TCP flow is judged like the rest of DNS.  Addresses: IPv4 in 198.19.1.0/24, IPv6 in the
benchmarking prefix 2001:2::/48 (RFC 5180), as in the lab.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from agent.experiments.web_connectivity.analyze import REASONS, analyze
from agent.experiments.web_connectivity.model import WebObservations
from agent.inputs.fingerprints import Fingerprints
from agent.net.observations import (
    DNSAnswer,
    DNSQuery,
    DNSReply,
    HTTPRequest,
    TCPConnect,
    TLSHandshake,
)
from agent.wire.helper_api import (
    ClientInfo,
    ControlDNS,
    ControlHTTP,
    ControlResponse,
    ControlTCP,
    ControlTLS,
)
from agent.wire.record import Blocking, Status

HOST = "dual.example.org"
V4 = "198.19.1.20"
V6 = "2001:2:0:11::20"
RESOLVER = "198.18.1.53:53"
TITLE = "dual.example.org - lab site"
URL = f"https://{HOST}/"


@pytest.fixture(scope="module")
def fps() -> Fingerprints:
    return Fingerprints.load_default()


def ep(ip: str, port: int = 443) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def reply(*ips: str, rcode: str = "NOERROR", truncated: bool = False,
          transport: str = "udp") -> DNSReply:
    answers = tuple(DNSAnswer("AAAA" if ":" in ip else "A", ip, 60) for ip in ips)
    return DNSReply(t=0.02, rcode=rcode, answers=answers, source=RESOLVER, truncated=truncated,
                    transport=transport)


def query(qtype: str, *replies: DNSReply, failure: str | None = None) -> DNSQuery:
    return DNSQuery(hostname=HOST, query_type=qtype, resolver_address=RESOLVER, engine="udp",
                    failure=failure, replies=replies, t0=0.0, t=0.3)


def dual_dns(v4: Sequence[str] = (V4,), v6: Sequence[str] = (V6,)) -> tuple[DNSQuery, ...]:
    return (
        query("A", reply(*v4), failure=None if v4 else "dns_no_answer"),
        query("AAAA", reply(*v6), failure=None if v6 else "dns_no_answer"),
    )


def tcp(ip: str, failure: str | None = None) -> TCPConnect:
    return TCPConnect(ip=ip, port=443, failure=failure, t0=0.3, t=0.4, origin="both")


def tls(ip: str, failure: str | None = None, purpose: str = "target") -> TLSHandshake:
    ok = failure is None
    return TLSHandshake(
        address=ep(ip), server_name=HOST if purpose == "target" else "example.com",
        purpose=purpose, failure=failure, tls_version="TLSv1.3" if ok else None,
        cipher_suite=None, peer_certificate_sha256="ab" * 32 if ok else None,
        cert_valid_for_host=(ok if purpose == "target" else None), t0=0.4, t=0.5,
    )


def req(ip: str | None, failure: str | None = None) -> HTTPRequest:
    ok = failure is None
    return HTTPRequest(
        url=URL, method="GET", address=None if ip is None else ep(ip), failure=failure,
        status_code=200 if ok else None, headers={"Content-Type": "text/html"},
        body_length=6000 if ok else None, body_sha256="cd" * 32 if ok else None,
        body_head=f"<title>{TITLE}</title>" if ok else "", title=TITLE if ok else "",
        redirects=(), t0=0.5, t=0.8,
    )


def control(addrs: Sequence[str] = (V4, V6), *, tcp_ok: dict[str, bool] | None = None,
            http_ok: bool = True) -> ControlResponse:
    tcp_ok = tcp_ok or {}
    return ControlResponse(
        dns=ControlDNS(failure=None, addrs=tuple(addrs)),
        tcp_connect={ep(a): ControlTCP(tcp_ok.get(a, True), None if tcp_ok.get(a, True)
                                       else "generic_timeout_error") for a in addrs},
        tls_handshake={ep(a): ControlTLS(HOST, True, None) for a in addrs if tcp_ok.get(a, True)},
        http_request=ControlHTTP(failure=None if http_ok else "generic_timeout_error",
                                 status_code=200 if http_ok else None,
                                 body_length=6000 if http_ok else None,
                                 title=TITLE if http_ok else "",
                                 headers={"Content-Type": "text/html"}),
        client=ClientInfo(asn="AS64500", network_name="Lab ISP", cc="IR"),
    )


def obs(**fields: Any) -> WebObservations:
    base = WebObservations(
        input=URL, hostname=HOST, dns=dual_dns(),
        tcp_connect=(tcp(V4), tcp(V6)), tls_handshakes=(tls(V4), tls(V6)),
        requests=(req(V6),), control=control(),
    )
    return dataclasses.replace(base, **fields)


UNREACH = "host_unreachable"
NET_UNREACH = "network_unreachable"
TIMEOUT = "generic_timeout_error"
RESET = "connection_reset"
OK, BLOCKED, INCONCLUSIVE = Status.OK, Status.BLOCKED, Status.INCONCLUSIVE

ROWS: list[Any] = [
    pytest.param(obs(), (OK, None, "ok.https"), id="dual-stack-both-work"),
    pytest.param(
        obs(tcp_connect=(tcp(V4), tcp(V6, UNREACH)), tls_handshakes=(tls(V4),),
            requests=(req(V4),)),
        (OK, None, "ok.https"), id="broken-ipv6-path-ipv4-works",
    ),
    pytest.param(
        obs(tcp_connect=(tcp(V4), tcp(V6, TIMEOUT)), tls_handshakes=(tls(V4),),
            requests=(req(V4),), control=control(tcp_ok={V6: False})),
        (OK, None, "ok.https"), id="site-ipv6-dead-everywhere-ipv4-works",
    ),
    pytest.param(
        obs(tcp_connect=(tcp(V4), tcp(V6, TIMEOUT)), tls_handshakes=(tls(V4),),
            requests=(req(V4),)),
        (OK, None, "ok.https"), id="ipv6-address-dropped-ipv4-delivers",
    ),
    pytest.param(
        obs(tcp_connect=(tcp(V4, TIMEOUT), tcp(V6)), tls_handshakes=(tls(V6),),
            requests=(req(V6),)),
        (OK, None, "ok.https"), id="ipv4-address-dropped-ipv6-delivers",
    ),
    pytest.param(
        obs(tcp_connect=(tcp(V4, TIMEOUT), tcp(V6, TIMEOUT)), tls_handshakes=(), requests=()),
        (BLOCKED, Blocking.TCP_IP, "tcp.timeout"), id="both-families-dropped",
    ),
    pytest.param(
        obs(tcp_connect=(tcp(V4, TIMEOUT), tcp(V6, UNREACH)), tls_handshakes=(), requests=()),
        (BLOCKED, Blocking.TCP_IP, "tcp.timeout"), id="ipv4-dropped-ipv6-path-broken",
    ),
    pytest.param(
        obs(dns=dual_dns(v4=()), tcp_connect=(tcp(V6, UNREACH),), tls_handshakes=(),
            requests=(), control=control((V6,))),
        (INCONCLUSIVE, None, "probe.ipv6_unreachable"), id="ipv6-only-site-broken-ipv6-path",
    ),
    pytest.param(
        obs(dns=dual_dns(v4=()), tcp_connect=(tcp(V6, NET_UNREACH),), tls_handshakes=(),
            requests=(), control=control((V6,))),
        (INCONCLUSIVE, None, "probe.ipv6_unreachable"), id="ipv6-only-site-no-ipv6-route",
    ),
    pytest.param(
        obs(dns=dual_dns(v4=()), tcp_connect=(tcp(V6),), tls_handshakes=(tls(V6),),
            control=control((V6,))),
        (OK, None, "ok.https"), id="ipv6-only-site",
    ),
    pytest.param(
        obs(dns=dual_dns(v4=()), tcp_connect=(tcp(V6, TIMEOUT),), tls_handshakes=(),
            requests=(), control=control((V6,))),
        (BLOCKED, Blocking.TCP_IP, "tcp.timeout"), id="ipv6-only-site-address-dropped",
    ),
    pytest.param(
        obs(dns=dual_dns(v4=()), tcp_connect=(tcp(V6),),
            tls_handshakes=(tls(V6, RESET), tls(V6, purpose="benign_sni")), requests=(),
            control=control((V6,))),
        (BLOCKED, Blocking.TLS, "tls.sni_reset"), id="ipv6-only-site-sni-reset",
    ),
    pytest.param(
        obs(tcp_connect=(tcp(V4, UNREACH), tcp(V6, UNREACH)), tls_handshakes=(), requests=()),
        (BLOCKED, Blocking.TCP_IP, "tcp.unreachable"), id="ipv4-unreachable-still-counts",
    ),
    # -- DNS over TCP after a truncated UDP answer ----------------------------------------------
    pytest.param(
        obs(dns=(query("A", reply(truncated=True), reply(V4, transport="tcp")),),
            tcp_connect=(tcp(V4),), tls_handshakes=(tls(V4),), requests=(req(V4),)),
        (OK, None, "ok.https"), id="truncated-then-tcp-answer",
    ),
    pytest.param(
        obs(dns=(query("A", reply(truncated=True), failure=RESET),), tcp_connect=(),
            tls_handshakes=(), requests=()),
        (BLOCKED, Blocking.DNS, "dns.tcp_reset"), id="dns-over-tcp-reset",
    ),
    pytest.param(
        obs(dns=(query("A", reply(truncated=True), failure=RESET),
                 query("AAAA", reply(), failure="dns_no_answer")),
            tcp_connect=(), tls_handshakes=(), requests=()),
        (BLOCKED, Blocking.DNS, "dns.tcp_reset"), id="dns-over-tcp-reset-aaaa-empty",
    ),
    pytest.param(
        obs(dns=(query("A", reply(truncated=True), failure=TIMEOUT),), tcp_connect=(),
            tls_handshakes=(), requests=()),
        (BLOCKED, Blocking.DNS, "dns.tcp_timeout"), id="dns-over-tcp-dropped",
    ),
    pytest.param(
        obs(dns=(query("A", reply(truncated=True), failure="connection_refused"),),
            tcp_connect=(), tls_handshakes=(), requests=()),
        (INCONCLUSIVE, None, "dns.tcp_failure"), id="resolver-without-dns-over-tcp",
    ),
    pytest.param(
        obs(dns=(query("A", reply(truncated=True),
                       reply(rcode="NXDOMAIN", transport="tcp"), failure="dns_nxdomain_error"),),
            tcp_connect=(), tls_handshakes=(), requests=()),
        (BLOCKED, Blocking.DNS, "dns.nxdomain"), id="tcp-answer-nxdomain",
    ),
    pytest.param(
        obs(dns=(query("A", reply(truncated=True), reply("198.19.254.1"),
                       reply(V4, transport="tcp")),),
            tcp_connect=(tcp(V4),), tls_handshakes=(tls(V4),), requests=(req(V4),)),
        # the genuine page loaded over TLS valid for the site: interference without denial is
        # ok, the injected reply kept as evidence (the verdict's interference field)
        (Status.OK, None, "ok.https"), id="injected-udp-reply-beside-tcp-answer",
    ),
]


@pytest.mark.parametrize(("observations", "expected"), ROWS)
def test_verdict(observations: WebObservations, expected: tuple[Status, Blocking | None, str],
                 fps: Fingerprints) -> None:
    verdict = analyze(observations, fps)
    assert (verdict.status, verdict.blocking, verdict.reason) == expected
    assert verdict.reason in REASONS


def test_truncated_reply_alone_is_not_a_second_answer(fps: Fingerprints) -> None:
    """The TC datagram (no records) and the TCP answer are one answer, not an injection."""
    o = obs(dns=(query("A", reply(truncated=True), reply(V4, transport="tcp")),),
            tcp_connect=(tcp(V4),), tls_handshakes=(tls(V4),), requests=(req(V4),),
            control=control((V4,)))
    assert analyze(o, fps).status is OK


@pytest.mark.parametrize(("observations", "expected"), ROWS)
def test_verdict_survives_the_record(observations: WebObservations,
                                     expected: tuple[Status, Blocking | None, str],
                                     fps: Fingerprints) -> None:
    """Stored test keys (truncated, transport included) re-analyse to the same verdict."""
    again = WebObservations.from_test_keys(observations.input, observations.to_test_keys())
    assert again.dns == observations.dns
    assert analyze(again, fps) == analyze(observations, fps)
