"""Run the real agent over the scenario table and compare its verdicts with the truth.

All scenarios that can share an agent invocation do (one run per distinct test name, control
mode and event timeline; normally a single run).  Expectations come from the scenario files
only; this module never looks at what the agent said before deciding what is right.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import addressing as A
from lab.lab import Lab
from lab.scenarios import Event, Scenario

AGENT_TIMEOUT_S = 240.0
DEAD_CONTROL_URL = f"http://{A.HELPER_ADDR}:9"  # nothing listens there: the control fails


@dataclass(frozen=True, slots=True)
class Outcome:
    scenario: Scenario
    status: str | None
    blocking: str | None
    reason: str | None
    confirmed: bool | None
    record: dict[str, Any] | None
    problem: str | None = None  # missing record, unparsable output, agent crash...

    @property
    def right(self) -> bool:
        exp = self.scenario.expect
        if exp is None or self.record is None:
            return False
        if (self.status, self.blocking) != (exp.status, exp.blocking):
            return False
        if exp.interference is not None and exp.interference != self.interference:
            return False
        return exp.reason is None or exp.reason == self.reason

    @property
    def interference(self) -> str | None:
        verdict = (self.record or {}).get("verdict")
        return verdict.get("interference") if isinstance(verdict, dict) else None

    @property
    def expected_label(self) -> str:
        exp = self.scenario.expect
        return "?" if exp is None else label(exp.status, exp.blocking)

    @property
    def got_label(self) -> str:
        return "(missing)" if self.record is None else label(self.status, self.blocking)


@dataclass
class AgentRun:
    argv: list[str]
    scenarios: list[str]
    returncode: int | None
    seconds: float
    stderr_tail: str
    output: Path


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    runs: list[AgentRun] = field(default_factory=list)

    @property
    def right(self) -> int:
        return sum(o.right for o in self.outcomes)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def wrong(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.right]

    def to_json(self) -> dict[str, Any]:
        """Everything the report holds, as JSON (``make run`` keeps it in its run directory)."""
        return {
            "runs": [{"argv": r.argv, "scenarios": r.scenarios, "returncode": r.returncode,
                      "seconds": r.seconds, "stderr_tail": r.stderr_tail,
                      "output": str(r.output)} for r in self.runs],
            "outcomes": [{"scenario": o.scenario.id, "status": o.status,
                          "blocking": o.blocking, "reason": o.reason,
                          "confirmed": o.confirmed, "record": o.record, "problem": o.problem}
                         for o in self.outcomes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], scenarios: Sequence[Scenario]) -> Report:
        """The report :meth:`to_json` wrote, its rows matched to ``scenarios`` by id (the
        expectations come from the scenario files, never from the JSON)."""
        by_id = {s.id: s for s in scenarios}
        report = cls()
        for r in data["runs"]:
            report.runs.append(AgentRun(argv=list(r["argv"]), scenarios=list(r["scenarios"]),
                                        returncode=r["returncode"], seconds=r["seconds"],
                                        stderr_tail=r["stderr_tail"], output=Path(r["output"])))
        for o in data["outcomes"]:
            report.outcomes.append(Outcome(
                by_id[o["scenario"]], status=o["status"], blocking=o["blocking"],
                reason=o["reason"], confirmed=o["confirmed"], record=o["record"],
                problem=o["problem"]))
        return report

    def render(self) -> str:
        lines = [f"lab scenarios: {self.right}/{self.total} right"]
        for run in self.runs:
            lines.append(f"  agent run: {len(run.scenarios)} URLs, exit {run.returncode}, "
                         f"{run.seconds:.1f}s")
        lines.append("")
        lines.append(confusion_table(self.outcomes))
        if self.wrong:
            lines.append("")
            lines.append("wrong or missing (expected -> recorded):")
            for o in self.wrong:
                exp = o.scenario.expect
                want = f"{o.expected_label}" + (f" [{exp.reason}]" if exp and exp.reason else "")
                got = o.problem or f"{o.got_label} [{o.reason}]"
                lines.append(f"  {o.scenario.id:<24} {o.scenario.url:<44} {want:<36} -> {got}")
        for run in self.runs:
            if run.returncode != 0 and run.stderr_tail:
                lines.append("")
                lines.append(f"agent stderr (exit {run.returncode}):\n{run.stderr_tail}")
        return "\n".join(lines)


def label(status: str | None, blocking: str | None) -> str:
    if status is None:
        return "(none)"
    return status if blocking is None else f"{status}/{blocking}"


def confusion_table(outcomes: Sequence[Outcome]) -> str:
    """Rows: expected status/blocking; columns: what the agent recorded."""
    counts = Counter((o.expected_label, o.got_label) for o in outcomes)
    rows = sorted({o.expected_label for o in outcomes})
    cols = sorted({o.got_label for o in outcomes})
    w0 = max([len("expected \\ got")] + [len(r) for r in rows])
    widths = [max(len(c), 3) for c in cols]
    head = "expected \\ got".ljust(w0) + " | " + " | ".join(c.rjust(w) for c, w in
                                                            zip(cols, widths, strict=True))
    out = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for c, w in zip(cols, widths, strict=True):
            n = counts.get((r, c), 0)
            cells.append((str(n) if n else ".").rjust(w))
        out.append(r.ljust(w0) + " | " + " | ".join(cells))
    return "\n".join(out)


def group_scenarios(lab: Lab, scenarios: Sequence[Scenario]
                    ) -> list[tuple[str, str, tuple[Event, ...], list[Scenario]]]:
    """(test, control mode, events) -> scenarios; events belong to the file that declares them."""
    events_of: dict[str, tuple[Event, ...]] = {}
    for f in lab.scenarios.files:
        for s in f.scenarios:
            events_of[s.id] = f.events
    groups: dict[tuple[str, str, tuple[Event, ...]], list[Scenario]] = {}
    for s in scenarios:
        groups.setdefault((s.test, s.control, events_of.get(s.id, ())), []).append(s)
    return [(t, c, e, ss) for (t, c, e), ss in groups.items()]


def run_scenarios(lab: Lab, scenarios: Sequence[Scenario] | None = None,
                  timeout_s: float = AGENT_TIMEOUT_S) -> Report:
    chosen = [s for s in (scenarios if scenarios is not None else lab.scenarios.measured)
              if s.expect is not None]
    report = Report()
    for i, (test, control, events, group) in enumerate(group_scenarios(lab, chosen)):
        list_file = lab.dir / f"run-{i}.csv"
        _write_list(list_file, group)
        output = lab.dir / f"run-{i}.jsonl"
        output.unlink(missing_ok=True)
        argv = lab.agent_argv([list_file], output, tests=test,
                              control_url=DEAD_CONTROL_URL if control == "unreachable" else None)
        if control == "blocked":
            lab.block_helper()  # the censor resets the probe's flows to the helper: a phase
        try:
            run = _run_agent(lab, argv, output, [s.id for s in group], events, timeout_s)
        finally:
            if control == "blocked":
                lab.unblock_helper()
        report.runs.append(run)
        records = _read_records(output)
        for s in group:
            report.outcomes.append(_outcome(s, records, run))
    return report


def _write_list(path: Path, group: Sequence[Scenario]) -> None:
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["url", "category_code", "category_description", "date_added", "source",
                    "notes"])
        for s in group:
            w.writerow([s.url, s.category, "", "2024-01-01", "vigil-lab", s.id])


def _run_agent(lab: Lab, argv: list[str], output: Path, ids: list[str],
               events: tuple[Event, ...], timeout_s: float) -> AgentRun:
    t0 = time.time()
    thread = lab.run_events(events, t0) if events else None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              env=_env(lab), check=False, stdin=subprocess.DEVNULL)
        rc: int | None = proc.returncode
        stderr = proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = None
        stderr = f"agent killed after {timeout_s}s\n" + _text(exc.stderr)
    finally:
        if thread is not None:
            thread.join(timeout=max(0.0, max(e.after_s + e.duration_s for e in events)
                                    - (time.time() - t0)) + 10)
            if not lab.uplink_is_up():
                lab.restore()
    return AgentRun(argv=argv, scenarios=ids, returncode=rc, seconds=time.time() - t0,
                    stderr_tail="\n".join(stderr.strip().splitlines()[-25:]), output=output)


def _env(lab: Lab) -> dict[str, str]:
    import os

    return {**os.environ, **lab.agent_env()}


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


def _read_records(output: Path) -> dict[tuple[str, str], dict[str, Any] | str]:
    """(input, test_name) -> record; unparsable lines are kept as text under a line key."""
    records: dict[tuple[str, str], dict[str, Any] | str] = {}
    if not output.exists():
        return records
    for n, line in enumerate(output.read_text(encoding="utf-8", errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            records[(f"<line {n + 1}>", "")] = line
            continue
        if isinstance(rec, dict):
            records[(_norm(str(rec.get("input"))), str(rec.get("test_name")))] = rec
    return records


def _norm(url: str) -> str:
    return url.rstrip("/").lower()


def _outcome(s: Scenario, records: dict[tuple[str, str], dict[str, Any] | str],
             run: AgentRun) -> Outcome:
    rec = records.get((_norm(s.url), s.test))
    if not isinstance(rec, dict):
        why = "no record" if run.returncode == 0 else f"no record (agent exit {run.returncode})"
        return Outcome(s, None, None, None, None, None, problem=why)
    verdict = rec.get("verdict")
    if not isinstance(verdict, dict):
        return Outcome(s, None, None, None, None, rec, problem="record without a verdict")
    return Outcome(
        s, status=verdict.get("status"), blocking=verdict.get("blocking"),
        reason=verdict.get("reason"), confirmed=verdict.get("confirmed"), record=rec,
    )
