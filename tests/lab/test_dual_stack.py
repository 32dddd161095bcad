"""IPv6: a dual-stack lab (probe, ISP and sites in 2001:2::/48 beside 198.18.0.0/15) and the
IPv6 scenario table, measured by the real agent, which turns IPv6 on by itself because the
probe's namespace has a global IPv6 route (as a happy-eyeballs browser would use it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from lab.lab import DUAL_STACK_SCENARIO_FILE, LAB_DIR
from lab.preflight import agent_unavailable
from lab.scenarios import load_files
from tests.lab.conftest import add_report, require_lab, skip_or_fail

pytestmark = pytest.mark.lab

FILE = LAB_DIR / DUAL_STACK_SCENARIO_FILE
MEASURED = load_files([FILE]).measured


@pytest.fixture(scope="module")
def dual_lab() -> Iterator[Any]:
    require_lab()
    from lab.lab import Lab

    built = Lab.up([FILE])
    try:
        yield built
    finally:
        built.down()


@pytest.fixture(scope="module")
def report(dual_lab: Any) -> Any:
    why = agent_unavailable()
    if why:
        skip_or_fail(why)
    if not dual_lab.helper_running:
        skip_or_fail(f"the control helper did not start:\n{dual_lab.log_tail('helper')}")
    from lab.runner import run_scenarios

    result = run_scenarios(dual_lab)
    add_report("dual-stack lab (2001:2::/48)\n" + result.render())
    return result


def test_the_probe_namespace_is_dual_stack(dual_lab: Any) -> None:
    proc = dual_lab.run_in("probe", ["ip", "-6", "route", "show", "default"])
    assert "via 2001:2:0:1::1" in proc.stdout
    # and nothing in it can route outside the lab's prefixes
    proc = dual_lab.run_in("isp", ["nft", "list", "chain", "inet", "vigil_censor",
                                   "forward_filter"])
    assert "ip6 daddr != 2001:2::/48 reject" in proc.stdout


def test_agent_measured_both_families(report: Any) -> None:
    (outcome,) = [o for o in report.outcomes if o.scenario.id == "v6-dual-ok"]
    assert outcome.record is not None
    tk = outcome.record["test_keys"]
    assert {q["query_type"] for q in tk["queries"]} == {"A", "AAAA"}
    ips = {c["ip"] for c in tk["tcp_connect"]}
    assert any(":" in ip for ip in ips) and any("." in ip for ip in ips), json.dumps(ips)


@pytest.mark.parametrize("scenario", MEASURED, ids=[s.id for s in MEASURED])
def test_scenario(report: Any, scenario: Any) -> None:
    (outcome,) = [o for o in report.outcomes if o.scenario.id == scenario.id]
    exp = scenario.expect
    want = f"{exp.status}/{exp.blocking}" + (f" [{exp.reason}]" if exp.reason else "")
    assert outcome.record is not None, f"{scenario.url}: {outcome.problem}"
    got = f"{outcome.status}/{outcome.blocking} [{outcome.reason}]"
    assert outcome.right, f"{scenario.id} ({scenario.description}): expected {want}, got {got}"


def test_records_name_the_resolver_egress_and_both_countries(report: Any) -> None:
    """The ISP resolver (198.18.1.53 to the probe) leaves from its uplink address 198.18.0.1:
    the helper's DNS whoami zone sees that, not the address in the probe's resolv.conf."""
    from lab import addressing as A

    records = [o.record for o in report.outcomes if o.record is not None]
    assert records
    for record in records:
        assert record["resolver_ip"] == A.ISP_UPLINK
        assert record["resolver_ip"] != A.ISP_RESOLVER
        assert (record["resolver_asn"], record["resolver_network_name"]) == ("AS64500", "Lab ISP")
        assert (record["probe_cc"], record["probe_registration_cc"]) == ("IR", "IR")


# ---- the IPv6 censor on the wire, with the lab's own client (independent of the agent) ----
def _v6(dual_lab: Any, host: str) -> str:
    address = dual_lab.plan.site(host).address6
    assert address is not None
    return str(address)


def test_ipv6_address_drop_only_from_the_probe(dual_lab: Any) -> None:
    ip = _v6(dual_lab, "only-drop.v6.lab.test")
    out = dual_lab.clients({"probe": [{"type": "tcp", "ip": ip, "port": 443, "timeout": 2}],
                            "inet": [{"type": "tcp", "ip": ip, "port": 443, "timeout": 2}]})
    assert out["probe"][0]["error"] == "timeout"
    assert out["inet"][0]["error"] is None


def test_ipv6_sni_reset_spares_other_names(dual_lab: Any) -> None:
    host = "only-sni.v6.lab.test"
    ip = _v6(dual_lab, host)
    censored, other = dual_lab.client("probe", [
        {"type": "tls", "ip": ip, "sni": host, "timeout": 3},
        {"type": "tls", "ip": ip, "sni": "only.v6.lab.test", "timeout": 3},
    ])
    assert censored["error"] == "connection_reset" and censored["t"] < 1.0
    assert other["error"] is None


def test_broken_ipv6_path_is_an_icmp_error_not_a_timeout(dual_lab: Any) -> None:
    ip = _v6(dual_lab, "path.v6.lab.test")
    probe = dual_lab.client("probe", [{"type": "tcp", "ip": ip, "port": 443, "timeout": 4}])[0]
    # Linux reports the ICMPv6 error after one SYN retransmission (~1 s), well before a timeout
    assert probe["error"] in ("enetunreach", "ehostunreach"), probe
