"""The lab leaves nothing behind, even after its owner crashed, and parallel runs never collide."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab import nsctl, procinfo
from tests.lab.conftest import require_lab

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
SMALL = """
[[scenario]]
id = "one"
url = "https://one.lab.test/"
censor = ["dns_nxdomain"]
expect = { status = "blocked", blocking = "dns" }

[[scenario]]
id = "two"
url = "http://two.lab.test/"
"""


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL, encoding="utf-8")
    return path


def _leftovers(prefix: str, pids: list[tuple[int, int | None]]) -> list[str]:
    found = [f"netns {n}" for n in nsctl.list_netns() if n.startswith(prefix)]
    if nsctl.ETC_NETNS.exists():
        found += [f"/etc/netns/{p.name}" for p in nsctl.ETC_NETNS.iterdir()
                  if p.name.startswith(prefix)]
    if (nsctl.STATE_ROOT / prefix).exists():
        found.append(str(nsctl.STATE_ROOT / prefix))
    found += [f"process {pid}" for pid, st in pids if procinfo.alive(pid, st)]
    return found


def _pids(state_dir: Path) -> list[tuple[int, int | None]]:
    data = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    return [(p[0], p[1]) for p in data["processes"].values()]


def test_down_leaves_nothing_and_is_idempotent(small_file: Path) -> None:
    require_lab()
    from lab.lab import Lab

    lab = Lab.up([small_file], helper=False, reap=False)
    pids = _pids(lab.dir)
    assert len(pids) >= 6 and all(procinfo.alive(*p) for p in pids)
    lab.down()
    assert _leftovers(lab.prefix, pids) == []
    assert nsctl.teardown(lab.prefix) == []  # a second teardown finds nothing to do
    lab.down()


def test_parallel_labs_do_not_collide(small_file: Path) -> None:
    require_lab()
    from lab.lab import Lab

    first = Lab.up([small_file], helper=False, reap=False)
    try:
        second = Lab.up([small_file], helper=False, reap=False)
        try:
            assert first.prefix != second.prefix
            q = [{"type": "dns", "name": "two.lab.test"}]
            assert first.client("probe", q)[0]["replies"][0]["rcode"] == "NOERROR"
            pids = _pids(second.dir)
            second.down()
            assert _leftovers(second.prefix, pids) == []
            # the first lab is untouched by the second one's teardown
            assert first.client("probe", q)[0]["replies"][0]["rcode"] == "NOERROR"
        finally:
            second.down()
    finally:
        first.down()


CRASHER = """
import os, sys
from lab.lab import Lab
lab = Lab.up([sys.argv[1]], helper=False, reap=False)
print(lab.prefix, flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_a_crashed_owner_is_cleaned_up(small_file: Path) -> None:
    require_lab()
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(small_file)], cwd=str(REPO),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        prefix = proc.stdout.readline().strip()
        assert nsctl.PREFIX_RE.match(prefix), prefix
        pids = _pids(nsctl.STATE_ROOT / prefix)
        assert prefix not in nsctl.stale_prefixes()
    finally:
        proc.send_signal(signal.SIGKILL)  # the owner dies without any cleanup
        proc.wait(timeout=10)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()
    # the servers notice their owner is gone and exit by themselves (bounded)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(procinfo.alive(*p) for p in pids):
        time.sleep(0.1)
    assert not any(procinfo.alive(*p) for p in pids)
    assert prefix in nsctl.stale_prefixes()
    down = subprocess.run([sys.executable, "-m", "lab", "down", "--all-stale"],
                          cwd=str(REPO), capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert down.returncode == 0, down.stderr
    assert f"{prefix}: removed" in down.stdout
    assert _leftovers(prefix, pids) == []


def test_cli_status_lists_labs(lab: Any) -> None:
    out = subprocess.run([sys.executable, "-m", "lab", "status"], cwd=str(REPO),
                         capture_output=True, text=True, timeout=30, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    labs = json.loads(out.stdout)["labs"]
    assert any(x["prefix"] == lab.prefix and not x["stale"] for x in labs)
