"""The throttling truth matrix, one run per cell, by the real agent against the real helper.

Cells (``lab/throttling_matrix.toml``): benign sites 5-300 ms away (a real round trip on every
packet, through the ISP router's delay line), with 0 or 2 % loss, 6 kB and 5 MB pages; servers
slow by themselves; bad lines (5-10 % loss); a probe on a 5 Mbit/s access link; throttles by
SNI and by address at 64 kbit/s, 256 kbit/s and 1 Mbit/s, behind a shaper's short queue, a
policer (no queue) or a deep queue; hosts blocked by DNS, TCP RST and SNI reset.  The rule the
method must never break is checked on every cell: a benign or blocked host is never
``throttled``.  Many runs per cell (false-positive and detection rates) are the benchmark's
job: ``python -m bench.throttling``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.preflight import agent_unavailable
from lab.scenarios import Scenario, load_files
from tests.lab.conftest import require_lab, skip_or_fail

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MATRIX = Path(__file__).resolve().parents[2] / "lab" / "throttling_matrix.toml"
CELLS = load_files([MATRIX]).measured
ACCESS_PREFIX = "access-"
# caps by address 300 ms away behind a short queue, or 150 ms away behind a policer: one flow
# fills 50-80 % of the cap in the time the test gives it, so two flows at once get more than
# one, as two would on a lossy path without a cap; found in about half the runs or more
# (docs/throttling-apps-outages.md, "cannot"), never a false accusation elsewhere
AT_THE_BOUND = {"throttle-ip-256k-r300", "throttle-ip-1m-r300", "throttle-ip-1m-r150-police"}


def test_matrix_covers_every_class() -> None:
    sites = [s.site for s in CELLS if s.expect and s.expect.status == "ok"]
    assert {s.rtt_ms for s in sites} >= {5, 50, 150, 300}
    assert {s.loss_percent for s in sites} >= {0.0, 2.0}
    assert {s.body_bytes for s in sites} >= {6000, 5_000_000}
    assert any(s.rate_kbit for s in sites)
    assert any(s.id.startswith(ACCESS_PREFIX) for s in CELLS)
    rates = {(r.kind, r.param("rate_kbit")) for s in CELLS for r in s.censor}
    for kind in ("sni_throttle", "ip_throttle"):
        assert {(kind, 64), (kind, 256), (kind, 1000)} <= rates
    kinds = {r.kind for s in CELLS for r in s.censor}
    assert {"dns_nxdomain", "tcp_reset", "tls_reset", "http_reset"} <= kinds


def _run(lab: Any, cells: list[Scenario], out: Path) -> dict[str, dict[str, Any]]:
    from lab.lab import _write_list

    lst = out.with_suffix(".csv")
    _write_list(lst, [(s.url, s.category) for s in cells])
    proc = subprocess.run(lab.agent_argv([lst], out, tests="throttling"),
                          env={**os.environ, **lab.agent_env()}, capture_output=True,
                          text=True, timeout=900, check=False)
    if not out.exists():
        pytest.fail(f"agent wrote nothing ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return {r["input"]: r for r in records}


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    require_lab()
    why = agent_unavailable()
    if why:
        skip_or_fail(why)
    from lab.lab import Lab

    lab = Lab.up([MATRIX])
    try:
        if not lab.helper_running:
            skip_or_fail(f"the control helper did not start:\n{lab.log_tail('helper')}")
        tmp = tmp_path_factory.mktemp("matrix")
        normal = [s for s in CELLS if not s.id.startswith(ACCESS_PREFIX)]
        access = [s for s in CELLS if s.id.startswith(ACCESS_PREFIX)]
        got = _run(lab, normal, tmp / "normal.jsonl")
        lab.set_access_rate(5000)
        try:
            got.update(_run(lab, access, tmp / "access.jsonl"))
        finally:
            lab.set_access_rate(None)
        yield got
    finally:
        lab.down()


@pytest.mark.parametrize("cell", CELLS, ids=[s.id for s in CELLS])
def test_cell(records: dict[str, dict[str, Any]], cell: Scenario) -> None:
    rec = records.get(cell.url)
    assert rec is not None, f"no record for {cell.url}"
    verdict, keys = rec["verdict"], rec["test_keys"]
    got = f"{verdict['status']}/{verdict['blocking']} [{verdict['reason']}]"
    assert "benign_rate" in keys and "analysis" in keys
    exp = cell.expect
    assert exp is not None
    if exp.status != "throttled":
        assert verdict["status"] != "throttled", f"{cell.id} ({cell.description}): {got}"
    if exp.status == "ok":
        assert verdict["status"] == "ok", f"{cell.id} ({cell.description}): {got}"
        assert keys["benign_rate"]["rate_bps"], keys["benign_rate"]
    elif exp.status == "blocked":
        assert (verdict["status"], verdict["blocking"]) in (
            ("blocked", exp.blocking), ("inconclusive", None)), f"{cell.id}: {got}"
    elif cell.id in AT_THE_BOUND:
        assert (verdict["status"], verdict["reason"]) in (
            (exp.status, exp.reason), ("ok", "")), f"{cell.id}: {got}"
    else:
        assert (verdict["status"], verdict["reason"]) == (exp.status, exp.reason), (
            f"{cell.id} ({cell.description}): {got}; analysis {keys['analysis']}")
