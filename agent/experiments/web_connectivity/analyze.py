"""The verdict of one web_connectivity measurement: a pure function of observations.

``analyze(obs, fingerprints)`` reads what ``measure()`` recorded (``WebObservations``) and the
control helper's view, and returns a ``Verdict`` (docs/design.md, Contracts).  No I/O, no clock, no
randomness: a stored measurement re-analysed later gives the same answer, and every rule is a
table row in tests/unit/agent/test_analyze.py.

Precedence: the first row whose condition holds decides (h11-style: one function per row,
``RULES`` below lists them in this order).  ``[c]`` marks confirmed verdicts.

  #  rule              condition                                  status/blocking: reasons
  -- ----------------- ------------------------------------------ ----------------------------
  1  control_failed    no usable answer from the control helper:
                         the page loaded over TLS valid for the    ok: ok.https
                         site (no reference needed to say so)
                         otherwise                                 inconclusive: control.failed
  2  dns_fingerprint   a DNS answer (any reply) is a known         blocked/dns [c]:
                       blockpage address or CNAME, neither the       dns.injected | dns.bogon |
                       control's nor TLS-validated for the host      dns.blockpage_ip |
                                                                     dns.blockpage_cname
  3  dns_injected      two replies to one query disagree, one of   blocked/dns: dns.injected
                       them inconsistent with the control, unless
                       the page fetched is the control's page
                       (interference without denial: later rows
                       decide, the injection is kept as evidence)
  4  dns_failed        the system resolver gave no address:
                         truncated over UDP, the retry over TCP    blocked/dns: dns.tcp_reset |
                         reset or timed out, control resolved it     dns.tcp_timeout
                         ... the TCP retry failed otherwise        inconclusive: dns.tcp_failure
                         control resolved the name                 blocked/dns: dns.nxdomain |
                                                                     dns.servfail | dns.refused |
                                                                     dns.no_answer
                         resolver timed out / other failure        inconclusive: dns.timeout |
                                                                     dns.failure
                         control could not resolve it either       down: site.down
  5  http_fingerprint  an unauthenticated response matches a       blocked/dns [c] (as row 2)
                       blockpage fingerprint (dns when it came     or blocked/http-diff [c]:
                       from a suspect answer)                        http.blockpage
  6  https_loaded      the page loaded over TLS valid for the site ok: ok.https
  7  site_bogon        every answer is a bogon the control got     down: site.down
                       too (the site's own DNS is broken; the
                       helper never connects to such addresses)
  8  ghost_name        the resolver gave public addresses for a    blocked/dns: dns.ghost_name
                       name the control says does not exist
                       (NXDOMAIN): a lie (bogons: row 9,
                       evidence only against a public one)
  9  dns_bogon         an answer is a bogon while the control      blocked/dns: dns.bogon
                       sees a different public address
  10 tcp               every connect to the resolved addresses failed:
                         only over IPv6, "unreachable": the         inconclusive:
                         probe's own IPv6 path is broken              probe.ipv6_unreachable
                         (such failures never count as blocking)
                         suspect answers, site up elsewhere        blocked/dns: dns.inconsistent
                         the control reached those addresses       blocked/tcp_ip: tcp.timeout |
                                                                     tcp.reset | tcp.unreachable |
                                                                     tcp.failure
                         otherwise                                 down: site.down
  11 tls               (https inputs) no handshake with SNI=host succeeded:
                         certificate not valid, suspect answer     blocked/dns: dns.blockpage_ip
                         certificate not valid, control's TLS ok   blocked/tls: tls.mitm
                         failed, benign-SNI retry to the same      blocked/tls: tls.sni_reset |
                         address succeeded, control's TLS ok         tls.sni_timeout |
                                                                     tls.sni_failure
                         failed, no SNI proof, control's TLS ok    blocked/tls: tls.reset |
                                                                     tls.timeout | tls.failure
                         suspect answers only, site up elsewhere   blocked/dns: dns.inconsistent
                         control's TLS failed too                  down: site.down
  12 http_failed       every fetch failed (TCP/TLS were fine):
                         control could not fetch either            down: site.down
                         the site's own authenticated answer       down: site.down
                         broke the fetch (a redirect loop, a
                         broken Location or bytes that are not
                         HTTP, over TLS valid for it)
                         a redirect hop failed; judged at the      blocked/dns, tcp_ip, tls:
                         hop's failing layer from its own DNS        dns.blockpage_ip [c] |
                         answer (a blockpage address or bogon:       dns.bogon | tcp.* |
                         the control followed the chain), TCP and    tls.sni_* | tls.* | tls.mitm
                         TLS events (SNI retry included)
                         a redirect hop failed at DNS, TCP or a    blocked/dns, tcp_ip, tls:
                         certificate (no hop events)                 dns.* | tcp.* | tls.mitm
                         reset/eof, timeout, other                 blocked/http-failure:
                                                                     http.reset | http.timeout |
                                                                     http.failure
  13 http_page         a plain-HTTP page was fetched:
                         from a suspect answer, unlike control's   blocked/dns: dns.blockpage_ip
                         strongly unlike the control's page        blocked/http-diff: http.diff
                         otherwise (slow pages, dynamic pages)     ok: ok.http
  14 (after the table) nothing fetched, nothing failed             inconclusive: probe.incomplete

After the table: when replies to one query disagreed and one of them is not the control's
answer (an injection, whatever the TLS validation says), a verdict that is not itself
``dns.injected`` carries ``interference = "dns.injected"``: the user got the page (or was
stopped elsewhere), and the tampering is kept as evidence.

Why this order:

* The control comes first because differential evidence without a reference is guesswork
  (a failed control is inconclusive, never blocked).  This holds even when a fingerprint
  matched: the raw evidence is kept and can be re-analysed.  One answer needs no reference: a
  page that loaded over TLS valid for the site is accessible, whatever the control says.
* Fingerprints (2, 5) come before every heuristic: they are the only *confirmed* evidence.
* DNS evidence that does not depend on what happened next (injection, no answer) precedes
  ``https_loaded``; evidence that a valid certificate can refute (bogon answers, answers unlike
  the control's: CDNs, split-horizon DNS) comes after it.  "An HTTPS page that loads fully is
  ok" is therefore true except when the resolver demonstrably lied about the name.
* The site's own DNS failures (7: the same bogon everywhere) and lies about names that do not
  exist (8) come after ``https_loaded`` (a split-horizon name serving a valid certificate is
  the site's) and before the layers, which would otherwise blame the address.
* An answer authenticated by the site's certificate is the site's behaviour: a redirect loop
  or a broken ``Location`` sent over valid TLS is never censorship (12), even when the site
  sends it only to the probe.
* Then the layers in the order a browser meets them, so when several fail the earliest one that
  explains the failure is reported (a blockpage address that also fails TLS is ``dns``).
* Every layer compares with the control at the same layer: what fails from the control's
  uncensored vantage too is ``down``, not ``blocked``.

Terms used above:

* *suspect answer*: an address from the system resolver that is neither among the control's
  addresses nor validated by TLS for the host (by the probe's handshake or the control's
  handshake to that very address).  A different answer is not evidence by itself: CDNs and load
  balancers answer differently per vantage point, which caused most of OONI's and Censored
  Planet's false positives.
* *bogon*: a private, loopback, link-local, reserved, multicast or otherwise non-global address.
  198.18.0.0/15 (and its IPv6 twin 2001:2::/48), the benchmarking ranges, are *not* bogons here:
  Python calls them private, but labs (ours included) number whole "internets" in them.
  A bogon answer counts only when the control sees a different, public answer.
* *authenticated response*: it ended on https:// on the same site (the host or a parent/child
  name), or every hop of its redirect chain was https://.  Its content came through TLS
  validated for the site, so it is the site's own and is neither fingerprinted nor compared.
  A plain-HTTP hop to another site may be a censor's injected redirect, so it is not trusted.
* TLS failures decide only for https:// inputs; for http:// inputs a valid handshake (if
  measure() made one) still serves as proof that a different DNS answer is genuine.
* *truncated bodies*: both sides read at most a byte cap (the probe's, which it sends the helper).
  When either side stopped at its cap, lengths are compared up to the smaller cap: a page larger
  than the cap is the same length on both sides, never a failed control.
* *redirect hop events*: when a fetch fails on a redirect to another endpoint, measure() opens
  that hop itself (TCP records with origin ``redirect``, TLS handshakes with purpose
  ``redirect`` and ``redirect_benign_sni``), so the hop is judged at the layer that failed.
* *strongly unlike* (http.diff): no distinctive response header shared with the control, and
  either the status code differs plus the title or the body length differs, or the titles differ
  and the body is less than 30% (or more than 3.3x) of the control's.  Lengths within 30% count
  as equal, so a dynamic page whose length varies 20% is never a difference.  Conservative on
  purpose: OONI's http-diff false positives came from exactly this comparison.

The reasons emitted are listed in ``REASONS``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from functools import cached_property
from typing import Final
from urllib.parse import urlsplit

from agent.experiments.web_connectivity.model import WebObservations
from agent.inputs.fingerprints import Fingerprint, Fingerprints, Matches, canonical_dns_value
from agent.net.addr import read_endpoint
from agent.net.observations import HTTPRequest, TCPConnect, TLSHandshake
from agent.wire.helper_api import ControlResponse
from agent.wire.record import Blocking, Status, Verdict

__all__ = ["REASONS", "RULES", "analyze", "explain", "is_bogon"]

# ---- OONI failure strings (docs/design.md, Contracts) ------------------------------------
CONNECTION_REFUSED: Final = "connection_refused"
CONNECTION_RESET: Final = "connection_reset"
EOF_ERROR: Final = "eof_error"
TIMEOUT: Final = "generic_timeout_error"
HOST_UNREACHABLE: Final = "host_unreachable"
NETWORK_UNREACHABLE: Final = "network_unreachable"
DNS_NXDOMAIN: Final = "dns_nxdomain_error"
DNS_NO_ANSWER: Final = "dns_no_answer"
DNS_SERVFAIL: Final = "dns_servfail_error"
DNS_REFUSED: Final = "dns_refused_error"
CERT_FAILURES: Final = frozenset(
    {"ssl_invalid_hostname", "ssl_invalid_certificate", "ssl_unknown_authority"}
)
# Failures a site's own answer causes (the fetch followed what the server said).
REDIRECT_LOOP: Final = "unknown_failure: too many redirects"
BAD_LOCATION: Final = "unknown_failure: invalid redirect location"
MALFORMED_RESPONSE: Final = "unknown_failure: malformed response"
SITE_ANSWER_FAILURES: Final = frozenset({REDIRECT_LOOP, BAD_LOCATION, MALFORMED_RESPONSE})

# ---- reasons ---------------------------------------------------------------------------------
REASONS: Final = frozenset(
    {
        "control.failed",
        "dns.nxdomain", "dns.servfail", "dns.refused", "dns.no_answer",
        "dns.timeout", "dns.failure",
        "dns.injected", "dns.bogon", "dns.blockpage_ip", "dns.blockpage_cname",
        "dns.inconsistent", "dns.ghost_name",
        "tcp.timeout", "tcp.reset", "tcp.unreachable", "tcp.failure",
        "tls.sni_reset", "tls.sni_timeout", "tls.sni_failure",
        "tls.reset", "tls.timeout", "tls.failure", "tls.mitm",
        "http.blockpage", "http.diff", "http.reset", "http.timeout", "http.failure",
        "site.down",
        "ok.https", "ok.http",
        "probe.incomplete",
        "dns.tcp_reset", "dns.tcp_timeout", "dns.tcp_failure",
        "probe.ipv6_unreachable",
    }
)

# Benchmarking ranges (RFC 2544 / RFC 5180): not bogons here, see the module docstring.
_BENCHMARK_NETS: Final = (
    ipaddress.ip_network("198.18.0.0/15"),
    ipaddress.ip_network("2001:2::/48"),
)

# Response headers nearly every server sends: sharing them says nothing about the origin.
_COMMON_HEADERS: Final = frozenset(
    {
        "date", "content-type", "content-length", "server", "connection", "cache-control",
        "vary", "set-cookie", "location", "expires", "x-powered-by", "content-encoding",
        "last-modified", "accept-ranges", "pragma", "x-frame-options", "etag",
        "x-content-type-options", "age", "via", "p3p", "x-xss-protection", "content-language",
        "cf-ray", "strict-transport-security", "link", "x-varnish", "keep-alive",
        "transfer-encoding", "referrer-policy", "content-security-policy", "alt-svc",
    }
)

_LENGTH_EQUAL_RATIO: Final = 0.7  # bodies within 30% are "the same length" (dynamic pages)
_LENGTH_FAR_RATIO: Final = 0.3  # below this, bodies are different documents


# ---- small pure helpers ----------------------------------------------------------------------
def _canon(ip: str) -> str:
    return canonical_dns_value(ip)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(_canon(text))
    except ValueError:
        return None


def is_bogon(address: str) -> bool:
    """Is ``address`` a bogon (not routable on the public internet)?  False if not an IP.

    The benchmarking ranges 198.18.0.0/15 and 2001:2::/48 are deliberately not bogons (labs
    use them as their public internet); 10.10.34.35 (Iran's filter) is one.
    """
    addr = _ip(address)
    if addr is None:
        return False
    if any(addr in net for net in _BENCHMARK_NETS):
        return False
    return not addr.is_global or addr.is_multicast or addr.is_reserved


def _endpoint_key(ip: str, port: int | None) -> str:
    ip = _canon(ip)
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _final_url(r: HTTPRequest) -> str:
    return r.redirects[-1] if r.redirects else r.url


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return ""


def _url_port(url: str) -> int | None:
    try:
        parts = urlsplit(url)
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return None


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return ""


def _same_site(a: str, b: str) -> bool:
    """Same host, or one a subdomain of the other (www.example.org ~ example.org)."""
    a, b = a.removeprefix("www."), b.removeprefix("www.")
    return bool(a) and (a == b or a.endswith("." + b) or b.endswith("." + a))


def _title(text: str) -> str:
    return " ".join(text.split()).casefold()


def _titles_differ(a: str, b: str) -> bool:
    return _title(a) != _title(b)


def _length_ratio(a: int | None, b: int | None) -> float | None:
    if a is None or b is None or a < 0 or b < 0:
        return None
    big = max(a, b)
    return 1.0 if big == 0 else min(a, b) / big


def _uncommon_headers(headers: dict[str, str]) -> frozenset[str]:
    return frozenset(k.lower() for k in headers if k.lower() not in _COMMON_HEADERS)


def _failure_kind(failure: str | None) -> str:
    """reset | timeout | unreachable | failure: the part of a reason after the layer."""
    if failure in (CONNECTION_RESET, CONNECTION_REFUSED, EOF_ERROR):
        return "reset"
    if failure == TIMEOUT:
        return "timeout"
    if failure in (HOST_UNREACHABLE, NETWORK_UNREACHABLE):
        return "unreachable"
    return "failure"


_DNS_FAILURE_REASON: Final = {
    DNS_NXDOMAIN: "dns.nxdomain",
    DNS_SERVFAIL: "dns.servfail",
    DNS_REFUSED: "dns.refused",
    DNS_NO_ANSWER: "dns.no_answer",
    TIMEOUT: "dns.timeout",
}
# when several queries failed differently, the most telling failure speaks
_DNS_FAILURE_RANK: Final = (DNS_NXDOMAIN, DNS_REFUSED, DNS_SERVFAIL, DNS_NO_ANSWER, TIMEOUT)


def _blocked(blocking: Blocking, reason: str, fingerprint: Fingerprint | None = None) -> Verdict:
    return Verdict(
        status=Status.BLOCKED,
        blocking=blocking,
        reason=reason,
        confirmed=fingerprint is not None,
        fingerprint=None if fingerprint is None else fingerprint.name,
    )


_DOWN: Final = Verdict(status=Status.DOWN, reason="site.down")
_OK_HTTPS: Final = Verdict(status=Status.OK, reason="ok.https")
_INCOMPLETE: Final = Verdict(status=Status.INCONCLUSIVE, reason="probe.incomplete")


# ---- the evidence, computed once per measurement ---------------------------------------------
class _Evidence:
    """Views of the observations every rule needs (addresses canonical, control indexed)."""

    def __init__(self, obs: WebObservations, fingerprints: Fingerprints) -> None:
        self.obs = obs
        self.fps = fingerprints
        self.hostname = obs.hostname.rstrip(".").lower()
        self.scheme = _scheme(obs.input)
        self.port = _url_port(obs.input)
        self.control: ControlResponse | None = (
            obs.control if obs.control_failure is None else None
        )
        self._matches: dict[int, Matches] = {}  # id(request) -> fingerprints (obs is frozen)

    # -- control ----------------------------------------------------------------------------
    @cached_property
    def control_addrs(self) -> frozenset[str]:
        if self.control is None or self.control.dns.failure is not None:
            return frozenset()
        return frozenset(_canon(a) for a in self.control.dns.addrs)

    @property
    def control_dns_ok(self) -> bool:
        return bool(self.control_addrs)

    @cached_property
    def control_http_ok(self) -> bool:
        """The control fetched the page (a 5xx from the site is not a page)."""
        if self.control is None:
            return False
        http = self.control.http_request
        return http.failure is None and http.status_code is not None and http.status_code < 500

    @cached_property
    def _control_tcp(self) -> dict[str, bool]:
        if self.control is None:
            return {}
        return {
            _endpoint_key(*read_endpoint(k)): v.status and v.failure is None
            for k, v in self.control.tcp_connect.items()
        }

    @cached_property
    def _control_tls(self) -> dict[str, bool]:
        if self.control is None:
            return {}
        return {
            _endpoint_key(*read_endpoint(k)): v.status and v.failure is None
            for k, v in self.control.tls_handshake.items()
        }

    def control_tcp(self, ip: str, port: int | None) -> bool | None:
        return self._control_tcp.get(_endpoint_key(ip, port))

    def control_tls(self, ip: str, port: int | None) -> bool | None:
        return self._control_tls.get(_endpoint_key(ip, port))

    @cached_property
    def length_cap(self) -> int | None:
        """Bodies are compared up to this many bytes when either side stopped at its cap."""
        caps = []
        if self.control is not None and self.control.http_request.body_truncated:
            caps.append(self.control.http_request.body_length)
        if self.obs.extra.get("body_truncated") is True:
            caps.extend(r.body_length for r in self.obs.requests)
        known = [c for c in caps if c is not None and c > 0]
        return min(known) if known else None

    def compared_lengths(self, r: HTTPRequest) -> tuple[int | None, int | None]:
        """(probe, control) body lengths, both cut at ``length_cap`` when there is one."""
        mine = r.body_length
        theirs = None if self.control is None else self.control.http_request.body_length
        cap = self.length_cap
        if cap is not None:
            mine = None if mine is None else min(mine, cap)
            theirs = None if theirs is None else min(theirs, cap)
        return mine, theirs

    @cached_property
    def control_site_ok(self) -> bool:
        """The site works from outside: the control fetched it or reached one of its addresses."""
        if self.control_http_ok:
            return True
        return any(
            ok and read_endpoint(k)[0] in self.control_addrs
            for k, ok in self._control_tcp.items()
        )

    # -- DNS --------------------------------------------------------------------------------
    @cached_property
    def ip_literal(self) -> bool:
        return _ip(self.hostname) is not None

    @cached_property
    def probe_addrs(self) -> tuple[str, ...]:
        """The addresses a browser would use: the first reply of each query (or the literal)."""
        if self.ip_literal:
            return (_canon(self.hostname),)
        seen: dict[str, None] = {}
        for q in self.obs.dns:
            for a in q.addrs:
                seen[_canon(a)] = None
        return tuple(seen)

    @cached_property
    def validated(self) -> frozenset[str]:
        """Addresses proven to serve the host: a TLS handshake valid for it (probe or control)."""
        ok = {
            read_endpoint(h.address)[0]
            for h in self.obs.tls_handshakes
            if h.purpose == "target" and h.cert_valid_for_host is True
        }
        ok.update(read_endpoint(k)[0] for k, v in self._control_tls.items() if v)
        if self.ip_literal:
            ok.add(_canon(self.hostname))
        return frozenset(ok)

    def consistent(self, ip: str) -> bool:
        ip = _canon(ip)
        return ip in self.control_addrs or ip in self.validated

    def suspect(self, ip: str) -> bool:
        return not self.consistent(ip)

    @cached_property
    def control_has_public_answer(self) -> bool:
        probe = set(self.probe_addrs)
        return any(not is_bogon(a) and a not in probe for a in self.control_addrs)

    def bogon_evidence(self, ip: str) -> bool:
        """A bogon answer is evidence only when the control sees a different, public one."""
        return is_bogon(ip) and self.suspect(ip) and self.control_has_public_answer

    @cached_property
    def interference(self) -> str | None:
        """Replies to one query that disagree, one of them not the control's answer.

        Unlike ``injected`` this ignores TLS validation: an injected answer toward a proxy that
        relays the genuine site is still tampering, kept as evidence even when it denied nothing.
        """
        if not self.control_dns_ok:
            return None
        for q in self.obs.dns:
            if len(q.replies) < 2:
                continue
            views = [
                (
                    r.rcode.upper(),
                    frozenset(
                        _canon(a.value) for a in r.answers if a.answer_type in ("A", "AAAA")
                    ),
                )
                for r in q.replies
            ]
            if _replies_disagree(views) and any(
                rcode != "NOERROR" or not addrs or not addrs <= self.control_addrs
                for rcode, addrs in views
            ):
                return "dns.injected"
        return None

    @cached_property
    def injected(self) -> bool:
        """Two replies to one query that disagree, one of them inconsistent with the control."""
        for q in self.obs.dns:
            # A truncated datagram is the resolver saying "ask over TCP", not an answer.
            replies = [r for r in q.replies if not r.truncated]
            if len(replies) < 2:
                continue
            views = [
                (
                    r.rcode.upper(),
                    frozenset(
                        _canon(a.value) for a in r.answers if a.answer_type in ("A", "AAAA")
                    ),
                )
                for r in replies
            ]
            if not _replies_disagree(views):
                continue
            good_exists = any(
                rcode == "NOERROR" and addrs and all(self.consistent(a) for a in addrs)
                for rcode, addrs in views
            )
            for rcode, addrs in views:
                if rcode != "NOERROR" or not addrs:
                    if self.control_dns_ok:
                        return True
                elif any(self.bogon_evidence(a) for a in addrs) or (
                    good_exists and all(self.suspect(a) for a in addrs)
                ):
                    return True
        return False

    # -- TCP / TLS --------------------------------------------------------------------------
    @cached_property
    def tcp_records(self) -> tuple[TCPConnect, ...]:
        """Connects to the resolver's addresses (measure() may also try the control's)."""
        wanted = set(self.probe_addrs)
        mine = [
            c for c in self.obs.tcp_connect
            if _canon(c.ip) in wanted and c.origin != "redirect"
        ]
        mine = [c for c in mine if c.port == self.port] or mine  # the URL's own port first
        preferred = [c for c in mine if c.origin in ("dns", "both")]
        return tuple(preferred or mine)

    @cached_property
    def target_handshakes(self) -> tuple[TLSHandshake, ...]:
        wanted = set(self.probe_addrs)
        connected = {_canon(c.ip) for c in self.tcp_records if c.failure is None}
        out = []
        for h in self.obs.tls_handshakes:
            ip = read_endpoint(h.address)[0]
            if h.purpose != "target" or ip not in wanted:
                continue
            if self.tcp_records and ip not in connected and h.failure is not None:
                continue  # the TCP layer already accounts for this address
            out.append(h)
        return tuple(out)

    def benign_sni_succeeded(self, address: str) -> bool:
        ip, port = read_endpoint(address)
        return any(
            h.purpose == "benign_sni"
            and h.failure is None
            and read_endpoint(h.address) == (ip, port)
            for h in self.obs.tls_handshakes
        )

    # -- HTTP -------------------------------------------------------------------------------
    @cached_property
    def requests(self) -> tuple[HTTPRequest, ...]:
        """Fetches on the browser's path: not through an address only the control knew."""
        probe = set(self.probe_addrs)
        control_only = self.control_addrs - probe
        return tuple(
            r
            for r in self.obs.requests
            if not (r.address and read_endpoint(r.address)[0] in control_only)
        )

    def authenticated(self, r: HTTPRequest) -> bool:
        """Every byte of this response came through TLS validated for the site.

        The final URL is https, and either it is on the same site or every hop of the redirect
        chain was https too (the genuine site sent us elsewhere).  A plain-HTTP hop to another
        site could be a censor's injected redirect, so that case is compared, not trusted.
        """
        final = _final_url(r)
        if _scheme(final) != "https":
            return False
        if _same_site(_host(final), self.hostname):
            return True
        return all(_scheme(u) == "https" for u in (r.url, *r.redirects))

    def from_suspect_answer(self, r: HTTPRequest) -> bool:
        """Did this response come from a suspect answer of the resolver for *this* host?"""
        if _host(_final_url(r)) not in ("", self.hostname):
            return False  # redirected elsewhere: the address is not this name's answer
        ip = read_endpoint(r.address)[0]
        if ip:
            return ip in self.probe_addrs and self.suspect(ip)
        return bool(self.probe_addrs) and all(self.suspect(a) for a in self.probe_addrs)

    def http_matches(self, r: HTTPRequest) -> Matches:
        """Fingerprints matching a response (memoised: several rules ask)."""
        key = id(r)
        if key not in self._matches:
            length = r.body_length
            complete = length is not None and len(r.body_head.encode("utf-8", "replace")) >= length
            self._matches[key] = self.fps.match_http(
                body=r.body_head,
                headers=r.headers,
                title=r.title,
                redirects=r.redirects,
                body_complete=complete,
            )
        return self._matches[key]

    def differs(self, r: HTTPRequest) -> bool:
        """Plainly not the control's page (used when another signal already points at it)."""
        if self.control is None or not self.control_http_ok:
            return False
        c = self.control.http_request
        if _uncommon_headers(r.headers) & _uncommon_headers(c.headers):
            return False  # a distinctive header both saw (x-request-id...): the same origin
        ratio = _length_ratio(*self.compared_lengths(r))
        length_differs = ratio is not None and ratio < _LENGTH_EQUAL_RATIO
        return r.status_code != c.status_code or (
            _titles_differ(r.title, c.title) and length_differs
        )

    def differs_strongly(self, r: HTTPRequest) -> bool:
        """Unlike the control's page beyond what dynamic content explains (http.diff)."""
        if self.control is None or not self.control_http_ok:
            return False
        c = self.control.http_request
        if _uncommon_headers(r.headers) & _uncommon_headers(c.headers):
            return False
        ratio = _length_ratio(*self.compared_lengths(r))
        titles = _titles_differ(r.title, c.title)
        length_differs = ratio is not None and ratio < _LENGTH_EQUAL_RATIO
        far = ratio is not None and ratio < _LENGTH_FAR_RATIO
        status = r.status_code != c.status_code
        return (status and (titles or length_differs)) or (titles and far)


    # -- redirect hops ------------------------------------------------------------------------
    def failed_hop(self, r: HTTPRequest) -> tuple[str, str, int | None] | None:
        """(scheme, host, port) of the redirect target a failed fetch died on, if another."""
        if r.failure is None or not r.redirects:
            return None
        url = r.redirects[-1]
        hop = (_scheme(url), _host(url), _url_port(url))
        if hop == (self.scheme, self.hostname, self.port) or not hop[1]:
            return None  # the measured endpoint itself: the main rows judge it
        return hop

    def hop_verdict(self, hop: tuple[str, str, int | None]) -> Verdict | None:
        """The hop's own TCP and TLS events (measure() opens a failed hop itself)."""
        scheme, host, port = hop
        conns = [c for c in self.obs.tcp_connect if c.origin == "redirect" and c.port == port]
        for c in conns:  # the control followed the whole chain: the hop resolves from outside
            fp = self.fps.match_dns(c.ip).blockpage
            if fp is not None:
                reason = "dns.bogon" if is_bogon(c.ip) else "dns.blockpage_ip"
                return _blocked(Blocking.DNS, reason, fp)
        if conns and all(is_bogon(c.ip) for c in conns):
            return _blocked(Blocking.DNS, "dns.bogon")
        if conns and all(c.failure is not None for c in conns):
            return _blocked(Blocking.TCP_IP, f"tcp.{_failure_kind(conns[0].failure)}")
        if scheme != "https":
            return None
        shakes = [
            h for h in self.obs.tls_handshakes
            if h.purpose == "redirect" and h.server_name.rstrip(".").lower() == host
        ]
        if not shakes or any(_tls_ok(h) for h in shakes):
            return None
        h = shakes[0]
        if h.failure in CERT_FAILURES or (h.failure is None and h.cert_valid_for_host is False):
            return _blocked(Blocking.TLS, "tls.mitm")
        kind = _failure_kind(h.failure)
        kind = "failure" if kind == "unreachable" else kind
        benign = any(
            b.purpose == "redirect_benign_sni"
            and b.failure is None
            and read_endpoint(b.address) == read_endpoint(h.address)
            for b in self.obs.tls_handshakes
        )
        return _blocked(Blocking.TLS, f"tls.sni_{kind}" if benign else f"tls.{kind}")


def _replies_disagree(views: list[tuple[str, frozenset[str]]]) -> bool:
    for i, (rc_a, a) in enumerate(views):
        for rc_b, b in views[i + 1 :]:
            if rc_a != rc_b or bool(a) != bool(b) or (a and b and a.isdisjoint(b)):
                return True
    return False


def _http_ok(r: HTTPRequest) -> bool:
    return r.failure is None and r.status_code is not None


def _tls_ok(h: TLSHandshake) -> bool:
    return h.failure is None and h.cert_valid_for_host is not False


# ---- the rules, in precedence order ----------------------------------------------------------
Rule = Callable[[_Evidence], Verdict | None]


def _rule_control_failed(ev: _Evidence) -> Verdict | None:
    if ev.control is None:
        if any(_http_ok(r) and ev.authenticated(r) for r in ev.requests):
            return _OK_HTTPS  # accessible needs no reference; only "blocked" does
        return Verdict(status=Status.INCONCLUSIVE, reason="control.failed")
    return None


def _dns_technique(ev: _Evidence, ip: str | None) -> str:
    """Which DNS technique explains a bad answer: injection > bogon > blockpage address."""
    if ev.injected:
        return "dns.injected"
    if ip is not None and is_bogon(ip):
        return "dns.bogon"
    return "dns.blockpage_ip"


def _rule_dns_fingerprint(ev: _Evidence) -> Verdict | None:
    loaded_https = any(_http_ok(r) and ev.authenticated(r) for r in ev.requests)
    for q in ev.obs.dns:
        for reply in q.replies:
            for answer in reply.answers:
                is_addr = answer.answer_type in ("A", "AAAA")
                if is_addr and ev.consistent(answer.value):
                    continue  # the control's own answer, or proven to serve the host
                if not is_addr and loaded_https:
                    continue  # the page loaded authenticated: the CNAME is the site's
                fp = ev.fps.match_dns(answer.value).blockpage
                if fp is None:
                    continue
                if is_addr:
                    return _blocked(Blocking.DNS, _dns_technique(ev, answer.value), fp)
                reason = "dns.injected" if ev.injected else "dns.blockpage_cname"
                return _blocked(Blocking.DNS, reason, fp)
    return None


def _genuine_page(ev: _Evidence, r: HTTPRequest) -> bool:
    """The browser got the control's own page (same status, title or length; no blockpage)."""
    if not (_http_ok(r) and ev.control_http_ok):
        return False
    matches = ev.http_matches(r)
    if matches.strong is not None or matches.weak is not None:
        return False
    return not ev.differs(r)


def _rule_dns_injected(ev: _Evidence) -> Verdict | None:
    if not ev.injected:
        return None
    if any(_genuine_page(ev, r) for r in ev.requests):
        return None  # interference without denial: later rows decide, evidence kept
    return _blocked(Blocking.DNS, "dns.injected")


def _rule_dns_failed(ev: _Evidence) -> Verdict | None:
    if ev.probe_addrs:
        return None
    if not ev.obs.dns:
        return _INCOMPLETE
    failures = [q.failure if q.failure is not None else DNS_NO_ANSWER for q in ev.obs.dns]
    failure = next((f for f in _DNS_FAILURE_RANK if f in failures), failures[0])
    if not ev.control_dns_ok:
        return _DOWN
    over_tcp = _dns_tcp_retry_failed(ev)
    if over_tcp is not None:
        return over_tcp
    reason = _DNS_FAILURE_REASON.get(failure, "dns.failure")
    if reason in ("dns.timeout", "dns.failure"):
        # A resolver that does not answer says more about a flaky link than about censorship.
        return Verdict(status=Status.INCONCLUSIVE, reason=reason)
    if reason == "dns.no_answer":
        asked = {q.query_type.upper() for q in ev.obs.dns}
        families = {"A" if ":" not in a else "AAAA" for a in ev.control_addrs}
        if not asked & families:
            return Verdict(status=Status.INCONCLUSIVE, reason=reason)
    return _blocked(Blocking.DNS, reason)


def _dns_tcp_retry_failed(ev: _Evidence) -> Verdict | None:
    """The resolver answered over UDP, truncated, and the same question over TCP failed.

    The resolver is alive (it answered) and the control resolved the name, so a TCP flow to
    the resolver that is reset or goes silent right after the question is interference with
    this lookup (censors that inject into UDP DNS reset TCP DNS).  A refused connection or a
    close without an answer is the resolver's own limitation (home routers without DNS over
    TCP): inconclusive.
    """
    for q in ev.obs.dns:
        if not q.retried_over_tcp or q.addrs or q.failure is None:
            continue
        if q.failure == CONNECTION_RESET:
            return _blocked(Blocking.DNS, "dns.tcp_reset")
        if q.failure == TIMEOUT:
            return _blocked(Blocking.DNS, "dns.tcp_timeout")
        if q.failure in _DNS_FAILURE_REASON:
            continue  # the TCP answer itself said NXDOMAIN, SERVFAIL...: judged as any answer
        return Verdict(status=Status.INCONCLUSIVE, reason="dns.tcp_failure")
    return None


def _ipv6_path_failure(c: TCPConnect) -> bool:
    """An IPv6 connect that failed as "unreachable": the probe's IPv6 path, not a censor.

    A host with an IPv6 address but broken IPv6 routing (a common home-router fault) gets
    these for every IPv6 destination while IPv4 works; OONI ignores them for the same reason.
    """
    ip = _ip(c.ip)
    return ip is not None and ip.version == 6 and c.failure in (
        HOST_UNREACHABLE, NETWORK_UNREACHABLE,
    )


def _rule_http_fingerprint(ev: _Evidence) -> Verdict | None:
    for r in ev.requests:
        if r.status_code is None or ev.authenticated(r):
            continue  # no response, or the site's own authenticated content
        matches = ev.http_matches(r)
        fp = matches.strong
        if fp is None:
            weak = matches.weak
            if weak is None or not ev.differs(r):
                continue  # vague words on a page like the control's: the site's own text
            fp = weak
        if ev.from_suspect_answer(r):
            ip = read_endpoint(r.address)[0] or None
            return _blocked(Blocking.DNS, _dns_technique(ev, ip), fp)
        return _blocked(Blocking.HTTP_DIFF, "http.blockpage", fp)
    return None


def _rule_https_loaded(ev: _Evidence) -> Verdict | None:
    if any(_http_ok(r) and ev.authenticated(r) for r in ev.requests):
        return _OK_HTTPS
    return None


def _rule_site_bogon(ev: _Evidence) -> Verdict | None:
    addrs = set(ev.probe_addrs)
    if ev.ip_literal or not addrs or not ev.control_addrs:
        return None
    if all(is_bogon(a) for a in addrs | ev.control_addrs) and addrs & ev.control_addrs:
        return _DOWN  # the authoritative answer itself is unroutable, for everyone
    return None


def _rule_ghost_name(ev: _Evidence) -> Verdict | None:
    if ev.ip_literal or not ev.probe_addrs or ev.control is None:
        return None
    if ev.control.dns.failure != DNS_NXDOMAIN:
        return None  # only a definite "no such name" (no address may be one family's gap)
    if any(is_bogon(a) for a in ev.probe_addrs):
        return None  # a bogon is evidence only against a public answer (row 9)
    return _blocked(Blocking.DNS, "dns.ghost_name")


def _rule_dns_bogon(ev: _Evidence) -> Verdict | None:
    if any(ev.bogon_evidence(a) for a in ev.probe_addrs):
        return _blocked(Blocking.DNS, "dns.bogon")
    return None


def _rule_tcp(ev: _Evidence) -> Verdict | None:
    records = ev.tcp_records
    if not records or any(c.failure is None for c in records):
        return None
    path = [c for c in records if _ipv6_path_failure(c)]
    if len(path) == len(records):
        return Verdict(status=Status.INCONCLUSIVE, reason="probe.ipv6_unreachable")
    records = tuple(c for c in records if c not in path)
    if all(ev.suspect(c.ip) for c in records) and ev.control_site_ok:
        # The resolver's answers are not the site's and lead nowhere from here, while the site
        # works from outside: the answer is the problem (even if the control can reach them).
        return _blocked(Blocking.DNS, "dns.inconsistent")
    for c in records:
        if ev.control_tcp(c.ip, c.port):
            return _blocked(Blocking.TCP_IP, f"tcp.{_failure_kind(c.failure)}")
    if all(ev.suspect(c.ip) for c in records):
        return _DOWN  # the resolver's answers lead nowhere, and the site is down anyway
    unknown = [c for c in records if ev.control_tcp(c.ip, c.port) is None and ev.consistent(c.ip)]
    if unknown and ev.control_http_ok:
        # The control did not test these addresses itself, but they are its own and it
        # fetched the page: they work from outside.
        return _blocked(Blocking.TCP_IP, f"tcp.{_failure_kind(unknown[0].failure)}")
    return _DOWN


def _rule_tls(ev: _Evidence) -> Verdict | None:
    if ev.scheme != "https":
        return None  # a plain-HTTP input: TLS is not on the browser's path (still validates)
    handshakes = ev.target_handshakes
    if not handshakes or any(_tls_ok(h) for h in handshakes):
        return None
    dns_verdict: Verdict | None = None
    tls_verdict: Verdict | None = None
    for h in handshakes:
        ip, port = read_endpoint(h.address)
        ctl = ev.control_tls(ip, port)
        control_ok = ctl is True or (ctl is None and ev.control_http_ok and ev.consistent(ip))
        if h.failure in CERT_FAILURES or (h.failure is None and h.cert_valid_for_host is False):
            if ev.suspect(ip):
                dns_verdict = dns_verdict or _blocked(Blocking.DNS, _dns_technique(ev, ip))
            elif control_ok:
                tls_verdict = tls_verdict or _blocked(Blocking.TLS, "tls.mitm")
            continue
        kind = _failure_kind(h.failure)
        kind = "failure" if kind == "unreachable" else kind
        sni_control_ok = ctl is True or (ctl is None and ev.control_http_ok)
        if ev.benign_sni_succeeded(h.address) and sni_control_ok:
            tls_verdict = tls_verdict or _blocked(Blocking.TLS, f"tls.sni_{kind}")
        elif control_ok:
            tls_verdict = tls_verdict or _blocked(Blocking.TLS, f"tls.{kind}")
    if dns_verdict or tls_verdict:
        return dns_verdict or tls_verdict
    if all(ev.suspect(read_endpoint(h.address)[0]) for h in handshakes) and ev.control_site_ok:
        # Answers unlike the control's that do not speak TLS for the host, with no other
        # explanation, while the site works from outside: the resolver's answer is the problem.
        return _blocked(Blocking.DNS, "dns.inconsistent")
    return _DOWN


def _rule_http_failed(ev: _Evidence) -> Verdict | None:
    requests = ev.requests
    if not requests or any(_http_ok(r) for r in requests):
        return None
    r = requests[0]
    failure = r.failure or "unknown_failure: no response"
    if not ev.control_http_ok:
        return _DOWN
    if failure in SITE_ANSWER_FAILURES and ev.authenticated(r):
        return _DOWN  # the site said so over TLS valid for it: its behaviour, not censorship
    hop = ev.failed_hop(r)
    if hop is not None:
        verdict = ev.hop_verdict(hop)
        if verdict is not None:
            return verdict
    # Failures that can only happen while opening a new connection belong to an earlier layer
    # (typically a redirect hop to another host).
    if failure in _DNS_FAILURE_REASON and failure != TIMEOUT:
        return _blocked(Blocking.DNS, _DNS_FAILURE_REASON[failure])
    if failure in (CONNECTION_REFUSED, HOST_UNREACHABLE, NETWORK_UNREACHABLE):
        return _blocked(Blocking.TCP_IP, f"tcp.{_failure_kind(failure)}")
    if failure in CERT_FAILURES:
        if ev.from_suspect_answer(r):
            ip = read_endpoint(r.address)[0] or None
            return _blocked(Blocking.DNS, _dns_technique(ev, ip))
        return _blocked(Blocking.TLS, "tls.mitm")
    kind = _failure_kind(failure)
    return _blocked(Blocking.HTTP_FAILURE, f"http.{'failure' if kind == 'unreachable' else kind}")


def _rule_http_page(ev: _Evidence) -> Verdict | None:
    fetched = [r for r in ev.requests if _http_ok(r)]
    if not fetched:
        return None
    r = fetched[0]
    if ev.authenticated(r):
        return Verdict(status=Status.OK, reason="ok.https")
    if ev.http_matches(r).false_positive is not None:
        return Verdict(status=Status.OK, reason="ok.http")  # a known ordinary page
    if ev.from_suspect_answer(r) and ev.differs(r):
        ip = read_endpoint(r.address)[0] or None
        return _blocked(Blocking.DNS, _dns_technique(ev, ip))
    if ev.differs_strongly(r):
        return _blocked(Blocking.HTTP_DIFF, "http.diff")
    return Verdict(status=Status.OK, reason="ok.http")


#: The precedence table above, as code: (name, rule) in order.
RULES: Final[tuple[tuple[str, Rule], ...]] = (
    ("control_failed", _rule_control_failed),
    ("dns_fingerprint", _rule_dns_fingerprint),
    ("dns_injected", _rule_dns_injected),
    ("dns_failed", _rule_dns_failed),
    ("http_fingerprint", _rule_http_fingerprint),
    ("https_loaded", _rule_https_loaded),
    ("site_bogon", _rule_site_bogon),
    ("ghost_name", _rule_ghost_name),
    ("dns_bogon", _rule_dns_bogon),
    ("tcp", _rule_tcp),
    ("tls", _rule_tls),
    ("http_failed", _rule_http_failed),
    ("http_page", _rule_http_page),
)  # then row 14: nothing decided -> inconclusive, probe.incomplete


def analyze(obs: WebObservations, fingerprints: Fingerprints) -> Verdict:
    """The verdict for one measurement (see the precedence table at the top of the module)."""
    return explain(obs, fingerprints)[1]


def explain(obs: WebObservations, fingerprints: Fingerprints) -> tuple[str, Verdict]:
    """Like ``analyze`` but also names the rule that decided (for logs and debugging)."""
    ev = _Evidence(obs, fingerprints)
    for name, rule in RULES:
        verdict = rule(ev)
        if verdict is not None:
            return name, _with_interference(ev, verdict)
    return "incomplete", _with_interference(ev, _INCOMPLETE)


def _with_interference(ev: _Evidence, verdict: Verdict) -> Verdict:
    """Tampering that did not decide the verdict is still recorded as evidence."""
    found = ev.interference if ev.control is not None else None
    if found is None or found == verdict.reason:
        return verdict
    return dataclasses.replace(verdict, interference=found)


