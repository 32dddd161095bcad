"""Throttling benchmark on the namespace lab's truth matrix (run by hand as root, never in tests):

    .venv/bin/python -m bench.throttling [--benign-runs 16] [--throttled-runs 10]
                                         [--blocked-runs 3] [--max-minutes 40] [--out FILE]

Builds a lab from ``lab/throttling_matrix.toml`` (benign sites 5-300 ms away with 0 or 2 %
loss and 6 kB or 5 MB pages, servers slow by themselves, a 5 Mbit/s access link, throttles by
SNI and by address at 64 kbit/s, 256 kbit/s and 1 Mbit/s, hosts blocked by DNS, TCP RST and SNI
reset) and runs the real agent (``vigil-agent run --once --tests throttling``) in the probe's
namespace against the real control helper and its bulk endpoint, as a volunteer would, many
times over every cell.  Each agent invocation measures one pass over the cells (one at a time,
as the agent does); cells whose id starts with ``access-`` are measured in passes of their own
with the probe's access link shaped to 5 Mbit/s.

Reports, as one JSON document: false positives (a benign cell called ``throttled``) over every
benign run and per cell; detection per throttled cell (``throttled`` with the right reason);
what blocked hosts got (their blocking, inconclusive, never throttled); bytes and seconds per
target (median, max); the benign rate the probe measured on the helper's path; and the
machine's load average before and after (the machine is shared: timings are noisy).
``--agent-path DIR`` puts another checkout's ``agent`` package first on the agent's path, to
measure an older version of the method on the same matrix.  Nothing leaves the namespaces.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MATRIX = REPO / "lab" / "throttling_matrix.toml"
ACCESS_PREFIX = "access-"
ACCESS_KBIT = 5000
AGENT_TIMEOUT_S = 1200.0


def truth_of(scenario: Any) -> str:
    exp = scenario.expect
    if exp.status == "throttled":
        return "throttled"
    if exp.status == "blocked":
        return "blocked"
    return "benign"


def run_pass(lab: Any, scenarios: list[Any], workdir: Path, tag: str,
             agent_path: str | None) -> list[dict[str, Any]]:
    """One agent invocation over ``scenarios``; one row per record."""
    from lab.lab import _write_list

    lst = workdir / f"{tag}.csv"
    out = workdir / f"{tag}.jsonl"
    _write_list(lst, [(s.url, s.category) for s in scenarios])
    env = {**os.environ, **lab.agent_env()}
    argv = lab.agent_argv([lst], out, tests="throttling")
    if agent_path:
        argv = _with_agent_from(argv, agent_path)
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env,
                          capture_output=True, text=True, timeout=AGENT_TIMEOUT_S, check=False)
    if not out.exists():
        raise SystemExit(f"{tag}: agent failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    by_url = {s.url: s for s in scenarios}
    rows = []
    for line in out.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        s = by_url.get(rec["input"])
        if s is None:
            continue
        v, tk = rec["verdict"], rec.get("test_keys") or {}
        benign = tk.get("benign_rate") or {}
        address = (tk.get("analysis") or {}).get("address") or {}
        sni = (tk.get("analysis") or {}).get("sni") or {}
        paces = [f["pace_ratio"] for f in address.get("figures", [])
                 if f.get("pace_ratio") is not None]
        rows.append({
            "id": s.id, "truth": truth_of(s), "expect": [s.expect.status, s.expect.reason],
            "status": v["status"], "blocking": v.get("blocking"), "reason": v.get("reason"),
            # the measurement itself, without the wait for the agent's one-at-a-time lock
            "bytes": int(tk.get("bytes_total", 0)),
            "seconds": float(tk.get("measurement_seconds", rec.get("test_runtime", 0))),
            "benign_bps": benign.get("rate_bps"),
            # how close the address transfers came to "paced" (sustained / (IW per RTT))
            "pace_ratio_min": min(paces) if paces else None,
            "address_why": address.get("why"),
            "parallel_ratio": (address.get("parallel") or {}).get("ratio"),
            "sni_decision": sni.get("decision"),
            "sni_why": sni.get("why"),
            "sni_ratio": sni.get("ratio"),
            "sni_round_ratios": sni.get("round_ratios"),
        })
    tally: dict[str, int] = {}
    for r in rows:
        key = f"{r['truth']}->{r['status']}"
        tally[key] = tally.get(key, 0) + 1
    print(f"  {tag}: {len(rows)} records in {time.monotonic() - t0:.0f} s {tally}",
          file=sys.stderr, flush=True)
    return rows


_OTHER_AGENT = (
    "import sys\n"
    "sys.meta_path[:] = [f for f in sys.meta_path\n"
    "                    if not str(getattr(f, '__module__', '')).startswith('__editable__')]\n"
    "sys.path[:] = [{path!r}] + [p for p in sys.path if p not in ('', '.')] + [{repo!r}]\n"
    "sys.argv[0] = 'vigil-agent'\n"
    "from agent.cli.main import main\n"
    "sys.exit(main())\n"
)


def _with_agent_from(argv: list[str], agent_path: str) -> list[str]:
    """The same agent command, importing the ``agent`` package from another checkout."""
    i = next(i for i, a in enumerate(argv) if a.endswith("vigil-agent"))
    code = _OTHER_AGENT.format(path=str(Path(agent_path).resolve()), repo=str(REPO))
    return [*argv[:i], sys.executable, "-c", code, *argv[i + 1:]]


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    cells: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault(r["id"], []).append(r)
    benign = [r for r in rows if r["truth"] == "benign"]
    throttled = [r for r in rows if r["truth"] == "throttled"]
    blocked = [r for r in rows if r["truth"] == "blocked"]

    def counts(rs: list[dict[str, Any]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in rs:
            key = f"{r['status']}:{r['reason'] or '-'}"
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))

    per_cell = {}
    for cid, rs in sorted(cells.items()):
        truth = rs[0]["truth"]
        entry: dict[str, Any] = {"truth": truth, "runs": len(rs), "verdicts": counts(rs),
                                 "bytes": _stats([r["bytes"] for r in rs]),
                                 "seconds": _stats([r["seconds"] for r in rs])}
        if truth == "benign":
            entry["false_positives"] = sum(r["status"] == "throttled" for r in rs)
        elif truth == "throttled":
            entry["detected"] = sum(r["status"] == "throttled" and r["reason"] == r["expect"][1]
                                    for r in rs)
        per_cell[cid] = entry

    def detection(pred: Any) -> dict[str, Any]:
        rs = [r for r in throttled if pred(r["id"])]
        hit = sum(r["status"] == "throttled" and r["reason"] == r["expect"][1] for r in rs)
        return {"runs": len(rs), "detected": hit,
                "rate": None if not rs else round(hit / len(rs), 4)}

    rates = [r["benign_bps"] for r in rows if r["benign_bps"] and not r["id"].startswith(
        ACCESS_PREFIX)]
    margins = {}
    for cid, rs in cells.items():
        seen = [r["pace_ratio_min"] for r in rs if r.get("pace_ratio_min") is not None]
        if seen and rs[0]["truth"] == "benign":
            margins[cid] = round(min(seen), 4)
    return {
        "benign": {"runs": len(benign), "cells": len({r["id"] for r in benign}),
                   "false_positives": sum(r["status"] == "throttled" for r in benign),
                   "verdicts": counts(benign)},
        "detection": {
            "sni": detection(lambda i: i.startswith("throttle-sni-")),
            "address": detection(lambda i: i.startswith("throttle-ip-")),
            "address_5ms": detection(lambda i: i.startswith("throttle-ip-") and i.endswith("r5")),
            "address_50ms": detection(lambda i: i.startswith("throttle-ip-")
                                      and i.endswith("r50")),
        },
        "blocked": {"runs": len(blocked), "throttled": sum(r["status"] == "throttled"
                                                            for r in blocked),
                    "verdicts": counts(blocked)},
        "cost_per_target": {
            "benign": {"bytes": _stats([r["bytes"] for r in benign]),
                       "seconds": _stats([r["seconds"] for r in benign])},
            "throttled": {"bytes": _stats([r["bytes"] for r in throttled]),
                          "seconds": _stats([r["seconds"] for r in throttled])},
        },
        "helper_path_benign_bps": _stats([float(x) for x in rates]),
        # the lowest pace ratio a benign cell's address transfers showed (paced: under 0.35)
        "benign_lowest_pace_ratio": dict(sorted(margins.items(), key=lambda kv: kv[1])),
        "cells": per_cell,
    }


def _keep(path: Path | None, rows: list[dict[str, Any]]) -> None:
    if path is not None:
        with open(path, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benign-runs", type=int, default=16, help="runs per benign cell")
    ap.add_argument("--throttled-runs", type=int, default=10, help="runs per throttled cell")
    ap.add_argument("--blocked-runs", type=int, default=3, help="runs per blocked cell")
    ap.add_argument("--max-minutes", type=float, default=40.0,
                    help="start no new pass after this long (the report says what ran)")
    ap.add_argument("--agent-path", default=None,
                    help="import the agent from this checkout instead (an older method)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--cells", default=None,
                    help="only the cells whose id matches one of these shell patterns "
                         "(fnmatch, comma-separated)")
    ap.add_argument("--rows", type=Path, default=None,
                    help="append every run's row (JSON lines) here as the benchmark goes")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("the benchmark builds a namespace lab: run it as root", file=sys.stderr)
        return 2
    from lab.lab import Lab

    started = time.monotonic()
    load_before = os.getloadavg()
    lab = Lab.up([MATRIX])
    rows: list[dict[str, Any]] = []
    passes = 0
    stopped_early = False
    try:
        measured = [s for s in lab.scenarios.measured
                    if args.cells is None or any(fnmatch.fnmatchcase(s.id, p)
                                                 for p in args.cells.split(","))]
        if not measured:
            raise SystemExit(f"no cell matches {args.cells!r}")
        normal = [s for s in measured if not s.id.startswith(ACCESS_PREFIX)]
        access = [s for s in measured if s.id.startswith(ACCESS_PREFIX)]
        wanted = {"benign": args.benign_runs, "throttled": args.throttled_runs,
                  "blocked": args.blocked_runs}
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for rep in range(max(wanted.values())):
                if time.monotonic() - started > args.max_minutes * 60:
                    stopped_early = True
                    break
                cells = [s for s in normal if rep < wanted[truth_of(s)]]
                if cells:
                    got = run_pass(lab, cells, work, f"pass-{rep}", args.agent_path)
                    rows += got
                    _keep(args.rows, got)
                    passes += 1
                if access and rep < args.benign_runs:
                    lab.set_access_rate(ACCESS_KBIT)
                    try:
                        got = run_pass(lab, access, work, f"access-{rep}", args.agent_path)
                    finally:
                        lab.set_access_rate(None)
                    rows += got
                    _keep(args.rows, got)
                    passes += 1
    finally:
        lab.down()
    report = {
        "matrix": str(MATRIX.relative_to(REPO)),
        "passes": passes,
        "stopped_early": stopped_early,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        **summarise(rows),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
