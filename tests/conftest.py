"""Fixtures more than one test directory shares.

``make_run``
    ``make run`` (scripts/run_demo.py) run once per session as a user runs it: a whole
    deployment in its own lab and the lab's full scenario campaign.  The make-run test
    (tests/lab/test_run_demo.py) checks its delivery and teardown, the scenario table
    (tests/lab/test_scenarios.py) the agent's verdicts in the same campaign, so the
    campaign is measured once, not twice.

Under pytest-xdist (``make test``: ``-n 2``) every test under tests/lab/ is one unit of work, so
one worker runs them all, one at a time, in file order: they share the session's lab and
``make_run``, and the lab's shaped links must not time transfers while another lab test loads
them.  The other worker takes the other test modules, one module at a time, and the path lab
(tests/lab/test_packet_evidence.py: a lab of its own, no shaped link, no rate measured).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.reports import REPORTS

REPO = Path(__file__).resolve().parents[1]
MAKE_RUN_TIMEOUT_S = 240.0  # the demo itself takes ~95 s here; its own waits are all bounded


@dataclass(frozen=True)
class MakeRun:
    returncode: int
    output: str  # stdout then stderr
    base: Path  # the --run-dir it was given

    @property
    def run_dir(self) -> Path:
        """The one run directory the demo made under ``base`` (``latest`` is a symlink)."""
        (run_dir,) = [p for p in self.base.iterdir() if p.is_dir() and not p.is_symlink()]
        return run_dir


@pytest.fixture(scope="session")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> MakeRun:
    """Skips without root, namespaces, the agent or Mosquitto, except under CI=true (fails)."""
    from lab.broker import mosquitto_available
    from lab.preflight import agent_unavailable, lab_unavailable
    from tests.lab.conftest import skip_or_fail

    why = lab_unavailable() or agent_unavailable() or mosquitto_available()
    if why:
        skip_or_fail(why)
    base = tmp_path_factory.mktemp("make-run")
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.run_demo", "--run-dir", str(base)],
        cwd=REPO, capture_output=True, text=True, timeout=MAKE_RUN_TIMEOUT_S, check=False,
        stdin=subprocess.DEVNULL,
    )
    return MakeRun(proc.returncode, proc.stdout + proc.stderr, base)


LAB_NODES = "tests/lab/"
# lab modules that build a lab of their own and shape no link (the path lab: hops, TTLs and
# injected packets, no rates): a unit of their own, beside the shared lab's tests
OWN_LAB_MODULES = ("tests/lab/test_packet_evidence.py",)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist: every test under tests/lab/ is one unit of work, run by one worker
    in file order; every other test module is a unit of its own (as ``--dist loadscope``)."""
    from xdist.scheduler import LoadScopeScheduling

    class LabTogether(LoadScopeScheduling):  # type: ignore[misc]  # xdist is untyped
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            if module.startswith(LAB_NODES) and module not in OWN_LAB_MODULES:
                return LAB_NODES
            return module

    return LabTogether(config, log)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands the lab's reports to the controller, which prints them."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["vigil_lab_reports"] = list(REPORTS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    REPORTS.extend(getattr(node, "workeroutput", {}).get("vigil_lab_reports", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for text in REPORTS:
        terminalreporter.write_sep("=", "vigil lab: agent vs scenario table")
        for line in text.splitlines():
            terminalreporter.write_line(line)
