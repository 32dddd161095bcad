"""``make run`` end to end: scripts/run_demo.py as a user runs it, checked from the outside.

The demo builds the lab, the broker, the collector and an enrolled agent, runs the lab's
campaign and must end with every produced measurement stored (exit 0 and the
``produced N, stored N: produced == stored`` line), the store holding exactly those N, and
nothing of its lab left behind.  The run is the session's ``make_run`` (tests/conftest.py),
whose campaign the scenario table (tests/lab/test_scenarios.py) checks verdict by verdict.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import MakeRun

DELIVERY = re.compile(r"measurements: produced (\d+), stored (\d+): produced == stored")


@pytest.mark.lab
@pytest.mark.slow
def test_make_run_stores_every_measurement(make_run: MakeRun) -> None:
    from lab.lab import default_scenario_files
    from lab.scenarios import load_files

    expected = sum(s.expect is not None for s in load_files(default_scenario_files()).measured)

    out = make_run.output
    assert make_run.returncode == 0, out[-6000:]
    m = DELIVERY.search(out)
    assert m, out[-6000:]
    produced, stored = int(m.group(1)), int(m.group(2))
    assert produced == stored == expected, out[-6000:]

    # the run directory outlives the lab, and its store holds exactly what was produced
    run_dir = make_run.run_dir
    assert (run_dir / "summary.txt").read_text("utf-8").startswith(m.group(0))
    results = (run_dir / "measurements.jsonl").read_text("utf-8").splitlines()
    assert len(results) == produced
    from collector.store import Dimension, open_store

    store = open_store(f"sqlite://{run_dir / 'collector.db'}")
    try:
        assert store.measurement_count() == produced
        by_status = dict(store.count_by(Dimension.VERDICT))
    finally:
        store.close()
    assert by_status.get("blocked", 0) > 0 and by_status.get("ok", 0) > 0, by_status
    assert f"status      blocked {by_status['blocked']}" in out

    # torn down: no namespace, state directory or process of this run's lab is left
    prefix = re.search(r"^lab (vl[0-9a-f]{8}):", out, re.M)
    assert prefix, out[:2000]
    from lab import nsctl

    assert not [ns for ns in nsctl.list_netns() if ns.startswith(prefix.group(1))]
    assert not (nsctl.STATE_ROOT / prefix.group(1)).exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(run_dir) not in ps.stdout


def test_unprivileged_exits_2_with_one_line_reason(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from scripts import run_demo

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert run_demo.main([]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "run as root" in err
