"""OONI's own parser (``oonidata``) loads every line ``vigil-agent export`` writes.

oonidata pins old versions of click and cryptography, so it lives in a virtualenv of its own
(cached between runs under $VIGIL_TEST_CACHE or ~/.cache/vigil-tests).  The test installs it
from PyPI on first use; it is skipped, saying so, only when PyPI cannot be reached.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import venv
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent.cli.export import export
from lab.archive import generate

pytestmark = pytest.mark.slow

OONIDATA = "oonidata==0.3.0"
OONI_BLOCKING = {False, None, "dns", "tcp_ip", "http-failure", "http-diff"}

LOADER = r"""
import json, sys
from oonidata.dataclient import load_measurement
out = []
for number, line in enumerate(open(sys.argv[1], encoding="utf-8"), start=1):
    try:
        m = load_measurement(json.loads(line))
    except Exception as exc:
        out.append({"line": number, "error": f"{type(exc).__name__}: {exc}"})
        continue
    tk = m.test_keys
    item = {"line": number, "class": type(m).__name__, "test_name": m.test_name}
    if type(m).__name__ == "WebConnectivity":
        item.update(
            rcodes=[q.rcode for q in tk.queries or []],
            blocking=tk.blocking, accessible=tk.accessible,
            dns_consistency=tk.dns_consistency, body_length_match=tk.body_length_match,
            status_code_match=tk.status_code_match, headers_match=tk.headers_match,
            title_match=tk.title_match, tcp=[c.status.success for c in tk.tcp_connect or []],
            bodies=[len(r.response.body_str or "") for r in tk.requests or [] if r.response],
        )
    out.append(item)
print(json.dumps(out))
"""


def _cache() -> Path:
    root = os.environ.get("VIGIL_TEST_CACHE") or str(Path.home() / ".cache" / "vigil-tests")
    return Path(root) / "oonidata-0.3.0"


def oonidata_python() -> Path:
    env = _cache()
    python = env / "bin" / "python"
    if python.exists() and subprocess.run(
            [python, "-c", "import oonidata.dataclient"], capture_output=True,
            timeout=120).returncode == 0:
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    proc = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           OONIDATA], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        if any(s in text for s in ("NewConnectionError", "Temporary failure in name",
                                   "No matching distribution", "Network is unreachable",
                                   "ConnectTimeout", "ReadTimeout")):
            pytest.skip(f"PyPI unreachable, cannot install {OONIDATA}: {text.strip()[-300:]}")
        raise AssertionError(f"installing {OONIDATA} failed:\n{text[-2000:]}")
    return python


def collector_line(row: Any) -> str:
    return json.dumps({
        "measurement_id": row.measurement_id, "probe_id": row.probe_id,
        "received_at": "2026-05-01T00:00:00.000000Z",
        "envelope": {"payloadType": row.payload_type,
                     "payload": base64.b64encode(row.payload).decode("ascii"),
                     "signatures": [{"keyid": row.probe_id,
                                     "sig": base64.b64encode(row.signature).decode("ascii")}]},
    })


def test_oonidata_loads_every_exported_line(tmp_path: Path) -> None:
    python = oonidata_python()
    archive = generate(240, days=20, seed=4)
    source = tmp_path / "collector-export.jsonl"
    source.write_text("".join(collector_line(r) + "\n" for r in archive.rows))
    result = CliRunner().invoke(export, ["--format", "ooni", str(source)])
    assert result.exit_code == 0, result.output
    exported = tmp_path / "ooni.jsonl"
    exported.write_text(result.stdout)
    lines = result.stdout.splitlines()
    assert len(lines) == len(archive.rows)
    proc = subprocess.run([python, "-c", LOADER, str(exported)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout)
    errors = [x for x in loaded if "error" in x]
    assert not errors, errors[:5]
    assert len(loaded) == len(lines)
    by_id = {r["measurement_id"]: r for r in archive.records.values()}
    for item, line in zip(loaded, lines, strict=True):
        ours = by_id[json.loads(line)["id"]]
        if ours["test_name"] == "web_connectivity":
            assert item["class"] == "WebConnectivity"
            assert item["rcodes"] and all(isinstance(c, int) for c in item["rcodes"])
            assert item["blocking"] in OONI_BLOCKING
            status = ours["verdict"]["status"]
            assert item["accessible"] is {"ok": True, "blocked": False, "down": False,
                                          "inconclusive": None}[status]
            if status == "ok":
                assert item["dns_consistency"] == "consistent"
                assert item["status_code_match"] is True and item["title_match"] is True
        else:  # Vigil's own tests: a name of their own, read as a generic measurement
            assert item["class"] == "BaseMeasurement"
            assert item["test_name"] == "vigil_" + ours["test_name"]
    kinds = {(x["class"], x.get("blocking")) for x in loaded}
    assert {("WebConnectivity", "dns"), ("WebConnectivity", "http-failure"),
            ("WebConnectivity", "http-diff"), ("WebConnectivity", False)} <= kinds

