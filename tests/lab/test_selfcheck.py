"""Self-checks: every censor behaviour (and every benign case) manifests on the wire.

They use a small client of their own (lab/client.py), never the agent, and compare the
probe's view with the uncensored view from the internet side, so an agent test that passes
cannot be an artefact of a broken lab.
"""

from __future__ import annotations

from typing import Any

import pytest

from lab import addressing as A
from lab import nsctl
from lab.plan import DEFAULT_SITE_DELAY_MS

pytestmark = pytest.mark.lab


def _addr(lab: Any, host: str) -> str:
    return str(lab.plan.site(host).address)


def _https(lab: Any, host: str, ip: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"type": "http", "tls": True, "host": host, "ip": ip or _addr(lab, host),
            "ca_file": str(lab.ca_file), **kw}


def _http(lab: Any, host: str, ip: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"type": "http", "tls": False, "host": host, "ip": ip or _addr(lab, host), **kw}


def _dns(name: str, **kw: Any) -> dict[str, Any]:
    return {"type": "dns", "name": name, **kw}


def _both(lab: Any, probe: list[dict[str, Any]], control: list[dict[str, Any]]
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One check from the probe (censored) and one from the internet side, concurrently."""
    out = lab.clients({"probe": probe, "inet": control})
    return out["probe"][0], out["inet"][0]


def _answers(result: dict[str, Any]) -> list[list[str]]:
    return [r.get("answers", []) for r in result["replies"]]


# ---- topology ---------------------------------------------------------------------------


def test_namespaces_are_isolated_and_in_range(lab: Any) -> None:
    root_links = nsctl.run(["ip", "-o", "link", "show"]).stdout
    assert lab.prefix not in root_links, "a lab interface leaked into the root namespace"
    for role in nsctl.ROLES:
        addrs = nsctl.run(["ip", "-n", lab.ns(role), "-o", "-4", "addr", "show"]).stdout
        for line in addrs.splitlines():
            cidr = line.split()[3]
            ip = cidr.split("/")[0]
            assert ip == "127.0.0.1" or A.in_lab(ip), f"{role}: {cidr} outside 198.18.0.0/15"
        routes = nsctl.run(["ip", "-n", lab.ns(role), "-4", "route", "show"]).stdout
        if role != "probe":
            assert "default" not in routes, f"{role} must have no default route"
        for line in routes.splitlines():
            dest = line.split()[0]
            if dest != "default":
                assert A.in_lab(dest.split("/")[0]), f"{role}: route {line} leaves the lab"


def test_probe_uses_the_isp_resolver_and_reaches_ordinary_sites(lab: Any) -> None:
    host = "www.news.lab.test"
    dns, https, http = lab.client("probe", [
        _dns(host), _https(lab, host), _http(lab, "blog.lab.test")])
    assert dns["replies"][0]["rcode"] == "NOERROR"
    assert dns["replies"][0]["answers"] == [_addr(lab, host)]  # via /etc/resolv.conf overlay
    assert https["ok"] and https["status"] == 200 and host in https["body_head"]
    assert http["ok"] and http["status"] == 200


# ---- DNS --------------------------------------------------------------------------------


def test_dns_nxdomain_only_from_the_isp(lab: Any) -> None:
    host = "nxdomain.lab.test"
    probe, control = _both(lab, [_dns(host)], [_dns(host, server=A.OPEN_RESOLVER)])
    assert [r["rcode"] for r in probe["replies"]] == ["NXDOMAIN"]
    assert control["replies"][0]["answers"] == [_addr(lab, host)]


def test_dns_bogon_answer(lab: Any) -> None:
    host = "bogon.lab.test"
    probe, control = _both(lab, [_dns(host)], [_dns(host, server=A.OPEN_RESOLVER)])
    assert _answers(probe) == [[A.BOGON_ANSWER]]
    assert control["replies"][0]["answers"] == [_addr(lab, host)]


def test_dns_servfail_only_from_the_isp(lab: Any) -> None:
    host = "servfail.lab.test"
    probe, control = _both(lab, [_dns(host)], [_dns(host, server=A.OPEN_RESOLVER)])
    assert [r["rcode"] for r in probe["replies"]] == ["SERVFAIL"]
    assert control["replies"][0]["answers"] == [_addr(lab, host)]


def test_dns_blockpage_answer_leads_to_the_blockpage_server(lab: Any) -> None:
    host = "dnsblockpage.lab.test"
    probe, page, tls_lab, tls_censor = lab.client("probe", [
        _dns(host),
        _http(lab, host, ip=A.BLOCKPAGE_ADDR),
        {"type": "tls", "ip": A.BLOCKPAGE_ADDR, "sni": host, "ca_file": str(lab.ca_file)},
        {"type": "tls", "ip": A.BLOCKPAGE_ADDR, "sni": host, "ca_file": str(lab.censor_ca_file)},
    ])
    assert _answers(probe) == [[A.BLOCKPAGE_ADDR]]
    assert page["status"] == 403 and 'iframe src="http://10.10.34.34' in page["body_head"]
    assert not tls_lab["ok"] and tls_lab["error"].startswith("ssl_verify")
    assert tls_censor["ok"], "the blockpage's certificate names the host (censor CA)"


def test_dns_injection_arrives_before_the_real_answer(lab: Any) -> None:
    host = "injected.lab.test"
    (probe,) = lab.client("probe", [_dns(host, listen_s=1.0)])
    replies = probe["replies"]
    assert len(replies) == 2, replies
    first, second = replies
    assert first["answers"] == [A.DEAD_ADDR]
    assert second["answers"] == [_addr(lab, host)], "the real answer must still arrive"
    assert first["t"] < second["t"]
    assert any(e["event"] == "dns_inject" and e["name"] == host for e in lab.injector_events())


# ---- TCP/IP -----------------------------------------------------------------------------


def test_tcp_drop_times_out_only_from_the_probe(lab: Any) -> None:
    ip = _addr(lab, "tcpdrop.lab.test")
    probe, control = _both(lab, [{"type": "tcp", "ip": ip, "port": 443, "timeout": 2}],
                           [{"type": "tcp", "ip": ip, "port": 443}])
    assert probe["error"] == "timeout"
    assert control["ok"]


def test_tcp_reset_refuses_only_from_the_probe(lab: Any) -> None:
    ip = _addr(lab, "tcpreset.lab.test")
    check = [{"type": "tcp", "ip": ip, "port": 443}]
    probe, control = _both(lab, check, check)
    assert probe["error"] == "connection_refused" and probe["t"] < 1.0
    assert control["ok"]


# ---- TLS --------------------------------------------------------------------------------


def test_tls_sni_reset_wins_the_race_and_spares_other_names(lab: Any) -> None:
    host = "sni-reset.lab.test"
    ip = _addr(lab, host)
    assert ip == _addr(lab, "neighbour.lab.test"), "the two names must share the address"
    blocked, other = lab.client("probe", [
        {"type": "tls", "ip": ip, "sni": host, "ca_file": str(lab.ca_file)},
        {"type": "tls", "ip": ip, "sni": "neighbour.lab.test", "ca_file": str(lab.ca_file)},
    ])
    assert blocked["error"] == "connection_reset"
    # the server waits DEFAULT_SITE_DELAY_MS before its ServerHello: the reset came first,
    # from the injector (the race an on-path censor wins against a distant server)
    assert blocked["t"] < DEFAULT_SITE_DELAY_MS / 1000, blocked
    assert other["ok"]


def test_tls_sni_drop_blackholes_only_that_name(lab: Any) -> None:
    host = "sni-drop.lab.test"
    ip = _addr(lab, host)
    out = lab.clients({"probe": [
        {"type": "tls", "ip": ip, "sni": host, "ca_file": str(lab.ca_file), "timeout": 2.5},
        {"type": "tls", "ip": ip, "sni": "benign.example.test"},
    ], "inet": [_https(lab, host)]})
    blocked, other = out["probe"]
    (control,) = out["inet"]
    assert blocked["error"] == "timeout"
    assert other["ok"]
    assert control["ok"] and control["status"] == 200


def test_tls_mitm_presents_the_censors_certificate(lab: Any) -> None:
    host = "mitm.lab.test"
    ip = _addr(lab, host)
    out = lab.clients({"probe": [
        {"type": "tls", "ip": ip, "sni": host, "ca_file": str(lab.ca_file)},
        {"type": "tls", "ip": ip, "sni": host, "ca_file": str(lab.censor_ca_file)},
    ], "inet": [_https(lab, host)]})
    lab_ca, censor_ca = out["probe"]
    (control,) = out["inet"]
    assert lab_ca["error"].startswith("ssl_verify")
    assert censor_ca["ok"]
    assert control["ok"] and control["status"] == 200


# ---- HTTP -------------------------------------------------------------------------------


def test_http_blockpage_injection_replaces_the_real_page(lab: Any) -> None:
    out = lab.clients({"probe": [
        _http(lab, "filtered.lab.test"), _http(lab, "restricted.lab.test"),
        _https(lab, "filtered.lab.test"),
    ], "inet": [_http(lab, "filtered.lab.test")]})
    known, custom, https = out["probe"]
    (control,) = out["inet"]
    assert known["status"] == 403 and 'iframe src="http://10.10.34.34' in known["body_head"]
    assert custom["status"] == 200 and "Access restricted" in custom["body_head"]
    # the forged response (no Server header) is all the client got: the real one was dropped
    assert known["headers"].get("server") is None and custom["headers"].get("server") is None
    assert https["status"] == 200 and "filtered.lab.test" in https["body_head"]
    assert control["status"] == 200 and "Welcome to filtered.lab.test" in control["body_head"]


def test_http_reset_on_host(lab: Any) -> None:
    check = [_http(lab, "httpreset.lab.test")]
    probe, control = _both(lab, check, check)
    assert probe["error"] == "connection_reset" and probe["stage"] == "http"
    assert control["status"] == 200


# ---- throttling and shutdown ------------------------------------------------------------


@pytest.fixture(scope="module")
def transfers(lab: Any) -> dict[str, dict[str, Any]]:
    """Four downloads at once: the two shaped ones are in separate HTB classes and the two
    fast ones go unclassified, so they do not disturb each other's measurement."""
    names = {
        "sni_slow": _https(lab, "throttled-sni.lab.test", path="/bytes/65536", timeout=20),
        "sni_fast": _https(lab, "fast-sni.lab.test", path="/bytes/4000000", timeout=20),
        "ip_slow": _https(lab, "throttled-ip.lab.test", path="/bytes/131072", timeout=20),
        "ip_fast": _https(lab, "fast-ip.lab.test", path="/bytes/4000000", timeout=20),
    }
    results = lab.client("probe", list(names.values()), timeout=40)
    return dict(zip(names, results, strict=True))


def test_sni_throttling_shapes_only_that_name(lab: Any, transfers: Any) -> None:
    assert _addr(lab, "throttled-sni.lab.test") == _addr(lab, "fast-sni.lab.test")
    slow, fast = transfers["sni_slow"], transfers["sni_fast"]
    # configured 130 kbit/s on the wire; the body (goodput) gets ~94% of it
    assert 90_000 <= slow["bits_per_s"] <= 160_000, slow
    assert fast["overall_bits_per_s"] > 20_000_000, fast
    events = [e for e in lab.injector_events() if e["event"] == "tls_throttle"]
    assert events and all(e["error"] is None for e in events)


def test_ip_throttling_shapes_only_that_address(transfers: Any) -> None:
    slow, fast = transfers["ip_slow"], transfers["ip_fast"]
    assert 280_000 <= slow["bits_per_s"] <= 480_000, slow  # configured: 400 kbit/s
    assert fast["overall_bits_per_s"] > 20_000_000, fast


def test_shutdown_cuts_the_uplink_and_restore_brings_it_back(lab: Any) -> None:
    host = "www.news.lab.test"
    checks = [_https(lab, host, timeout=2), _dns(host),
              {"type": "tcp", "ip": A.HELPER_ADDR, "port": A.HELPER_PORT, "timeout": 2}]
    before = lab.client("probe", checks)
    assert before[0]["ok"] and before[1]["replies"][0]["rcode"] == "NOERROR"
    lab.shutdown()
    try:
        assert not lab.uplink_is_up()
        site, dns, helper = lab.client("probe", checks)
        assert not site["ok"] and not helper["ok"]
        assert dns["replies"][0]["rcode"] == "SERVFAIL"  # the ISP resolver lost its upstream
    finally:
        lab.restore()
    after = lab.client("probe", checks)
    assert after[0]["ok"] and after[1]["replies"][0]["answers"] == [_addr(lab, host)]
    assert after[2]["ok"]


# ---- benign -----------------------------------------------------------------------------


def test_down_sites_fail_from_everywhere(lab: Any) -> None:
    refused, timeout, nxdomain = "gone.lab.test", "unresponsive.lab.test", "expired.lab.test"
    checks = [
        {"type": "tcp", "ip": _addr(lab, refused), "port": 443},
        {"type": "tcp", "ip": _addr(lab, timeout), "port": 443, "timeout": 2},
    ]
    out = lab.clients({"probe": [*checks, _dns(nxdomain)],
                       "inet": [*checks, _dns(nxdomain, server=A.OPEN_RESOLVER)]})
    for side in out.values():
        assert side[0]["error"] == "connection_refused"
        assert side[1]["error"] == "timeout"
        assert side[2]["replies"][0]["rcode"] == "NXDOMAIN"


def test_cdn_answers_differ_but_both_edges_are_valid(lab: Any) -> None:
    host = "cdn.lab.test"
    probe, control = _both(lab, [_dns(host)], [_dns(host, server=A.OPEN_RESOLVER)])
    isp_ip, ctl_ip = probe["replies"][0]["answers"][0], control["replies"][0]["answers"][0]
    assert isp_ip != ctl_ip
    edge, origin = lab.client("probe", [_https(lab, host, ip=isp_ip), _https(lab, host, ip=ctl_ip)])
    assert edge["ok"] and origin["ok"] and edge["status"] == origin["status"] == 200


def test_slow_and_dynamic_sites(lab: Any) -> None:
    slow, d1, d2, d3 = lab.client("probe", [
        _https(lab, "slow.lab.test", timeout=6),
        *(_https(lab, "dynamic.lab.test") for _ in range(3)),
    ])
    assert slow["ok"] and slow["t_head"] >= 2.0
    lengths = {d["body_length"] for d in (d1, d2, d3)}
    assert len(lengths) > 1, "dynamic content must change between fetches"
    assert all(4800 <= n <= 7200 for n in lengths)  # 6000 +- 20%
