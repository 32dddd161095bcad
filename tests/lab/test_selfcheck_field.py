"""Self-checks for the field-suite behaviours (lab/scenarios_field.toml) on the wire.

Like test_selfcheck.py: the lab's own client, never the agent, the probe's view compared with
the internet side's, so a verdict test that passes cannot be an artefact of a broken lab.
"""

from __future__ import annotations

from typing import Any

import pytest

from lab import addressing as A
from lab.plan import DEFAULT_SITE_DELAY_MS

pytestmark = pytest.mark.lab


def _addr(lab: Any, host: str) -> str:
    return str(lab.plan.site(host).address)


def _dns(name: str, **kw: Any) -> dict[str, Any]:
    return {"type": "dns", "name": name, **kw}


def _http(lab: Any, host: str, ip: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"type": "http", "tls": False, "host": host, "ip": ip or _addr(lab, host), **kw}


def _https(lab: Any, host: str, ip: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"type": "http", "tls": True, "host": host, "ip": ip or _addr(lab, host),
            "ca_file": str(lab.ca_file), **kw}


def _tls(lab: Any, ip: str, sni: str, **kw: Any) -> dict[str, Any]:
    return {"type": "tls", "ip": ip, "sni": sni, "ca_file": str(lab.ca_file), **kw}


def _answers(result: dict[str, Any]) -> list[list[str]]:
    return [r.get("answers", []) for r in result["replies"]]


def _events(lab: Any, event: str, key: str, value: str) -> list[dict[str, Any]]:
    return [e for e in lab.injector_events() if e["event"] == event and e.get(key) == value]


# ---- DNS: the resolver's lies, and the site's own DNS --------------------------------------


def test_dns_answer_and_nodata_only_from_the_isp(lab: Any) -> None:
    out = lab.clients({
        "probe": [_dns("loop-lie.lab.test"), _dns("hidden-records.lab.test"),
                  _dns("phantom.lab.test")],
        "inet": [_dns("loop-lie.lab.test", server=A.OPEN_RESOLVER),
                 _dns("hidden-records.lab.test", server=A.OPEN_RESOLVER),
                 _dns("phantom.lab.test", server=A.OPEN_RESOLVER)],
    })
    lie, nodata, ghost = out["probe"]
    lie_ctl, nodata_ctl, ghost_ctl = out["inet"]
    assert _answers(lie) == [["127.0.0.1"]] and lie_ctl["replies"][0]["answers"] == [
        _addr(lab, "loop-lie.lab.test")]
    assert [(r["rcode"], r.get("answers", [])) for r in nodata["replies"]] == [("NOERROR", [])]
    assert nodata_ctl["replies"][0]["answers"] == [_addr(lab, "hidden-records.lab.test")]
    assert _answers(ghost) == [[_addr(lab, "parking-lot.lab.test")]]
    assert [r["rcode"] for r in ghost_ctl["replies"]] == ["NXDOMAIN"]


def test_the_sites_own_dns_is_the_same_from_everywhere(lab: Any) -> None:
    checks = [_dns("misconfigured.lab.test"), _dns("addressless.lab.test")]
    out = lab.clients({"probe": checks,
                       "inet": [{**c, "server": A.OPEN_RESOLVER} for c in checks]})
    for side in ("probe", "inet"):
        loop, empty = out[side]
        assert _answers(loop) == [["127.0.0.1"]], side
        assert [(r["rcode"], r.get("answers", [])) for r in empty["replies"]] == [
            ("NOERROR", [])], side


def test_injection_toward_the_proxy_which_relays_the_genuine_site(lab: Any) -> None:
    host = "relayed.lab.test"
    out = lab.clients({
        "probe": [_dns(host, listen_s=1.0), _http(lab, host, ip=A.PROXY_ADDR),
                  _https(lab, host, ip=A.PROXY_ADDR),
                  _tls(lab, A.PROXY_ADDR, "benign.example.test", timeout=2.0)],
        "inet": [_http(lab, host)],
    })
    dns, http, https, unknown = out["probe"]
    (direct,) = out["inet"]
    assert _answers(dns) == [[A.PROXY_ADDR], [_addr(lab, host)]]
    assert http["status"] == 200 and http["body_length"] == direct["body_length"]
    assert f"Welcome to {host}" in http["body_head"]
    assert https["ok"] and https["status"] == 200, "TLS passes through: the origin's certificate"
    assert not unknown["ok"], "the proxy relays only names it knows"


# ---- TCP, TLS and HTTP on a redirect's target --------------------------------------------


def test_http_close_and_drop_on_host(lab: Any) -> None:
    closed, dropped = lab.client("probe", [
        _http(lab, "hop-eof.lab.test"), _http(lab, "hop-blackhole.lab.test", timeout=2.0)])
    assert closed["error"] == "eof" and closed["stage"] == "http"
    assert dropped["error"] == "timeout" and dropped["stage"] == "http"
    assert _events(lab, "http_close", "host", "hop-eof.lab.test")
    assert _events(lab, "http_drop", "host", "hop-blackhole.lab.test")
    (control,) = lab.client("inet", [_http(lab, "hop-eof.lab.test")])
    assert control["status"] == 200


def test_tls_close_spares_other_names(lab: Any) -> None:
    ip = _addr(lab, "hop-eof.lab.test")
    closed, other = lab.client("probe", [
        _tls(lab, ip, "hop-eof.lab.test"), _tls(lab, ip, "benign.example.test", ca_file=None)])
    assert not closed["ok"] and closed["t"] < DEFAULT_SITE_DELAY_MS / 1000 + 0.5, closed
    assert other["ok"]
    assert _events(lab, "tls_close", "sni", "hop-eof.lab.test")


def test_link_shortener_redirects_everyone(lab: Any) -> None:
    check = [_https(lab, "go-reset-tls.lab.test")]
    out = lab.clients({"probe": check, "inet": check})
    for side in ("probe", "inet"):
        (r,) = out[side]
        assert r["status"] == 308 and r["headers"]["location"] == "https://hop-reset.lab.test/"


# ---- sites that misbehave on their own ----------------------------------------------------


def test_broken_certificates_fail_from_everywhere(lab: Any) -> None:
    hosts = ["stale-cert.lab.test", "misnamed-cert.lab.test", "stranger-cert.lab.test"]
    checks = [_tls(lab, _addr(lab, h), h) for h in hosts]
    out = lab.clients({"probe": checks, "inet": checks})
    for side in ("probe", "inet"):
        for host, r in zip(hosts, out[side], strict=True):
            assert not r["ok"] and r["error"].startswith("ssl_verify"), (side, host, r)
    # any name sent to that address gets the same broken leaf (its own server)
    (other,) = lab.client("probe", [_tls(lab, _addr(lab, hosts[2]), "news-portal.lab.test")])
    assert not other["ok"] and other["error"].startswith("ssl_verify")


def test_isp_users_get_the_challenge_and_the_broken_location(lab: Any) -> None:
    checks = [_http(lab, "edge-guarded.lab.test"), _https(lab, "quirky-redirect.lab.test")]
    out = lab.clients({"probe": checks, "inet": checks})
    (challenge, broken), (page, working) = out["probe"], out["inet"]
    assert challenge["status"] == 503 and page["status"] == 200
    assert challenge["headers"]["x-edge-request"] == page["headers"]["x-edge-request"]
    assert broken["status"] == 302 and broken["headers"]["location"] == "https://"
    assert working["status"] == 302 and working["headers"]["location"].startswith(
        "https://quirky-redirect.lab.test/")


def test_helper_block_is_a_phase_of_its_own(lab: Any) -> None:
    check = [{"type": "tcp", "ip": A.HELPER_ADDR, "port": A.HELPER_PORT}]
    lab.block_helper()
    try:
        (blocked,) = lab.client("probe", check)
    finally:
        lab.unblock_helper()
    (restored,) = lab.client("probe", check)
    assert blocked["error"] == "connection_refused"
    assert restored["ok"]
