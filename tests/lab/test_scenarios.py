"""The scenario table, measured by the real agent against the real control helper.

One agent invocation measures every scenario (plus a short one for the rows whose control
must fail); each row is then its own test, so a wrong verdict names the scenario and what the
agent recorded.  The confusion table is printed at the end of the session.
"""

from __future__ import annotations

from typing import Any

import pytest

from lab.lab import default_scenario_files
from lab.preflight import agent_unavailable
from lab.scenarios import load_files
from tests.lab.conftest import add_report, skip_or_fail

pytestmark = pytest.mark.lab

MEASURED = load_files(default_scenario_files()).measured


@pytest.fixture(scope="module")
def report(lab: Any) -> Any:
    why = agent_unavailable()
    if why:
        skip_or_fail(why)
    if not lab.helper_running:
        skip_or_fail(f"the control helper did not start:\n{lab.log_tail('helper')}")
    from lab.runner import run_scenarios

    result = run_scenarios(lab)
    add_report(result.render())
    return result


def test_table_is_big_enough() -> None:
    assert len(MEASURED) >= 25
    kinds = {r.kind for s in MEASURED for r in s.censor}
    assert {"dns_nxdomain", "dns_bogon", "dns_blockpage", "dns_inject", "tcp_drop",
            "tcp_reset", "tls_reset", "tls_drop", "http_blockpage"} <= kinds
    benign = {s.site.kind for s in MEASURED if not s.censor}
    assert {"normal", "slow", "dynamic", "cdn", "down-refused"} <= benign


def test_agent_ran_cleanly(report: Any) -> None:
    for run in report.runs:
        statuses = {o.status for o in report.outcomes if o.scenario.id in run.scenarios}
        # a run that learnt nothing (every verdict inconclusive: the control helper is down)
        # exits 1 on purpose, naming the problem; any other run exits 0
        allowed = {0, 1} if statuses == {"inconclusive"} else {0}
        assert run.returncode in allowed, f"agent exit {run.returncode}:\n{run.stderr_tail}"


@pytest.mark.parametrize("scenario", MEASURED, ids=[s.id for s in MEASURED])
def test_scenario(report: Any, scenario: Any) -> None:
    (outcome,) = [o for o in report.outcomes if o.scenario.id == scenario.id]
    exp = scenario.expect
    want = f"{exp.status}/{exp.blocking}" + (f" [{exp.reason}]" if exp.reason else "")
    assert outcome.record is not None, f"{scenario.url}: {outcome.problem}"
    got = f"{outcome.status}/{outcome.blocking} [{outcome.reason}]"
    assert outcome.right, f"{scenario.id} ({scenario.description}): expected {want}, got {got}"
