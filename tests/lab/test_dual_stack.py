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
