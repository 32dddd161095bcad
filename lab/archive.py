"""A synthetic archive of signed measurements, as a network of probes would have produced it.

Used by the tests of the API, dashboard, report and OONI export, by ``bench/archive.py`` and
by demos.  Every record is schema-valid and signed by a real Ed25519 key; web_connectivity
test keys are built with the experiment's own observation model (so they have exactly the
shape the agent writes), in scenarios a censor produces: DNS injection (two replies, the
first a blockpage address), TLS reset on the SNI, an HTTP blockpage that matches a known
fingerprint, a site that is down from both vantage points, throttling, and plain access.

Deterministic for a given seed: a test computes its expected answers from the returned
records, never from typed-in numbers.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.experiments.web_connectivity.model import WebObservations
from agent.net.observations import (
    DNSAnswer,
    DNSQuery,
    DNSReply,
    HTTPRequest,
    TCPConnect,
    TLSHandshake,
)
from agent.wire import envelope as wire
from agent.wire.helper_api import (
    ClientInfo,
    ControlDNS,
    ControlHTTP,
    ControlResponse,
    ControlTCP,
    ControlTLS,
)
from collector.ingest.verify import domain_of
from collector.store.base import MeasurementRow
from lab.probes import TestProbe

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Network:
    cc: str
    asn: str
    name: str


NETWORKS: tuple[Network, ...] = (
    Network("IQ", "AS50710", "Earthlink Telecommunications"),
    Network("IQ", "AS59588", "ZAIN Iraq"),
    Network("IR", "AS44244", "Irancell"),
    Network("IR", "AS197207", "Mobile Communication Company of Iran"),
    Network("PK", "AS17557", "Pakistan Telecommunication Company"),
    Network("KZ", "AS9198", "JSC Kazakhtelecom"),
)
SITES: tuple[tuple[str, str], ...] = (
    ("https://www.facebook.com/", "GRP"),
    ("https://telegram.org/", "COMT"),
    ("https://www.bbc.com/news", "NEWS"),
    ("https://twitter.com/", "GRP"),
    ("https://www.hrw.org/", "HUMR"),
    ("https://www.torproject.org/", "ANON"),
    ("https://www.wikipedia.org/", "CULTR"),
    ("https://www.example.com/", "CTRL"),
)
SCENARIOS = ("ok", "dns", "tls", "http", "down", "inconclusive")
BLOCKPAGE_IP = "10.10.34.35"  # Iran's well-known DNS blockpage address
REAL_IP = "203.0.113.80"
RESOLVER = "198.18.0.53:53"
BLOCKPAGE_TITLE = "Access denied"
BLOCKPAGE_BODY = (
    '<html><head><title>Access denied</title></head><body><iframe src="http://10.10.34.34'
    '?type=Invalid Site"></iframe></body></html>'
)
PAGE_BODY = "<html><head><title>{title}</title></head><body>" + "news " * 400 + "</body></html>"


@dataclass
class Archive:
    """What was generated: the probes, the records (by id) and the signed rows."""

    probes: dict[str, TestProbe] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[MeasurementRow] = field(default_factory=list)
    network_of: dict[str, Network] = field(default_factory=dict)  # probe_id -> network


def blocked_sites(net: Network) -> dict[str, str]:
    """Which scenario censors each site on a network (the "truth" of the archive)."""
    rules = {
        "IQ": {"telegram.org": "dns", "www.facebook.com": "tls"},
        "IR": {"twitter.com": "dns", "www.bbc.com": "http", "www.torproject.org": "tls",
               "www.hrw.org": "throttled"},
        "PK": {"www.hrw.org": "http"},
        "KZ": {"www.torproject.org": "tls"},
    }
    return rules.get(net.cc, {})


def _dns(host: str, first_ip: str, injected: bool, rng: random.Random) -> DNSQuery:
    replies = [DNSReply(0.004 + rng.random() * 0.002, "NOERROR",
                        (DNSAnswer("A", first_ip, 300),), RESOLVER)]
    if injected:  # the genuine answer arrives after the injected one
        replies.append(DNSReply(0.09 + rng.random() * 0.03, "NOERROR",
                                (DNSAnswer("A", REAL_IP, 300),), RESOLVER))
    return DNSQuery(host, "A", RESOLVER, "udp", None, tuple(replies), 0.0, replies[0].t)


def web_test_keys(url: str, scenario: str, net: Network, rng: random.Random) -> dict[str, Any]:
    host = domain_of(url) or "example.org"
    title = host.split(".")[-2].capitalize() + " Homepage"
    body = PAGE_BODY.format(title=title)
    control = ControlResponse(
        dns=ControlDNS(None, (REAL_IP,)),
        tcp_connect={f"{REAL_IP}:443": ControlTCP(True, None)},
        tls_handshake={f"{REAL_IP}:443": ControlTLS(host, True, None)},
        http_request=ControlHTTP(None, 200, len(body), title,
                                 {"Content-Type": "text/html", "X-Site": host}),
        client=ClientInfo(net.asn, net.name, net.cc),
    )
    first_ip = BLOCKPAGE_IP if scenario == "dns" else REAL_IP
    dns = _dns(host, first_ip, scenario == "dns", rng)
    address = f"{first_ip}:443"
    t = dns.t
    tcp = TCPConnect(first_ip, 443, None if scenario != "down" else "generic_timeout_error",
                     t, t + 0.05, "dns")
    tls_fail = {"tls": "connection_reset"}.get(scenario)
    tls = TLSHandshake(address, host, "target", tls_fail, None if tls_fail else "TLSv1.3",
                       None if tls_fail else "TLS_AES_128_GCM_SHA256",
                       None if tls_fail else hashlib.sha256(host.encode()).hexdigest(),
                       None if tls_fail else True, t + 0.05, t + 0.12)
    handshakes = [tls]
    if scenario == "tls":  # the same address with a harmless SNI works: SNI filtering
        handshakes.append(TLSHandshake(address, "example.org", "benign_sni", None, "TLSv1.3",
                                       "TLS_AES_128_GCM_SHA256", None, False, t + 0.13,
                                       t + 0.2))
    requests: list[HTTPRequest] = []
    if scenario == "http":
        page = BLOCKPAGE_BODY
        requests.append(HTTPRequest(url.replace("https://", "http://"), "GET", address, None,
                                    403, {"Content-Type": "text/html", "Server": "nginx"},
                                    len(page), hashlib.sha256(page.encode()).hexdigest(),
                                    page, BLOCKPAGE_TITLE, (), t + 0.2, t + 0.3))
    elif scenario in ("ok", "inconclusive"):
        requests.append(HTTPRequest(url, "GET", address, None, 200,
                                    {"Content-Type": "text/html", "X-Site": host},
                                    len(body), hashlib.sha256(body.encode()).hexdigest(),
                                    body[:1024], title, (), t + 0.2, t + 0.4))
    obs = WebObservations(
        input=url, hostname=host, dns=(dns,),
        tcp_connect=(tcp,), tls_handshakes=tuple(handshakes) if scenario != "down" else (),
        requests=tuple(requests),
        control=None if scenario == "inconclusive" else control,
        control_failure="generic_timeout_error" if scenario == "inconclusive" else None,
    )
    if scenario == "down":
        obs = WebObservations(
            input=url, hostname=host, dns=(dns,), tcp_connect=(tcp,),
            control=ControlResponse(
                dns=control.dns, tcp_connect={f"{REAL_IP}:443": ControlTCP(
                    False, "generic_timeout_error")},
                tls_handshake={}, http_request=ControlHTTP(
                    "generic_timeout_error", None, None, "", {}),
                client=control.client),
        )
    return obs.to_test_keys()


VERDICTS: dict[str, dict[str, Any]] = {
    "ok": {"status": "ok", "blocking": None, "reason": "", "confirmed": False},
    "dns": {"status": "blocked", "blocking": "dns", "reason": "dns.injected",
            "confirmed": True, "fingerprint": "dns_ir_10.10.34.35"},
    "tls": {"status": "blocked", "blocking": "tls", "reason": "tls.sni_reset",
            "confirmed": False},
    "http": {"status": "blocked", "blocking": "http-diff", "reason": "http.blockpage",
             "confirmed": True, "fingerprint": "http_ir_iframe_10.10.34.34"},
    "down": {"status": "down", "blocking": None, "reason": "site.down", "confirmed": False},
    "inconclusive": {"status": "inconclusive", "blocking": None, "reason": "control.failed",
                     "confirmed": False},
    "throttled": {"status": "throttled", "blocking": "throttling", "reason": "throttling.sni",
                  "confirmed": False},
}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record(probe: TestProbe, net: Network, url: str, category: str, start: float,
           scenario: str, rng: random.Random) -> dict[str, Any]:
    if scenario == "throttled":
        test_name = "throttling"
        tk: dict[str, Any] = {"target": domain_of(url), "transfers": [
            {"server_name": domain_of(url), "bps": 42_000.0},
            {"server_name": "example.org", "bps": 2_400_000.0}]}
    else:
        test_name = "web_connectivity"
        tk = web_test_keys(url, scenario, net, rng)
    return {
        "measurement_id": wire.uuid7(int(start * 1000)),
        "test_name": test_name,
        "test_version": "0.3.0",
        "input": url,
        "category_code": category,
        "probe_id": probe.probe_id,
        "probe_asn": net.asn,
        "probe_cc": net.cc,
        "probe_network_name": net.name,
        "resolver_asn": net.asn,
        "measurement_start_time": iso(start),
        "test_runtime": round(0.3 + rng.random(), 3),
        "software_name": "vigil-agent",
        "software_version": "0.1.0",
        "test_keys": tk,
        "verdict": dict(VERDICTS[scenario]),
    }


def row(rec: dict[str, Any], probe: TestProbe, received: float) -> MeasurementRow:
    """The row the ingest would store for this record: signed bytes and signature."""
    payload = wire.encode_record(rec)
    signature = probe.key.sign(wire.pae(wire.PAYLOAD_TYPE, payload))
    v = rec["verdict"]
    return MeasurementRow(
        measurement_id=rec["measurement_id"], probe_id=probe.probe_id,
        test_name=rec["test_name"], input=rec["input"], domain=domain_of(rec["input"]),
        category_code=rec["category_code"], probe_cc=rec["probe_cc"],
        probe_asn=rec["probe_asn"], probe_network_name=rec["probe_network_name"],
        status=v["status"], blocking=v["blocking"], reason=v["reason"],
        confirmed=v["confirmed"],
        start_ts=datetime.fromisoformat(rec["measurement_start_time"]).timestamp(),
        received_ts=received, payload_type=wire.PAYLOAD_TYPE, payload=payload,
        signature=signature,
    )


def generate(n: int, *, days: float = 30.0, until: float | None = None, seed: int = 1,
             networks: Sequence[Network] = NETWORKS, probes_per_network: int = 1,
             onset_fraction: float = 1 / 3) -> Archive:
    """``n`` measurements spread evenly over ``days`` ending at ``until`` (default now),
    round-robin over networks and sites.  Blocking starts ``onset_fraction`` into the span."""
    rng = random.Random(seed)
    end = until if until is not None else datetime.now(UTC).timestamp()
    since = end - days * DAY
    onset = since + onset_fraction * (end - since)
    arc = Archive()
    probes: list[tuple[TestProbe, Network]] = []
    for net in networks:
        for _ in range(probes_per_network):
            p = TestProbe.new()
            arc.probes[p.probe_id] = p
            arc.network_of[p.probe_id] = net
            probes.append((p, net))
    for i, (start, probe, net, url, cat) in enumerate(_plan(n, since, end, probes)):
        rule = blocked_sites(net).get(domain_of(url) or "")
        if rule is not None and start >= onset and rng.random() < 0.9:
            scenario = rule
        else:
            roll = rng.random()
            scenario = "down" if roll < 0.03 else "inconclusive" if roll < 0.05 else "ok"
        rec = record(probe, net, url, cat, start, scenario, rng)
        arc.records[rec["measurement_id"]] = rec
        arc.rows.append(row(rec, probe, start + 2.0 + (i % 7)))
    return arc


def _plan(n: int, since: float, end: float, probes: Sequence[tuple[TestProbe, Network]]
          ) -> Iterator[tuple[float, TestProbe, Network, str, str]]:
    step = (end - since) / max(1, n)
    for i in range(n):
        probe, net = probes[i % len(probes)]
        url, cat = SITES[(i // len(probes)) % len(SITES)]
        yield since + i * step, probe, net, url, cat
