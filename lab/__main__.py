"""``python -m lab up|down|status|run|exec|shutdown|restore`` (see lab/README.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lab import nsctl
from lab.lab import Lab, default_scenario_files
from lab.nsctl import LabError, State


def _labs() -> list[State]:
    if not nsctl.STATE_ROOT.exists():
        return []
    return [State.load(d.name) for d in sorted(nsctl.STATE_ROOT.iterdir())
            if nsctl.PREFIX_RE.match(d.name)]


def cmd_up(args: argparse.Namespace) -> int:
    lab = Lab.up(args.scenarios or None, scale=args.scale, detached=True,
                 lifetime_s=args.lifetime, helper=not args.no_helper)
    lab.state.record("session", os.getsid(0))
    print(json.dumps(lab.status(), indent=1))
    print(f"\nlab {lab.prefix} is up; run things inside with:\n"
          f"  python -m lab exec {lab.prefix} probe -- <command>\n"
          f"tear it down with: python -m lab down {lab.prefix}", file=sys.stderr)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    prefixes: list[str] = []
    if args.all_stale:
        prefixes += nsctl.stale_prefixes()
    if args.prefix:
        prefixes.append(args.prefix)
    elif not args.all_stale:
        env = os.environ.get("VIGIL_LAB")
        if env:
            prefixes.append(env)
        else:  # labs this terminal session brought up with `up`, and nobody else's
            mine = [s.prefix for s in _labs() if s.data.get("session") == os.getsid(0)
                    and s.owner is None]
            if not mine:
                others = ", ".join(s.prefix for s in _labs()) or "none"
                print(f"no lab started from this session; give a prefix (labs: {others}) "
                      "or --all-stale", file=sys.stderr)
                return 0
            prefixes += mine
    failed = 0
    for prefix in sorted(set(prefixes)):
        problems = nsctl.teardown(prefix)
        print(f"{prefix}: " + ("removed" if not problems else "; ".join(problems)))
        failed += bool(problems)
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.prefix:
        print(json.dumps(Lab.attach(args.prefix).status(), indent=1))
        return 0
    rows = []
    for s in _labs():
        rows.append({"prefix": s.prefix, "owner": s.owner, "ready": s.data.get("ready"),
                     "stale": s.is_stale(),
                     "age_s": round(time.time() - float(s.data.get("created", 0)))})
    print(json.dumps({"labs": rows, "stale": nsctl.stale_prefixes()}, indent=1))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lab.runner import run_scenarios

    # a kept lab must outlive this process: detached from the start (its servers would
    # otherwise see their owner exit and stop)
    lab = Lab.up(args.scenarios or None, helper=True, detached=args.keep)
    try:
        report = run_scenarios(lab)
        print(report.render())
        return 0 if report.right == report.total else 1
    finally:
        if args.keep:
            lab.state.record("session", os.getsid(0))
            print(f"kept lab {lab.prefix} (python -m lab down {lab.prefix})")
        else:
            lab.down()


def cmd_exec(args: argparse.Namespace) -> int:
    lab = Lab.attach(args.prefix)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise LabError("exec needs a command after --")
    env = {**os.environ, **lab.agent_env()}
    os.execvpe("ip", lab.exec_argv(args.role, argv), env)


def cmd_shutdown(args: argparse.Namespace) -> int:
    lab = Lab.attach(args.prefix)
    lab.shutdown()
    if args.duration:
        time.sleep(min(args.duration, 3600))
        lab.restore()
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    Lab.attach(args.prefix).restore()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    files = ", ".join(p.name for p in default_scenario_files())
    up = sub.add_parser("up", help="build a detached lab and print where everything is")
    up.add_argument("--scenarios", nargs="*", type=Path, help=f"TOML files (default: {files})")
    up.add_argument("--scale", type=int, default=0, help="also serve N generated sites")
    up.add_argument("--lifetime", type=float, default=None, help="seconds before self-destruct")
    up.add_argument("--no-helper", action="store_true", help="do not start the control helper")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="tear down a lab (idempotent)")
    down.add_argument("prefix", nargs="?")
    down.add_argument("--all-stale", action="store_true",
                      help="also remove leftovers of runs whose owner died")
    down.set_defaults(func=cmd_down)
    st = sub.add_parser("status", help="list labs, or show one")
    st.add_argument("prefix", nargs="?")
    st.set_defaults(func=cmd_status)
    run = sub.add_parser("run", help="up, run every scenario through the agent, report, down")
    run.add_argument("--scenarios", nargs="*", type=Path)
    run.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    run.set_defaults(func=cmd_run)
    ex = sub.add_parser("exec", help="run a command inside one of a lab's namespaces")
    ex.add_argument("prefix")
    ex.add_argument("role", choices=nsctl.ROLES)
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)
    sh = sub.add_parser("shutdown", help="cut the ISP's uplink (optionally restore after S s)")
    sh.add_argument("prefix")
    sh.add_argument("--for", dest="duration", type=float, default=0.0)
    sh.set_defaults(func=cmd_shutdown)
    rs = sub.add_parser("restore", help="restore the ISP's uplink")
    rs.add_argument("prefix")
    rs.set_defaults(func=cmd_restore)
    args = ap.parse_args(argv)
    try:
        return int(args.func(args))
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
