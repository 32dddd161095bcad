"""Packet evidence on a path with a censor at a known hop (lab/pathlab.py).

Two layouts, so the rows cannot pass by one lucky constant: four routers with the censor on
hop 3 forging with TTL 64, and three routers with the censor on hop 2 forging with TTL 255
(another stack).  In each, the forensics (web_connectivity's packet capture) and censor_trace
must name the censor's hop for what it injects, and never call "injected" what the server
itself does, even when the path of its reset changes (the detour site).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lab.pathlab import (
    BLOCKED,
    DETOUR_RESET,
    DNS_BLOCKED,
    ISP_ASN,
    ISP_HOPS,
    ISP_NAME,
    OPEN,
    SELF_RESET,
    TRANSIT_ASN,
    PathLab,
    hop_address,
)
from tests.lab.conftest import require_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", params=[(4, 3, 64), (3, 2, 255)],
                ids=["censor-hop3-ttl64", "censor-hop2-ttl255"])
def path_lab(request: pytest.FixtureRequest) -> Iterator[PathLab]:
    require_lab()
    routers, hop, ttl = request.param
    lab = PathLab.up(routers=routers, censor_hop=hop, censor_ttl=ttl)
    try:
        yield lab
    finally:
        problems = lab.down()
        assert not problems, problems


def _evidence(lab: PathLab, url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    out = lab.probe_json("web", url)
    ev = out["test_keys"]["packet_evidence"]
    assert ev["status"] == "ok", ev
    return ev, out["verdict"]


def _trace(lab: PathLab, url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    out = lab.probe_json("trace", url)
    assert out["test_keys"]["status"] == "ok", out["test_keys"]
    return out["test_keys"], out["verdict"]


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_injected_reset_names_the_censor_s_hop(path_lab: PathLab, scheme: str) -> None:
    layout = path_lab.layout
    ev, verdict = _evidence(path_lab, f"{scheme}://{BLOCKED}/")
    assert ev["injected"] and ev["flows"]
    for flow in ev["flows"]:
        assert (flow["verdict"], flow["terminator"]) == ("injected", "rst")
        assert flow["sender_hop"] == layout.censor_hop
        assert flow["server_hop"] == layout.server_hop
    assert verdict["evidence"] == f"packets.rst_injected.hop{layout.censor_hop}"
    assert (verdict["status"], verdict["blocking"]) == (
        "blocked", "tls" if scheme == "https" else "http-failure")

    keys, tverdict = _trace(path_lab, f"{scheme}://{BLOCKED}/")
    proto = "tls" if scheme == "https" else "http"
    trace = next(t for t in keys["traces"] if t["protocol"] == proto)
    c = trace["conclusion"]
    assert (c["found"], c["action"], c["hop"], c["address"]) == (
        True, "reset", layout.censor_hop, hop_address(layout.censor_hop))
    assert c["sender_hop"] == layout.censor_hop and c["destination_hop"] == layout.server_hop
    # the hop's network, from the control helper's IP database, against the probe's own
    inside = layout.censor_hop <= ISP_HOPS
    assert c["asn"] == f"AS{ISP_ASN if inside else TRANSIT_ASN}"
    assert c["inside_probe_network"] is inside
    assert keys["probe_asn"] == f"AS{ISP_ASN}"
    assert tverdict["status"] == "blocked" and tverdict["reason"] == "trace.reset_at_hop"
    # below the censor the trigger expired like its twin, at the routers the lab built
    for hop in trace["hops"][: layout.censor_hop - 1]:
        assert hop["address"] == hop_address(hop["ttl"])
        assert [p["outcome"] for p in hop["trigger"]] == ["expired"]


def test_injected_dns_answer_names_the_censor_s_hop(path_lab: PathLab) -> None:
    layout = path_lab.layout
    ev, verdict = _evidence(path_lab, f"https://{DNS_BLOCKED}/")
    [query] = [q for q in ev["dns"] if q["verdict"] == "injected"]
    forged = [r for r in query["replies"] if r["verdict"] == "injected"]
    genuine = [r for r in query["replies"] if r["verdict"] == "consistent"]
    assert [r["sender_hop"] for r in forged] == [layout.censor_hop]
    assert [r["sender_hop"] for r in genuine] == [layout.server_hop]
    assert verdict["evidence"] == f"packets.dns_injected.hop{layout.censor_hop}"
    assert (verdict["status"], verdict["blocking"]) == ("blocked", "dns")

    keys, tverdict = _trace(path_lab, f"https://{DNS_BLOCKED}/")
    dns_trace = next(t for t in keys["traces"] if t["protocol"] == "dns")
    c = dns_trace["conclusion"]
    assert (c["found"], c["action"], c["hop"], c["address"]) == (
        True, "answer", layout.censor_hop, hop_address(layout.censor_hop))
    assert tverdict["blocking"] == "dns"


@pytest.mark.parametrize(("host", "evidence"), [
    (SELF_RESET, "packets.server_reset"),  # same TTL as the SYN-ACK
    (DETOUR_RESET, None),  # one hop longer: within what a path change explains, so unsaid
])
def test_the_server_s_own_reset_is_never_called_injected(path_lab: PathLab, host: str,
                                                         evidence: str | None) -> None:
    """The server resets (and for the detour site its reset comes back one hop longer)."""
    ev, verdict = _evidence(path_lab, f"https://{host}/")
    assert ev["flows"] and not ev["injected"]
    assert all(f["verdict"] != "injected" for f in ev["flows"])
    assert all(q["verdict"] != "injected" for q in ev["dns"])
    assert verdict.get("evidence") == evidence
    assert verdict["status"] != "blocked"  # the helper sees the same reset: the site's own
    keys, tverdict = _trace(path_lab, f"https://{host}/")
    tls = next(t for t in keys["traces"] if t["protocol"] == "tls")
    assert tls["conclusion"]["found"] is False
    assert tls["conclusion"]["action"] == "destination"
    assert tverdict["status"] != "blocked"


def test_an_open_site_shows_nothing(path_lab: PathLab) -> None:
    ev, verdict = _evidence(path_lab, f"https://{OPEN}/")
    assert not ev["injected"]
    assert verdict["status"] == "ok" and "evidence" not in verdict
    keys, tverdict = _trace(path_lab, f"https://{OPEN}/")
    assert all(t["conclusion"]["action"] == "none" for t in keys["traces"])
    assert (tverdict["status"], tverdict["reason"]) == ("ok", "trace.no_interference")


def test_trace_command_prints_the_censor_s_hop_and_keeps_the_record(path_lab: PathLab) -> None:
    layout = path_lab.layout
    proc = path_lab.agent_cli("trace", f"https://{BLOCKED}/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = proc.stdout.splitlines()[0]
    assert (f"comes from hop {layout.censor_hop} ({hop_address(layout.censor_hop)}, "
            f"AS{ISP_ASN} {ISP_NAME}), inside the probe's network (AS{ISP_ASN})") in first
    assert "trace.reset_at_hop" in proc.stderr  # the run's own summary: a signed record made
