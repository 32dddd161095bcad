"""web_connectivity analyze(): one table row per verdict status, blocking and reason.

Every row builds a small ``WebObservations`` with the factories below (a healthy measurement,
then the one thing a censor or an accident changes) and states the verdict a correct analysis
must reach.  Addresses follow the lab's plan (lab/addressing.py): sites in 198.19.1.0/24,
CDN edges in 198.19.3.0/24, the blockpage server 198.19.0.20, a dead address 198.19.254.1.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.experiments.web_connectivity.analyze import REASONS, RULES, analyze, explain, is_bogon
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
from agent.wire.record import Blocking, Status, Verdict

HOST = "www.example.org"
SITE_IP = "198.19.1.10"
SITE_IP2 = "198.19.1.11"
CDN_IP = "198.19.3.7"
BLOCKPAGE_IP = "198.19.0.20"
DEAD_IP = "198.19.254.1"
IRAN_BOGON = "10.10.34.35"  # ooni.ir_5
RESOLVER = "198.18.1.53:53"
TITLE = "www.example.org - lab site"
LENGTH = 6000
BODY = f"<!doctype html><html><head><title>{TITLE}</title></head><body><h1>Welcome</h1>"
IRAN_PAGE = (
    '<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1256">'
    '<title>M1-6</title></head><body><iframe src="http://10.10.34.34?type=Invalid Site&policy='
    'MainPolicy " style="width: 100%; height: 100%"></iframe></body></html>\r\n'
)
CUSTOM_PAGE = (
    "<html><head><title>Access restricted</title></head><body><h1>Access to this website has "
    "been restricted</h1><p>This website has been blocked in accordance with the decision of "
    "the competent authority.</p></body></html>\r\n"
)


@pytest.fixture(scope="module")
def fps() -> Fingerprints:
    return Fingerprints.load_default()


# ---- factories ------------------------------------------------------------------------------
def ep(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def reply(*values: str, rcode: str = "NOERROR", t: float = 0.02, cname: str = "") -> DNSReply:
    answers = [DNSAnswer("CNAME", cname, 60)] if cname else []
    answers += [DNSAnswer("AAAA" if ":" in v else "A", v, 60) for v in values]
    return DNSReply(t=t, rcode=rcode, answers=tuple(answers), source=RESOLVER)


def query(*replies: DNSReply, failure: str | None = None, qtype: str = "A") -> DNSQuery:
    return DNSQuery(
        hostname=HOST, query_type=qtype, resolver_address=RESOLVER, engine="udp",
        failure=failure, replies=replies, t0=0.0, t=0.5,
    )


def resolved(*ips: str) -> DNSQuery:
    return query(reply(*ips))


def failed_dns(failure: str, rcode: str) -> DNSQuery:
    return query(reply(rcode=rcode), failure=failure)


def tcp(ip: str, port: int = 443, failure: str | None = None, origin: str = "dns") -> TCPConnect:
    return TCPConnect(ip=ip, port=port, failure=failure, t0=0.5, t=0.6, origin=origin)


def tls(
    ip: str, failure: str | None = None, *, valid: bool | None = None, purpose: str = "target",
    port: int = 443,
) -> TLSHandshake:
    ok = failure is None
    if valid is None:
        valid = ok if purpose == "target" else None
    return TLSHandshake(
        address=ep(ip, port), server_name=HOST if purpose == "target" else "example.com",
        purpose=purpose, failure=failure, tls_version="TLSv1.3" if ok else None,
        cipher_suite="TLS_AES_128_GCM_SHA256" if ok else None,
        peer_certificate_sha256="ab" * 32 if ok else None, cert_valid_for_host=valid,
        t0=0.6, t=0.7,
    )


def req(
    url: str = f"https://{HOST}/", ip: str | None = SITE_IP, port: int = 443, *,
    failure: str | None = None, status: int | None = 200, title: str = TITLE,
    length: int | None = LENGTH, body: str = BODY, headers: dict[str, str] | None = None,
    redirects: Sequence[str] = (), t: float = 0.9,
) -> HTTPRequest:
    if failure is not None:
        status, length, body, title = None, None, "", ""
    return HTTPRequest(
        url=url, method="GET", address=None if ip is None else ep(ip, port), failure=failure,
        status_code=status,
        headers={"Server": "vigil-lab-httpd", "Content-Type": "text/html"} if headers is None
        else headers,
        body_length=length, body_sha256=None if length is None else "cd" * 32, body_head=body,
        title=title, redirects=tuple(redirects), t0=0.7, t=t,
    )


def control(
    addrs: Sequence[str] = (SITE_IP,), *, port: int = 443, dns_failure: str | None = None,
    tcp_map: dict[str, ControlTCP] | None = None, tls_map: dict[str, ControlTLS] | None = None,
    http_failure: str | None = None, status: int | None = 200, title: str = TITLE,
    length: int | None = LENGTH, headers: dict[str, str] | None = None,
) -> ControlResponse:
    if tcp_map is None:
        tcp_map = {ep(a, port): ControlTCP(True, None) for a in addrs}
    if tls_map is None:
        tls_map = {ep(a, port): ControlTLS(HOST, True, None) for a in addrs} if port == 443 else {}
    if http_failure is not None:
        status, length, title = None, None, ""
    return ControlResponse(
        dns=ControlDNS(failure=dns_failure, addrs=() if dns_failure else tuple(addrs)),
        tcp_connect=tcp_map,
        tls_handshake=tls_map,
        http_request=ControlHTTP(
            failure=http_failure, status_code=status, body_length=length, title=title,
            headers={"Server": "vigil-lab-httpd", "Content-Type": "text/html"} if headers is None
            else headers,
        ),
        client=ClientInfo(asn="AS64500", network_name="Lab ISP", cc="IR"),
    )


def site(scheme: str = "https", ips: Sequence[str] = (SITE_IP,), **changes: Any) -> WebObservations:
    """A healthy measurement of HOST over ``scheme``; ``changes`` replace whole fields."""
    port = 443 if scheme == "https" else 80
    url = f"{scheme}://{HOST}/"
    obs = WebObservations(
        input=url,
        hostname=HOST,
        dns=(resolved(*ips),),
        tcp_connect=tuple(tcp(ip, port) for ip in ips),
        tls_handshakes=tuple(tls(ip) for ip in ips) if scheme == "https" else (),
        requests=(req(url, ips[0] if ips else None, port),),
        control=control(ips, port=port),
    )
    return dataclasses.replace(obs, **changes)


HTTPS = f"https://{HOST}/"
HTTP = f"http://{HOST}/"
SHORT_HOST = "go.short.example"
SHORT_IP = "198.19.1.40"
PROXY_IP = "198.19.0.40"


def hop_tls(failure: str | None, purpose: str = "redirect", ip: str = SITE_IP,
            valid: bool | None = None) -> TLSHandshake:
    """A handshake measure() made itself with a redirect target the fetch died on."""
    base = tls(ip, failure, valid=valid if purpose == "redirect" else None)
    name = HOST if purpose == "redirect" else "example.com"
    return dataclasses.replace(base, purpose=purpose, server_name=name,
                               cert_valid_for_host=base.cert_valid_for_host
                               if purpose == "redirect" else None)


def redirected(target: str, failure: str, hop_tcp: Sequence[TCPConnect] = (),
               hop_tls_: Sequence[TLSHandshake] = ()) -> WebObservations:
    """https://go.short.example/x answers 308 to ``target``, and the fetch dies there."""
    url = f"https://{SHORT_HOST}/x"
    return WebObservations(
        input=url, hostname=SHORT_HOST,
        dns=(dataclasses.replace(resolved(SHORT_IP), hostname=SHORT_HOST),),
        tcp_connect=(tcp(SHORT_IP), *hop_tcp),
        tls_handshakes=(dataclasses.replace(tls(SHORT_IP), server_name=SHORT_HOST), *hop_tls_),
        requests=(req(url, ip=SHORT_IP, failure=failure, redirects=(target,)),),
        control=control((SHORT_IP,)),
    )


def injected_toward_proxy(scheme: str, **changes: Any) -> WebObservations:
    """An on-path box answers first with a proxy's address; the resolver's answer follows."""
    port = 443 if scheme == "https" else 80
    url = f"{scheme}://{HOST}/"
    obs = site(
        scheme,
        dns=(query(reply(PROXY_IP, t=0.005), reply(SITE_IP, t=0.05)),),
        tcp_connect=(tcp(PROXY_IP, port),),
        tls_handshakes=(tls(PROXY_IP),) if scheme == "https" else (),
        requests=(req(url, PROXY_IP, port),),
        control=control(port=port),
    )
    return dataclasses.replace(obs, **changes)
DOWN_CONTROL_REFUSED = control(
    tcp_map={ep(SITE_IP, 443): ControlTCP(False, "connection_refused")},
    tls_map={}, http_failure="connection_refused",
)


# ---- the table --------------------------------------------------------------------------------
OK, BLOCKED, DOWN, INCONCLUSIVE = Status.OK, Status.BLOCKED, Status.DOWN, Status.INCONCLUSIVE
DNS, TCP_IP, TLS = Blocking.DNS, Blocking.TCP_IP, Blocking.TLS
HTTP_FAILURE, HTTP_DIFF = Blocking.HTTP_FAILURE, Blocking.HTTP_DIFF

Expected = tuple[Status, Blocking | None, str, str | None]  # status, blocking, reason, fingerprint

ROWS: list[Any] = [
    # -- accessible ---------------------------------------------------------------------------
    pytest.param(site(), (OK, None, "ok.https", None), id="ok-https"),
    pytest.param(site("http"), (OK, None, "ok.http", None), id="ok-http"),
    pytest.param(site(requests=(req(t=28.0),)), (OK, None, "ok.https", None), id="slow-https"),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, t=28.0),)), (OK, None, "ok.http", None),
        id="slow-http",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, length=int(LENGTH * 1.2), body=BODY + "<p>x"),),
             control=control(port=80, length=int(LENGTH * 0.8))),
        (OK, None, "ok.http", None), id="dynamic-http-length-varies-20pct",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, status=404, length=int(LENGTH * 0.95)),)),
        (OK, None, "ok.http", None), id="status-differs-but-same-title-and-length",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, title="Breaking: news of the hour"),)),
        (OK, None, "ok.http", None), id="title-differs-but-length-close",
    ),
    pytest.param(
        site(dns=(resolved(CDN_IP),), tcp_connect=(tcp(CDN_IP),), tls_handshakes=(tls(CDN_IP),),
             requests=(req(ip=CDN_IP),)),
        (OK, None, "ok.https", None), id="cdn-answer-unlike-control-but-valid-cert",
    ),
    pytest.param(
        site("http", dns=(resolved(CDN_IP),), tcp_connect=(tcp(CDN_IP, 80),),
             requests=(req(HTTP, CDN_IP, 80, title="Edge copy", length=5400),),
             control=control(port=80, tls_map={ep(CDN_IP, 443): ControlTLS(HOST, True, None)})),
        (OK, None, "ok.http", None), id="cdn-http-validated-by-control-tls",
    ),
    pytest.param(
        site("http", dns=(resolved(CDN_IP),), tcp_connect=(tcp(CDN_IP, 80),),
             requests=(req(HTTP, CDN_IP, 80),)),
        (OK, None, "ok.http", None), id="cdn-http-same-page-as-control",
    ),
    pytest.param(
        site(dns=(resolved(SITE_IP, SITE_IP2),), tcp_connect=(
            tcp(SITE_IP, failure="generic_timeout_error"), tcp(SITE_IP2)),
            tls_handshakes=(tls(SITE_IP2),), requests=(req(ip=SITE_IP2),),
            control=control((SITE_IP, SITE_IP2))),
        (OK, None, "ok.https", None), id="one-address-of-two-works",
    ),
    pytest.param(
        site(dns=(query(reply(SITE_IP), reply(SITE_IP, t=0.04)),)),
        (OK, None, "ok.https", None), id="duplicate-dns-reply-same-answer",
    ),
    pytest.param(
        site(dns=(query(reply(SITE_IP), reply(SITE_IP2, t=0.04)),),
             control=control((SITE_IP, SITE_IP2))),
        (OK, None, "ok.https", None), id="two-dns-replies-both-consistent",
    ),
    pytest.param(
        site(dns=(resolved("10.1.2.3"),), tcp_connect=(tcp("10.1.2.3"),),
             tls_handshakes=(tls("10.1.2.3"),), requests=(req(ip="10.1.2.3"),)),
        (OK, None, "ok.https", None), id="private-answer-with-valid-cert-split-horizon",
    ),
    pytest.param(
        site(dns=(resolved("10.1.2.3"),), tcp_connect=(tcp("10.1.2.3"),),
             tls_handshakes=(tls("10.1.2.3"),), requests=(req(ip="10.1.2.3"),),
             control=control(("10.1.2.3",))),
        (OK, None, "ok.https", None), id="bogon-answer-control-sees-it-too",
    ),
    pytest.param(
        site(requests=(req(body=BODY + IRAN_PAGE),)),
        (OK, None, "ok.https", None), id="https-page-quoting-a-blockpage-is-the-sites-own",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, redirects=(HTTPS,)),)),
        (OK, None, "ok.https", None), id="http-redirected-to-https-same-site",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, body=BODY + "Web Page Blocked"),)),
        (OK, None, "ok.http", None), id="vague-blocking-words-on-the-controls-page",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, status=503, title="Just a moment...",
                                   length=900, body="Checking your browser before accessing"),)),
        (OK, None, "ok.http", None), id="known-false-positive-page-is-not-a-diff",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, status=403, title="Forbidden", length=300,
                                   headers={"X-Request-Id": "1", "Server": "x"}),),
             control=control(port=80, headers={"X-Request-Id": "2", "Server": "y"})),
        (OK, None, "ok.http", None), id="same-origin-headers-not-a-diff",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, title="Other", length=100),),
             control=control(port=80, status=503, title="Service Unavailable", length=50)),
        (OK, None, "ok.http", None), id="control-got-5xx-probe-got-a-page",
    ),
    pytest.param(
        site("http", tls_handshakes=(tls(SITE_IP, "connection_reset"),
                                      tls(SITE_IP, purpose="benign_sni"))),
        (OK, None, "ok.http", None), id="http-input-tls-failure-is-not-on-the-path",
    ),
    pytest.param(
        site("http", dns=(), tcp_connect=(tcp(SITE_IP, 80),), input=f"http://{SITE_IP}/",
             hostname=SITE_IP, control=control(port=80)),
        (OK, None, "ok.http", None), id="ip-literal-url",
    ),
    # -- down ---------------------------------------------------------------------------------
    pytest.param(
        site(dns=(failed_dns("dns_nxdomain_error", "NXDOMAIN"),), tcp_connect=(),
             tls_handshakes=(), requests=(),
             control=control(dns_failure="dns_nxdomain_error", tcp_map={}, tls_map={},
                             http_failure="dns_nxdomain_error")),
        (DOWN, None, "site.down", None), id="down-nxdomain-everywhere",
    ),
    pytest.param(
        site(tcp_connect=(tcp(SITE_IP, failure="connection_refused"),), tls_handshakes=(),
             requests=(), control=DOWN_CONTROL_REFUSED),
        (DOWN, None, "site.down", None), id="down-refused-everywhere",
    ),
    pytest.param(
        site(tcp_connect=(tcp(SITE_IP, failure="generic_timeout_error"),), tls_handshakes=(),
             requests=(), control=control(
                 tcp_map={ep(SITE_IP, 443): ControlTCP(False, "generic_timeout_error")},
                 tls_map={}, http_failure="generic_timeout_error")),
        (DOWN, None, "site.down", None), id="down-timeout-everywhere",
    ),
    pytest.param(
        site(tls_handshakes=(tls(SITE_IP, "ssl_invalid_certificate", valid=False),),
             requests=(req(failure="ssl_invalid_certificate"),),
             control=control(tls_map={ep(SITE_IP, 443): ControlTLS(
                 HOST, False, "ssl_invalid_certificate")}, http_failure="ssl_invalid_certificate")),
        (DOWN, None, "site.down", None), id="down-expired-certificate-everywhere",
    ),
    pytest.param(
        site(requests=(req(failure="connection_reset"),),
             control=control(http_failure="connection_reset")),
        (DOWN, None, "site.down", None), id="down-http-fails-everywhere",
    ),
    pytest.param(
        site(dns=(resolved("10.9.9.9"),),
             tcp_connect=(tcp("10.9.9.9", failure="generic_timeout_error"),),
             tls_handshakes=(), requests=(),
             control=control(dns_failure="dns_nxdomain_error", tcp_map={}, tls_map={},
                             http_failure="dns_nxdomain_error")),
        (DOWN, None, "site.down", None), id="bogon-for-a-dead-domain-is-not-evidence",
    ),
    # -- inconclusive -------------------------------------------------------------------------
    pytest.param(
        site("http", control=None, control_failure="connection_refused"),
        (INCONCLUSIVE, None, "control.failed", None), id="control-failed",
    ),
    pytest.param(
        site(dns=(resolved(IRAN_BOGON),),
             tcp_connect=(tcp(IRAN_BOGON, failure="generic_timeout_error"),),
             tls_handshakes=(), requests=(), control=None, control_failure="generic_timeout_error"),
        (INCONCLUSIVE, None, "control.failed", None), id="control-failed-never-blocked",
    ),
    pytest.param(
        site(dns=(query(failure="generic_timeout_error"),), tcp_connect=(), tls_handshakes=(),
             requests=()),
        (INCONCLUSIVE, None, "dns.timeout", None), id="resolver-timeout",
    ),
    pytest.param(
        site(dns=(query(failure="unknown_failure: bad packet"),), tcp_connect=(),
             tls_handshakes=(), requests=()),
        (INCONCLUSIVE, None, "dns.failure", None), id="resolver-other-failure",
    ),
    pytest.param(
        site(tcp_connect=(), tls_handshakes=(), requests=()),
        (INCONCLUSIVE, None, "probe.incomplete", None), id="nothing-fetched",
    ),
    # -- DNS ----------------------------------------------------------------------------------
    pytest.param(
        site(dns=(failed_dns("dns_nxdomain_error", "NXDOMAIN"),), tcp_connect=(),
             tls_handshakes=(), requests=()),
        (BLOCKED, DNS, "dns.nxdomain", None), id="dns-nxdomain-only-at-isp",
    ),
    pytest.param(
        site(dns=(failed_dns("dns_servfail_error", "SERVFAIL"),), tcp_connect=(),
             tls_handshakes=(), requests=()),
        (BLOCKED, DNS, "dns.servfail", None), id="dns-servfail",
    ),
    pytest.param(
        site(dns=(failed_dns("dns_refused_error", "REFUSED"),), tcp_connect=(),
             tls_handshakes=(), requests=()),
        (BLOCKED, DNS, "dns.refused", None), id="dns-refused",
    ),
    pytest.param(
        site(dns=(query(reply(), failure="dns_no_answer"),), tcp_connect=(),
             tls_handshakes=(), requests=()),
        (BLOCKED, DNS, "dns.no_answer", None), id="dns-empty-answer",
    ),
    pytest.param(
        site(dns=(resolved(IRAN_BOGON),),
             tcp_connect=(tcp(IRAN_BOGON, failure="generic_timeout_error"),),
             tls_handshakes=(), requests=()),
        (BLOCKED, DNS, "dns.bogon", "ooni.ir_5"), id="dns-bogon-iran-confirmed",
    ),
    pytest.param(
        site(dns=(resolved(IRAN_BOGON, SITE_IP),)),
        (BLOCKED, DNS, "dns.bogon", "ooni.ir_5"), id="known-filter-address-among-answers",
    ),
    pytest.param(
        site(dns=(resolved("10.77.0.1"),),
             tcp_connect=(tcp("10.77.0.1", failure="generic_timeout_error"),),
             tls_handshakes=(), requests=()),
        (BLOCKED, DNS, "dns.bogon", None), id="dns-bogon-unknown",
    ),
    pytest.param(
        site(dns=(resolved("10.77.0.1"),), tcp_connect=(tcp("10.77.0.1"),),
             tls_handshakes=(tls("10.77.0.1", "ssl_invalid_hostname", valid=False),),
             requests=(req(ip="10.77.0.1", failure="ssl_invalid_hostname"),)),
        (BLOCKED, DNS, "dns.bogon", None), id="bogon-with-invalid-cert-is-dns-not-mitm",
    ),
    pytest.param(
        site(dns=(resolved("8.7.198.45"),),
             tcp_connect=(tcp("8.7.198.45", failure="generic_timeout_error"),),
             tls_handshakes=(), requests=()),
        (BLOCKED, DNS, "dns.blockpage_ip", "ooni.cn_0"), id="dns-known-blockpage-ip",
    ),
    pytest.param(
        site(dns=(query(reply(BLOCKPAGE_IP, cname="restricted.tri.co.id.")),),
             tcp_connect=(tcp(BLOCKPAGE_IP),),
             tls_handshakes=(tls(BLOCKPAGE_IP, "ssl_invalid_hostname", valid=False),),
             requests=(req(ip=BLOCKPAGE_IP, failure="ssl_invalid_hostname"),)),
        (BLOCKED, DNS, "dns.blockpage_cname", "ooni.id_41"), id="dns-known-blockpage-cname",
    ),
    pytest.param(
        site(dns=(resolved(BLOCKPAGE_IP),), tcp_connect=(tcp(BLOCKPAGE_IP),),
             tls_handshakes=(tls(BLOCKPAGE_IP, "ssl_invalid_hostname", valid=False),),
             requests=(req(ip=BLOCKPAGE_IP, failure="ssl_invalid_hostname"),),
             control=control(tls_map={
                 ep(SITE_IP, 443): ControlTLS(HOST, True, None),
                 ep(BLOCKPAGE_IP, 443): ControlTLS(HOST, False, "ssl_invalid_hostname")})),
        (BLOCKED, DNS, "dns.blockpage_ip", None), id="dns-blockpage-server-https",
    ),
    pytest.param(
        site("http", dns=(resolved(BLOCKPAGE_IP),), tcp_connect=(tcp(BLOCKPAGE_IP, 80),),
             requests=(req(HTTP, BLOCKPAGE_IP, 80, status=403, title="M1-6", length=len(IRAN_PAGE),
                           body=IRAN_PAGE),)),
        (BLOCKED, DNS, "dns.blockpage_ip", "ooni.ir_0"), id="dns-blockpage-server-http-iran",
    ),
    pytest.param(
        site("http", dns=(resolved(BLOCKPAGE_IP),), tcp_connect=(tcp(BLOCKPAGE_IP, 80),),
             requests=(req(HTTP, BLOCKPAGE_IP, 80, title="Access restricted",
                           length=len(CUSTOM_PAGE), body=CUSTOM_PAGE),)),
        (BLOCKED, DNS, "dns.blockpage_ip", None), id="dns-blockpage-server-http-custom",
    ),
    pytest.param(
        site(dns=(resolved(DEAD_IP),), tcp_connect=(tcp(DEAD_IP, failure="generic_timeout_error"),),
             tls_handshakes=(), requests=(),
             control=control(tcp_map={
                 ep(SITE_IP, 443): ControlTCP(True, None),
                 ep(DEAD_IP, 443): ControlTCP(False, "generic_timeout_error")})),
        (BLOCKED, DNS, "dns.inconsistent", None), id="dns-answer-dead-from-everywhere",
    ),
    pytest.param(
        site(dns=(resolved(CDN_IP),), tcp_connect=(tcp(CDN_IP),),
             tls_handshakes=(tls(CDN_IP, "generic_timeout_error"),
                             tls(CDN_IP, "generic_timeout_error", purpose="benign_sni")),
             requests=(req(ip=CDN_IP, failure="generic_timeout_error"),)),
        (BLOCKED, DNS, "dns.inconsistent", None), id="dns-answer-speaks-no-tls",
    ),
    pytest.param(
        site(dns=(query(reply(DEAD_IP, t=0.001), reply(SITE_IP, t=0.04)),),
             tcp_connect=(tcp(DEAD_IP, failure="generic_timeout_error"),),
             tls_handshakes=(), requests=()),
        (BLOCKED, DNS, "dns.injected", None), id="dns-injection-race",
    ),
    pytest.param(
        site(dns=(query(reply(IRAN_BOGON, t=0.001), reply(SITE_IP, t=0.04)),),
             tcp_connect=(tcp(IRAN_BOGON, failure="generic_timeout_error"),),
             tls_handshakes=(), requests=()),
        (BLOCKED, DNS, "dns.injected", "ooni.ir_5"), id="dns-injection-known-ip",
    ),
    pytest.param(
        site(dns=(query(reply(rcode="NXDOMAIN", t=0.001), reply(SITE_IP, t=0.04),
                        failure="dns_nxdomain_error"),),
             tcp_connect=(), tls_handshakes=(), requests=()),
        (BLOCKED, DNS, "dns.injected", None), id="dns-injection-nxdomain",
    ),
    pytest.param(
        site(dns=(query(reply(DEAD_IP, t=0.001), reply(SITE_IP, t=0.04)),),
             tcp_connect=(tcp(DEAD_IP, failure="generic_timeout_error"), tcp(SITE_IP)),
             tls_handshakes=(tls(SITE_IP),), requests=(req(),)),
        (BLOCKED, DNS, "dns.injected", None), id="dns-injection-even-if-real-address-works",
    ),
    pytest.param(
        site(dns=(resolved("8.7.198.45"),), tcp_connect=(tcp("8.7.198.45"),),
             tls_handshakes=(tls("8.7.198.45"),), requests=(req(ip="8.7.198.45"),),
             control=control(("8.7.198.45",))),
        (OK, None, "ok.https", None), id="fingerprinted-ip-that-the-control-sees-too",
    ),
    # -- TCP ----------------------------------------------------------------------------------
    pytest.param(
        site(tcp_connect=(tcp(SITE_IP, failure="generic_timeout_error"),), tls_handshakes=(),
             requests=()),
        (BLOCKED, TCP_IP, "tcp.timeout", None), id="tcp-drop",
    ),
    pytest.param(
        site(tcp_connect=(tcp(SITE_IP, failure="connection_refused"),), tls_handshakes=(),
             requests=()),
        (BLOCKED, TCP_IP, "tcp.reset", None), id="tcp-rst-to-syn",
    ),
    pytest.param(
        site(tcp_connect=(tcp(SITE_IP, failure="host_unreachable"),), tls_handshakes=(),
             requests=()),
        (BLOCKED, TCP_IP, "tcp.unreachable", None), id="tcp-icmp-unreachable",
    ),
    pytest.param(
        site(tcp_connect=(tcp(SITE_IP, failure="unknown_failure: EPERM"),), tls_handshakes=(),
             requests=()),
        (BLOCKED, TCP_IP, "tcp.failure", None), id="tcp-other-failure",
    ),
    pytest.param(
        site(tcp_connect=(tcp(SITE_IP, failure="generic_timeout_error"),), tls_handshakes=(),
             requests=(), control=control(tcp_map={}, tls_map={})),
        (BLOCKED, TCP_IP, "tcp.timeout", None), id="tcp-drop-control-fetched-without-tcp-detail",
    ),
    # -- TLS ----------------------------------------------------------------------------------
    pytest.param(
        site(tls_handshakes=(tls(SITE_IP, "connection_reset"), tls(SITE_IP, purpose="benign_sni")),
             requests=(req(failure="connection_reset"),)),
        (BLOCKED, TLS, "tls.sni_reset", None), id="tls-sni-reset",
    ),
    pytest.param(
        site(tls_handshakes=(tls(SITE_IP, "eof_error"), tls(SITE_IP, purpose="benign_sni")),
             requests=(req(failure="eof_error"),)),
        (BLOCKED, TLS, "tls.sni_reset", None), id="tls-sni-eof",
    ),
    pytest.param(
        site(tls_handshakes=(tls(SITE_IP, "generic_timeout_error"),
                             tls(SITE_IP, purpose="benign_sni")),
             requests=(req(failure="generic_timeout_error"),)),
        (BLOCKED, TLS, "tls.sni_timeout", None), id="tls-sni-drop",
    ),
    pytest.param(
        site(tls_handshakes=(tls(SITE_IP, "ssl_failed_handshake"),
                             tls(SITE_IP, purpose="benign_sni")),
             requests=(req(failure="ssl_failed_handshake"),)),
        (BLOCKED, TLS, "tls.sni_failure", None), id="tls-sni-alert",
    ),
    pytest.param(
        site(tls_handshakes=(tls(SITE_IP, "connection_reset"),
                             tls(SITE_IP, "connection_reset", purpose="benign_sni")),
             requests=(req(failure="connection_reset"),)),
        (BLOCKED, TLS, "tls.reset", None), id="tls-reset-any-sni",
    ),
    pytest.param(
        site(tls_handshakes=(tls(SITE_IP, "generic_timeout_error"),),
             requests=(req(failure="generic_timeout_error"),)),
        (BLOCKED, TLS, "tls.timeout", None), id="tls-timeout-no-retry",
    ),
    pytest.param(
        site(tls_handshakes=(tls(SITE_IP, "ssl_failed_handshake"),
                             tls(SITE_IP, "ssl_failed_handshake", purpose="benign_sni")),
             requests=(req(failure="ssl_failed_handshake"),)),
        (BLOCKED, TLS, "tls.failure", None), id="tls-handshake-failure",
    ),
    pytest.param(
        site(tls_handshakes=(tls(SITE_IP, "ssl_unknown_authority", valid=False),),
             requests=(req(failure="ssl_unknown_authority"),)),
        (BLOCKED, TLS, "tls.mitm", None), id="tls-mitm-unknown-authority",
    ),
    pytest.param(
        site(tls_handshakes=(tls(SITE_IP, None, valid=False),),
             requests=(req(failure="ssl_invalid_hostname"),)),
        (BLOCKED, TLS, "tls.mitm", None), id="tls-mitm-cert-for-another-name",
    ),
    pytest.param(
        site(tls_handshakes=(tls(SITE_IP, "connection_reset"), tls(SITE_IP, purpose="benign_sni")),
             requests=(req(failure="connection_reset"),),
             control=control(
                 tls_map={ep(SITE_IP, 443): ControlTLS(HOST, False, "connection_reset")},
                 http_failure="connection_reset")),
        (DOWN, None, "site.down", None), id="tls-fails-from-control-too",
    ),
    # -- redirect hops, judged at the layer where they failed -----------------------------------
    pytest.param(
        redirected(HTTPS, "connection_reset", (tcp(SITE_IP, origin="redirect"),),
                   (hop_tls("connection_reset"), hop_tls(None, "redirect_benign_sni"))),
        (BLOCKED, TLS, "tls.sni_reset", None), id="redirect-hop-sni-reset",
    ),
    pytest.param(
        redirected(HTTPS, "eof_error", (tcp(SITE_IP, origin="redirect"),),
                   (hop_tls("eof_error"), hop_tls(None, "redirect_benign_sni"))),
        (BLOCKED, TLS, "tls.sni_reset", None), id="redirect-hop-sni-eof",
    ),
    pytest.param(
        redirected(HTTPS, "generic_timeout_error", (tcp(SITE_IP, origin="redirect"),),
                   (hop_tls("generic_timeout_error"), hop_tls(None, "redirect_benign_sni"))),
        (BLOCKED, TLS, "tls.sni_timeout", None), id="redirect-hop-sni-timeout",
    ),
    pytest.param(
        redirected(HTTPS, "connection_reset", (tcp(SITE_IP, origin="redirect"),),
                   (hop_tls("connection_reset"),
                    hop_tls("connection_reset", "redirect_benign_sni"))),
        (BLOCKED, TLS, "tls.reset", None), id="redirect-hop-tls-reset-no-sni-proof",
    ),
    pytest.param(
        redirected(HTTPS, "ssl_unknown_authority", (tcp(SITE_IP, origin="redirect"),),
                   (hop_tls("ssl_unknown_authority", valid=False),)),
        (BLOCKED, TLS, "tls.mitm", None), id="redirect-hop-certificate-replaced",
    ),
    pytest.param(
        redirected(HTTP, "connection_refused",
                   (tcp(SITE_IP, 80, "connection_refused", origin="redirect"),)),
        (BLOCKED, TCP_IP, "tcp.reset", None), id="redirect-hop-tcp-refused",
    ),
    pytest.param(
        redirected(HTTPS, "generic_timeout_error",
                   (tcp(SITE_IP, failure="generic_timeout_error", origin="redirect"),)),
        (BLOCKED, TCP_IP, "tcp.timeout", None), id="redirect-hop-tcp-timeout",
    ),
    pytest.param(
        redirected(HTTPS, "connection_refused",
                   (tcp(IRAN_BOGON, failure="generic_timeout_error", origin="redirect"),)),
        (BLOCKED, DNS, "dns.bogon", "ooni.ir_5"), id="redirect-hop-resolved-to-known-filter",
    ),
    pytest.param(
        redirected(HTTPS, "connection_refused",
                   (tcp("10.66.0.1", failure="connection_refused", origin="redirect"),)),
        (BLOCKED, DNS, "dns.bogon", None), id="redirect-hop-resolved-to-a-bogon",
    ),
    pytest.param(
        redirected(HTTP, "connection_reset", (tcp(SITE_IP, 80, origin="redirect"),)),
        (BLOCKED, HTTP_FAILURE, "http.reset", None), id="redirect-hop-http-reset-tcp-fine",
    ),
    pytest.param(
        redirected(HTTP, "generic_timeout_error", (tcp(SITE_IP, 80, origin="redirect"),)),
        (BLOCKED, HTTP_FAILURE, "http.timeout", None), id="redirect-hop-http-timeout",
    ),
    pytest.param(
        dataclasses.replace(
            redirected(HTTPS, "connection_reset", (tcp(SITE_IP, origin="redirect"),),
                       (hop_tls("connection_reset"), hop_tls(None, "redirect_benign_sni"))),
            control=dataclasses.replace(control((SHORT_IP,)), http_request=ControlHTTP(
                "connection_reset", None, None, "", {}))),
        (DOWN, None, "site.down", None), id="redirect-hop-fails-for-the-control-too",
    ),
    # -- the site's own answers, authenticated by its certificate -------------------------------
    pytest.param(
        site(requests=(req(failure="unknown_failure: too many redirects",
                           redirects=(HTTPS, HTTPS, HTTPS)),)),
        (DOWN, None, "site.down", None), id="https-broken-location-only-to-the-probe",
    ),
    pytest.param(
        site(requests=(req(failure="unknown_failure: invalid redirect location"),)),
        (DOWN, None, "site.down", None), id="https-unusable-location-header",
    ),
    pytest.param(
        site(requests=(req(failure="unknown_failure: malformed response"),)),
        (DOWN, None, "site.down", None), id="https-answer-that-is-not-http",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, failure="unknown_failure: malformed response"),)),
        (BLOCKED, HTTP_FAILURE, "http.failure", None), id="http-answer-that-is-not-http",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, failure="unknown_failure: too many redirects",
                                   redirects=(HTTP, HTTP)),)),
        (BLOCKED, HTTP_FAILURE, "http.failure", None),
        id="http-broken-location-only-to-the-probe-is-not-authenticated",
    ),
    pytest.param(
        site(requests=(req(failure="unknown_failure: too many redirects",
                           redirects=(HTTPS, HTTPS)),),
             control=control(http_failure="unknown_failure: too many redirects")),
        (DOWN, None, "site.down", None), id="redirect-loop-everywhere",
    ),
    pytest.param(
        site(control=None, control_failure="connection_reset"),
        (OK, None, "ok.https", None), id="control-failed-but-https-page-loaded",
    ),
    # -- the site's own DNS, and lies about names that do not exist ----------------------------
    pytest.param(
        site("http", dns=(resolved("127.0.0.1"),),
             tcp_connect=(tcp("127.0.0.1", 80, "connection_refused"),), requests=(),
             control=control(("127.0.0.1",), port=80, tcp_map={}, tls_map={},
                             http_failure="unknown_failure: target_forbidden")),
        (DOWN, None, "site.down", None), id="loopback-answer-from-both-vantage-points",
    ),
    pytest.param(
        site(dns=(resolved("127.0.0.1"),),
             tcp_connect=(tcp("127.0.0.1", 443, "connection_refused"),), tls_handshakes=(),
             requests=(),
             control=control(("127.0.0.1",), tcp_map={}, tls_map={},
                             http_failure="unknown_failure: target_forbidden")),
        (DOWN, None, "site.down", None), id="loopback-answer-from-both-https",
    ),
    pytest.param(
        site("http", dns=(resolved(SITE_IP2),), tcp_connect=(tcp(SITE_IP2, 80),),
             requests=(req(HTTP, SITE_IP2, 80, status=404, title="404", length=40),),
             control=control(dns_failure="dns_nxdomain_error", tcp_map={}, tls_map={},
                             http_failure="dns_nxdomain_error")),
        (BLOCKED, DNS, "dns.ghost_name", None), id="ghost-name-answer-serves-a-page",
    ),
    pytest.param(
        site(dns=(resolved(SITE_IP2),), tcp_connect=(tcp(SITE_IP2),),
             tls_handshakes=(tls(SITE_IP2, "ssl_invalid_hostname", valid=False),), requests=(),
             control=control(dns_failure="dns_nxdomain_error", tcp_map={}, tls_map={},
                             http_failure="dns_nxdomain_error")),
        (BLOCKED, DNS, "dns.ghost_name", None), id="ghost-name-https-wrong-certificate",
    ),
    pytest.param(
        site(dns=(resolved(SITE_IP2),), tcp_connect=(tcp(SITE_IP2, failure="connection_refused"),),
             tls_handshakes=(), requests=(),
             control=control(dns_failure="dns_no_answer", tcp_map={}, tls_map={},
                             http_failure="dns_no_answer")),
        (DOWN, None, "site.down", None), id="control-no-address-is-not-a-ghost-name",
    ),
    # -- interference without denial -----------------------------------------------------------
    pytest.param(
        injected_toward_proxy("http"), (OK, None, "ok.http", None),
        id="injected-toward-proxy-serving-the-genuine-page",
    ),
    pytest.param(
        injected_toward_proxy("https"), (OK, None, "ok.https", None),
        id="injected-toward-tls-passthrough-proxy",
    ),
    pytest.param(
        injected_toward_proxy("http", requests=(req(HTTP, PROXY_IP, 80, title="Access restricted",
                                                    length=len(CUSTOM_PAGE), body=CUSTOM_PAGE),)),
        (BLOCKED, DNS, "dns.injected", None), id="injected-toward-proxy-serving-a-blockpage",
    ),
    pytest.param(
        site(tcp_connect=(tcp(SITE_IP),), tls_handshakes=(tls(SITE_IP, "connection_reset"),
                                                          tls(PROXY_IP, "connection_reset")),
             dns=(query(reply(PROXY_IP, t=0.005), reply(SITE_IP, t=0.05)),),
             requests=()),
        (BLOCKED, DNS, "dns.injected", None), id="injected-and-nothing-loaded",
    ),
    # -- pages larger than the byte caps --------------------------------------------------------
    pytest.param(
        site("http", requests=(req(HTTP, port=80, length=1_048_576, title="mirror 10:02:11"),),
             extra={"body_truncated": True},
             control=dataclasses.replace(control(port=80), http_request=ControlHTTP(
                 None, 200, 8_388_608, "mirror 10:02:12", {}, body_truncated=True))),
        (OK, None, "ok.http", None), id="large-page-compared-up-to-the-smaller-cap",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, length=1_048_576),),
             extra={"body_truncated": True},
             control=dataclasses.replace(control(port=80), http_request=ControlHTTP(
                 None, 200, 1_048_576, TITLE, {}, body_truncated=True))),
        (OK, None, "ok.http", None), id="large-page-both-truncated-at-the-same-cap",
    ),
    pytest.param(
        site("http", dns=(resolved(BLOCKPAGE_IP),),
             tcp_connect=(tcp(BLOCKPAGE_IP, 80, "connection_refused"),), requests=(),
             control=control(port=80, tcp_map={ep(SITE_IP, 80): ControlTCP(True, None),
                                               ep(BLOCKPAGE_IP, 80): ControlTCP(True, None)})),
        (BLOCKED, DNS, "dns.inconsistent", None),
        id="suspect-answer-refused-here-reachable-from-outside",
    ),
    # -- HTTP ---------------------------------------------------------------------------------
    pytest.param(
        site(requests=(req(failure="connection_reset"),)),
        (BLOCKED, HTTP_FAILURE, "http.reset", None), id="https-reset-after-handshake",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, failure="connection_reset"),)),
        (BLOCKED, HTTP_FAILURE, "http.reset", None), id="http-reset",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, failure="eof_error"),)),
        (BLOCKED, HTTP_FAILURE, "http.reset", None), id="http-eof",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, failure="generic_timeout_error"),)),
        (BLOCKED, HTTP_FAILURE, "http.timeout", None), id="http-timeout",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, failure="unknown_failure: bad chunk"),)),
        (BLOCKED, HTTP_FAILURE, "http.failure", None), id="http-other-failure",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, failure="dns_nxdomain_error",
                                   redirects=(f"http://cdn.{HOST}/",)),)),
        (BLOCKED, DNS, "dns.nxdomain", None), id="http-redirect-target-nxdomain",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, failure="connection_refused",
                                   redirects=(f"http://cdn.{HOST}/",)),)),
        (BLOCKED, TCP_IP, "tcp.reset", None), id="http-redirect-target-refused",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, failure="ssl_unknown_authority",
                                   redirects=(HTTPS,)),)),
        (BLOCKED, TLS, "tls.mitm", None), id="http-redirect-to-https-mitm",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, status=403, title="M1-6",
                                   length=len(IRAN_PAGE), body=IRAN_PAGE),)),
        (BLOCKED, HTTP_DIFF, "http.blockpage", "ooni.ir_0"), id="http-blockpage-iran-injected",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, title="warning", length=1200,
                                   redirects=("http://www.warning.or.kr",)),)),
        (BLOCKED, HTTP_DIFF, "http.blockpage", "ooni.kr_2"), id="http-redirect-to-blockpage",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, status=403, title="Blocked", length=700,
                                   body="<h1>Web Page Blocked</h1>"),)),
        (BLOCKED, HTTP_DIFF, "http.blockpage", "cl.vbw_web_page_blocked"),
        id="http-vague-words-on-a-different-page",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, title="Access restricted",
                                   length=len(CUSTOM_PAGE), body=CUSTOM_PAGE),)),
        (BLOCKED, HTTP_DIFF, "http.diff", None), id="http-unknown-blockpage-same-status",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, status=451, title="Unavailable", length=5500),)),
        (BLOCKED, HTTP_DIFF, "http.diff", None), id="http-status-and-title-differ",
    ),
    pytest.param(
        site("http", requests=(req(HTTP, port=80, title="Blocked by order", length=900,
                                   redirects=("https://blocked.gov.example/",)),)),
        (BLOCKED, HTTP_DIFF, "http.diff", None), id="http-injected-redirect-to-another-https-site",
    ),
]


def _check(verdict: Verdict, expected: Expected) -> None:
    status, blocking, reason, fingerprint = expected
    assert (verdict.status, verdict.blocking, verdict.reason) == (status, blocking, reason)
    assert verdict.fingerprint == fingerprint
    assert verdict.confirmed is (fingerprint is not None)


@pytest.mark.parametrize(("obs", "expected"), ROWS)
def test_verdict_table(obs: WebObservations, expected: Expected, fps: Fingerprints) -> None:
    _check(analyze(obs, fps), expected)


@pytest.mark.parametrize(("obs", "expected"), ROWS)
def test_round_trip_through_test_keys(
    obs: WebObservations, expected: Expected, fps: Fingerprints
) -> None:
    """A stored measurement re-analysed later gives the same verdict (JSON and back)."""
    tk = json.loads(json.dumps(obs.to_test_keys()))
    again = WebObservations.from_test_keys(obs.input, tk)
    assert analyze(again, fps) == analyze(obs, fps)
    _check(analyze(again, fps), expected)


INTERFERENCE_ROWS = [
    pytest.param(injected_toward_proxy("http"), "dns.injected", id="http-proxy-genuine-page"),
    pytest.param(injected_toward_proxy("https"), "dns.injected", id="https-passthrough-proxy"),
    pytest.param(
        injected_toward_proxy("http", requests=(req(HTTP, PROXY_IP, 80, title="Access restricted",
                                                    length=len(CUSTOM_PAGE), body=CUSTOM_PAGE),)),
        None, id="the-injection-is-the-verdict-itself",
    ),
    pytest.param(site(), None, id="nothing-tampered"),
    pytest.param(
        site(dns=(query(reply(SITE_IP), reply(SITE_IP2, t=0.04)),),
             control=control((SITE_IP, SITE_IP2))),
        None, id="two-replies-both-the-controls",
    ),
]


@pytest.mark.parametrize(("obs", "interference"), INTERFERENCE_ROWS)
def test_interference_is_kept_as_evidence(
    obs: WebObservations, interference: str | None, fps: Fingerprints
) -> None:
    verdict = analyze(obs, fps)
    assert verdict.interference == interference
    again = Verdict.from_json(json.loads(json.dumps(verdict.to_json())))
    assert again == verdict
    assert ("interference" in verdict.to_json()) is (interference is not None)


def test_every_reason_has_a_row() -> None:
    from tests.unit.agent.test_analyze_families import ROWS as FAMILY_ROWS

    reasons = {p.values[1][2] for p in (*ROWS, *FAMILY_ROWS)}
    assert reasons == set(REASONS)


def test_every_status_and_blocking_has_a_row() -> None:
    statuses = {p.values[1][0] for p in ROWS}
    blockings = {p.values[1][1] for p in ROWS}
    assert statuses == {Status.OK, Status.BLOCKED, Status.DOWN, Status.INCONCLUSIVE}
    # throttling is the throttling experiment's verdict, never web_connectivity's
    assert blockings == {None, *(b for b in Blocking if b is not Blocking.THROTTLING)}


def test_every_rule_decides_some_row(fps: Fingerprints) -> None:
    deciding = {explain(p.values[0], fps)[0] for p in ROWS}
    assert deciding == {name for name, _ in RULES} | {"incomplete"}


def test_reasons_match_the_record_schema() -> None:
    schema_path = Path(__file__).parents[3] / "agent" / "schema" / "measurement.schema.json"
    schema = json.loads(schema_path.read_text())
    reason = schema["properties"]["verdict"]["properties"]["reason"]
    pattern = re.compile(reason["pattern"])
    for r in REASONS:
        assert pattern.fullmatch(r) and len(r) <= reason["maxLength"], r


@pytest.mark.parametrize(
    ("address", "bogon"),
    [
        ("10.10.34.35", True), ("127.0.0.1", True), ("0.0.0.0", True), ("192.168.1.1", True),
        ("100.64.0.1", True), ("169.254.1.1", True), ("224.0.0.1", True), ("d0::11", True),
        ("fe80::1", True), ("::ffff:10.10.34.35", True), ("243.185.187.39", True),
        ("198.18.0.1", False), ("198.19.255.254", False), ("2001:2::1", False),
        ("8.8.8.8", False), ("2606:4700::1111", False), ("not-an-ip", False),
    ],
)
def test_is_bogon(address: str, bogon: bool) -> None:
    assert is_bogon(address) is bogon


def test_analyze_is_deterministic(fps: Fingerprints) -> None:
    for p in ROWS:
        obs = p.values[0]
        assert analyze(obs, fps) == analyze(obs, fps)


# ---- robustness: whatever measure() (or an old stored record) gives, analyze() decides -------
_IPS = st.sampled_from([SITE_IP, SITE_IP2, CDN_IP, BLOCKPAGE_IP, DEAD_IP, IRAN_BOGON, "10.0.0.1",
                        "8.7.198.45", "2001:db8::1", "d0::11"])
_FAILURES = st.sampled_from([
    None, None, None, "connection_refused", "connection_reset", "generic_timeout_error",
    "eof_error", "host_unreachable", "ssl_invalid_hostname", "ssl_unknown_authority",
    "ssl_failed_handshake", "dns_nxdomain_error", "unknown_failure: x",
])
_RCODES = st.sampled_from(["NOERROR", "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED"])
_replies = st.builds(
    lambda ips, rcode, cname: reply(*ips, rcode=rcode, cname=cname),
    st.lists(_IPS, max_size=3), _RCODES, st.sampled_from(["", "restricted.tri.co.id"]),
)
_queries = st.builds(
    lambda replies, failure, qtype: query(*replies, failure=failure, qtype=qtype),
    st.lists(_replies, max_size=3), _FAILURES, st.sampled_from(["A", "AAAA"]),
)
_tcps = st.builds(tcp, _IPS, st.sampled_from([80, 443]), _FAILURES,
                  st.sampled_from(["dns", "control", "both"]))
_tlss = st.builds(
    lambda ip, failure, valid, purpose: tls(ip, failure, valid=valid, purpose=purpose),
    _IPS, _FAILURES, st.sampled_from([None, True, False]),
    st.sampled_from(["target", "benign_sni"]),
)
_requests = st.builds(
    lambda url, ip, failure, status, title, length, body, redirects: req(
        url, ip, failure=failure, status=status, title=title, length=length, body=body,
        redirects=redirects),
    st.sampled_from([HTTP, HTTPS]), st.one_of(st.none(), _IPS), _FAILURES,
    st.sampled_from([200, 301, 403, 451, 503]), st.sampled_from([TITLE, "", "Access restricted"]),
    st.one_of(st.none(), st.integers(0, 20000)),
    st.sampled_from([BODY, IRAN_PAGE, CUSTOM_PAGE, "Web Page Blocked", ""]),
    st.lists(st.sampled_from([HTTPS, "http://www.warning.or.kr", "https://other.example/"]),
             max_size=2),
)
_controls = st.one_of(
    st.none(),
    st.builds(
        lambda addrs, dns_failure, http_failure, status, title: control(
            addrs, dns_failure=dns_failure, http_failure=http_failure, status=status,
            title=title),
        st.lists(_IPS, max_size=3), st.sampled_from([None, "dns_nxdomain_error"]), _FAILURES,
        st.sampled_from([200, 403, 503]), st.sampled_from([TITLE, "Other"]),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    url=st.sampled_from([HTTP, HTTPS]),
    dns=st.lists(_queries, max_size=2),
    tcps=st.lists(_tcps, max_size=3),
    tlss=st.lists(_tlss, max_size=3),
    requests=st.lists(_requests, max_size=2),
    ctl=_controls,
)
def test_any_observation_gets_a_valid_verdict(
    url: str, dns: list[DNSQuery], tcps: list[TCPConnect], tlss: list[TLSHandshake],
    requests: list[HTTPRequest], ctl: ControlResponse | None,
) -> None:
    fps = Fingerprints.load_default()  # cached: loaded once per process
    obs = WebObservations(
        input=url, hostname=HOST, dns=tuple(dns), tcp_connect=tuple(tcps),
        tls_handshakes=tuple(tlss), requests=tuple(requests), control=ctl,
        control_failure=None if ctl is not None else "generic_timeout_error",
    )
    verdict = analyze(obs, fps)
    assert verdict.reason in REASONS
    assert verdict.confirmed is (verdict.fingerprint is not None)
    if ctl is None:  # without a reference only "accessible over valid TLS" can be said
        assert verdict.status in (Status.INCONCLUSIVE, Status.OK)
        assert verdict.status is Status.INCONCLUSIVE or verdict.reason == "ok.https"
    if verdict.status is Status.OK:
        assert verdict.reason in ("ok.https", "ok.http")
    if verdict.status is Status.DOWN:
        assert verdict.reason == "site.down"
    tk = json.loads(json.dumps(obs.to_test_keys()))
    assert analyze(WebObservations.from_test_keys(url, tk), fps) == verdict
