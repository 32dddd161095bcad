"""The scenario table, measured by the real agent against the real control helper.

The campaign is ``make run``'s (the session's ``make_run``, tests/conftest.py): its agent
measures every scenario (plus a short run for the rows whose control must fail) in a lab of
its own, and the demo keeps each row's verdict in its run directory (``scenarios.json``).
Each row is then its own test, so a wrong verdict names the scenario and what the agent
recorded; the expectations come from the scenario files, never from the demo.  The confusion
table is printed at the end of the session.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from lab.lab import default_scenario_files
from lab.scenarios import load_files
from tests.conftest import MakeRun
from tests.lab.conftest import add_report

pytestmark = pytest.mark.lab

MEASURED = load_files(default_scenario_files()).measured


@pytest.fixture(scope="module")
def report(make_run: MakeRun) -> Any:
    from lab.runner import Report

    path = make_run.run_dir / "scenarios.json"
    if not path.exists():
        pytest.fail(f"make run kept no verdicts (exit {make_run.returncode}):\n"
                    f"{make_run.output[-6000:]}")
    result = Report.from_json(json.loads(path.read_text("utf-8")), MEASURED)
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
