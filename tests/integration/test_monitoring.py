"""The shipped monitoring (configs/monitoring/): valid Prometheus rules that fire when they
should (``promtool test rules``), and alerts and dashboard that only name metrics the collector
really exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from collector.ingest.pipeline import IngestStats
from collector.metrics import Metrics, OutageLoopStats, StoreSnapshot

MONITORING = Path(__file__).resolve().parents[2] / "configs" / "monitoring"
PROMTOOL_FALLBACK = Path("/opt/vigil-tools/prometheus/usr/bin/promtool")
# PromQL names that are not metric names.
_PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "and", "or", "unless", "time", "max", "min", "clamp_min",
    "histogram_quantile", "le", "route", "status", "reason", "instance", "job", "up", "bool",
}


def promtool() -> str | None:
    found = os.environ.get("VIGIL_PROMTOOL") or shutil.which("promtool")
    if found:
        return found
    return str(PROMTOOL_FALLBACK) if PROMTOOL_FALLBACK.exists() else None


def exported_names() -> set[str]:
    """Every sample name a collector with ingest, store and detector exports."""
    m = Metrics()
    stats = IngestStats()
    stats.rejected["bad_signature"] += 1  # a labelled family has samples only once counted
    m.sources.ingest = lambda: (stats, True)
    m.sources.outages = lambda: OutageLoopStats(enabled=True, last_success=1.0, ongoing=1)
    m.sources.snapshot = StoreSnapshot(ok=True, measurements=3, probes={"online": 1},
                                       rejections={"bad_signature": 1})
    m.observe("/api/v1/measurements", "GET", 200, 0.01)
    text = generate_latest(m.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def names_in(expr: str) -> set[str]:
    # drop label matchers and strings, keep identifiers that look like metric names
    bare = re.sub(r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]", " ", expr)
    return {w for w in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", bare)
            if w not in _PROMQL_WORDS and not re.fullmatch(r"\d+[smhd]?", w)}


def rule_exprs() -> list[str]:
    text = (MONITORING / "vigil-alerts.yml").read_text()
    exprs: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*expr:\s*(>)?\s*(.*)$", line)
        if not m:
            continue
        if m.group(1):  # folded block: the indented lines that follow
            block = []
            for nxt in lines[i + 1:]:
                if not nxt.startswith(" " * 10):
                    break
                block.append(nxt.strip())
            exprs.append(" ".join(block))
        else:
            exprs.append(m.group(2))
    return exprs


def test_alerts_and_dashboard_name_only_exported_metrics() -> None:
    exported = exported_names()
    exprs = rule_exprs()
    dashboard = json.loads((MONITORING / "grafana-vigil-collector.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    unknown = {name for e in exprs for name in names_in(e)} - exported
    assert not unknown, f"metrics the collector does not export: {sorted(unknown)}"


def test_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    dashboard = json.loads((MONITORING / "grafana-vigil-collector.json").read_text())
    assert dashboard["uid"] == "vigil-collector"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    tool = promtool()
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must check the rules: promtool not found (see .ci/run)")
        pytest.skip("promtool not installed (Debian package prometheus; .ci/run fetches it)")
    check = subprocess.run([tool, "check", "rules", "vigil-alerts.yml"], cwd=MONITORING,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 11 rules found" in check.stdout
    test = subprocess.run([tool, "test", "rules", "vigil-alerts.test.yml"], cwd=MONITORING,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
