"""``make run`` end to end: scripts/run_demo.py as a user runs it, checked from the outside.

The demo builds the lab, the broker, the collector and an enrolled agent, runs the lab's
campaign and must end with every produced measurement stored (exit 0 and the
``produced N, stored N: produced == stored`` line), the store holding exactly those N, and
nothing of its lab left behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab.preflight import agent_unavailable, lab_unavailable
from tests.lab.conftest import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 240.0  # the demo itself takes ~80 s here; its own waits are all bounded
DELIVERY = re.compile(r"measurements: produced (\d+), stored (\d+): produced == stored")


@pytest.mark.lab
@pytest.mark.slow
def test_make_run_stores_every_measurement(tmp_path: Path) -> None:
    why = lab_unavailable() or agent_unavailable()
    if why:
        skip_or_fail(why)
    from lab.broker import mosquitto_available

    if reason := mosquitto_available():
        skip_or_fail(reason)
    from lab.lab import default_scenario_files
    from lab.scenarios import load_files

    expected = sum(s.expect is not None for s in load_files(default_scenario_files()).measured)

    proc = subprocess.run(
        [sys.executable, "-m", "scripts.run_demo", "--run-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    m = DELIVERY.search(out)
    assert m, out[-6000:]
    produced, stored = int(m.group(1)), int(m.group(2))
    assert produced == stored == expected, out[-6000:]

    # the run directory outlives the lab, and its store holds exactly what was produced
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink()]
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
