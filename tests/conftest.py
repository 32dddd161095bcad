"""Fixtures more than one test directory shares.

``make_run``
    ``make run`` (scripts/run_demo.py) run once per session as a user runs it: a whole
    deployment in its own lab and the lab's full scenario campaign.  The make-run test
    (tests/integration/test_run_demo.py) checks its delivery and teardown, the scenario table
    (tests/lab/test_scenarios.py) the agent's verdicts in the same campaign, so the
    campaign is measured once, not twice.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

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
