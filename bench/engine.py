"""Benchmark of the measurement engine, run by hand (never a timed test):

    .venv/bin/python -m bench.engine [--scale 1200] [--concurrency 16 32] [--attach PREFIX]
                                     [--ipv6]

Brings up the namespace lab in scale mode (``--scale`` generated HTTPS sites with 40 ms of
server delay, plus the scenario table's censored ones), then runs the real agent
(``vigil-agent run --once``) in the probe namespace against the real control helper on the
scale list, once per ``--concurrency`` value, and reports URLs/s and the agent's peak RSS (from
``wait4()``: the agent process only, not the lab).  Targets (this 2-core machine):
at least 25 URLs/s and at most 80 MB.  Needs root; nothing leaves the machine (198.18.0.0/15
inside namespaces).  ``--attach`` reuses a lab brought up with
``python -m lab up --scale N``.  ``--ipv6`` makes the lab dual-stack (the IPv6 scenario table
is loaded and every generated site gets an AAAA too): the agent then turns IPv6 on by itself
and measures both families of every site (two DNS queries, two connects and handshakes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

TARGET_RATE = 25.0
TARGET_RSS_MB = 80.0
AGENT_TIMEOUT_S = 900.0


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (fields 14 and 15 of /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    rest = raw[raw.rfind(b")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def _lab_cpu(lab: Any) -> dict[str, float]:
    """CPU seconds used so far by the lab's own processes (sites, helper, DNS, censor): on a
    shared machine they compete with the agent, and the dual-stack run doubles their work."""
    pids = {name: p[0] for name, p in lab.state.data.get("processes", {}).items()}
    child = lab.dir / "helper.child.pid"
    if child.exists():
        with contextlib.suppress(ValueError, IndexError):
            pids["helper"] = int(child.read_text().split()[0])
    out = {}
    for name, pid in pids.items():
        value = _cpu_seconds(pid)
        if value is not None:
            out[name] = value
    return out


def _run_agent(lab: Any, concurrency: int, extra: list[str]) -> dict[str, Any]:
    output = lab.dir / f"bench-{concurrency}.jsonl"
    output.unlink(missing_ok=True)
    argv = lab.agent_argv([lab.scale_list_file], output,
                          extra=["--concurrency", str(concurrency), *extra])
    env = {**os.environ, **lab.agent_env()}
    log = lab.dir / f"bench-{concurrency}.stderr"
    lab_cpu_before = _lab_cpu(lab)
    started = time.perf_counter()
    with open(log, "w") as err:  # a file, not a pipe: one log line per URL would fill a pipe
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                stdin=subprocess.DEVNULL)
    # `ip netns exec` execs the agent in place, so wait4() on this pid is the agent itself.
    deadline = started + AGENT_TIMEOUT_S
    status = rusage = None
    while time.perf_counter() < deadline:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if rusage is None or status is None or pid != proc.pid:
        proc.kill()
        proc.wait()
        raise SystemExit(f"agent did not finish within {AGENT_TIMEOUT_S} s")
    proc.returncode = os.waitstatus_to_exitcode(status)
    lab_cpu_after = _lab_cpu(lab)
    lab_cpu = {name: round(lab_cpu_after[name] - lab_cpu_before.get(name, 0.0), 1)
               for name in lab_cpu_after if lab_cpu_after[name] - lab_cpu_before.get(name, 0.0)
               >= 0.1}
    stderr = log.read_text(errors="replace")
    records = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    statuses = Counter(r["verdict"]["status"] for r in records)
    runtimes = sorted(r["test_runtime"] for r in records)
    summary = [line for line in stderr.splitlines() if line.startswith("measured ")]
    return {
        "concurrency": concurrency,
        "exit": proc.returncode,
        "urls": len(records),
        "seconds": round(elapsed, 2),
        "urls_per_s": round(len(records) / elapsed, 1),
        "agent_peak_rss_mb": round(rusage.ru_maxrss / 1024, 1),
        "agent_cpu_s": round(rusage.ru_utime + rusage.ru_stime, 1),
        "verdicts": dict(statuses),
        "median_runtime_s": runtimes[len(runtimes) // 2] if runtimes else None,
        "p95_runtime_s": runtimes[int(len(runtimes) * 0.95)] if runtimes else None,
        "agent_summary": summary[-1] if summary else stderr.strip().splitlines()[-3:],
        "lab_cpu_s": lab_cpu,
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "urls_with_ipv6_connects": sum(
            any(":" in c.get("ip", "") for c in r["test_keys"].get("tcp_connect", []))
            for r in records
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1200, help="generated sites (default 1200)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16],
                        help="agent --concurrency values to measure (default 16)")
    parser.add_argument("--attach", metavar="PREFIX", help="use a lab that is already up")
    parser.add_argument("--ipv6", action="store_true",
                        help="dual-stack lab: every generated site has an IPv6 address too")
    parser.add_argument("--agent-arg", action="append", default=[],
                        help="extra argument for `vigil-agent run` (repeatable)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench.engine needs root (network namespaces)", file=sys.stderr)
        return 2
    from lab import Lab
    from lab.lab import DUAL_STACK_SCENARIO_FILE, LAB_DIR, default_scenario_files

    files = default_scenario_files()
    if args.ipv6:
        files.append(LAB_DIR / DUAL_STACK_SCENARIO_FILE)
    lab = Lab.attach(args.attach) if args.attach else Lab.up(files, scale=args.scale)
    try:
        if not lab.plan.scale_hosts:
            print("this lab has no scale sites (python -m lab up --scale N)",
                  file=sys.stderr)
            return 2
        results = [_run_agent(lab, c, list(args.agent_arg)) for c in args.concurrency]
    finally:
        if not args.attach:
            lab.down()
    for r in results:
        r["dual_stack"] = lab.plan.ipv6
        r["meets_targets"] = (r["urls_per_s"] >= TARGET_RATE
                              and r["agent_peak_rss_mb"] <= TARGET_RSS_MB
                              and r["verdicts"].get("ok", 0) == r["urls"])
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
