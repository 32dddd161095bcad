"""Write an incident report and its evidence bundle (the I/O around summary and render).

    DIR/report.html                 self-contained (inline CSS and SVG)
    DIR/report.pdf                  the same, printed by headless Chromium (``--pdf``)
    DIR/evidence/envelopes.jsonl    the signed envelopes the report cites (export lines)
    DIR/evidence/probes.json        the public keys of the probes that signed them
    DIR/evidence/cited.json         each cited measurement and what the report says it shows
    DIR/evidence/verify.py          re-verifies everything offline (Python + cryptography)
    DIR/evidence/MANIFEST.sha256    SHA-256 of every file above (sha256sum -c format)
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from agent.errors import VigilError
from collector.api.routes import export_line
from collector.outages.detector import OutageEvent
from collector.report.pdf import print_pdf
from collector.report.render import render
from collector.report.summary import ReportData, Scope, claims_for, fold
from collector.store.base import Filter, Store

PAGE = 500


@dataclass(frozen=True, slots=True)
class ReportResult:
    report: Path
    evidence: Path
    measurements: int
    cited: int
    blocked_domains: int


def outage_rows(events: Sequence[OutageEvent], data: ReportData) -> list[dict[str, Any]]:
    """Events about the report's country or its networks that overlap its period."""
    lo, hi = data.scope.since.timestamp(), data.scope.until.timestamp()
    groups = {f"cc:{data.scope.cc}"} | {f"asn:{a}" for a in data.networks}
    if data.scope.asn:
        groups = {f"asn:{data.scope.asn}"}
    out = []
    for e in sorted(events, key=lambda e: e.start):
        end = e.end
        if e.group not in groups or e.start >= hi or (end is not None and end < lo):
            continue
        item = e.to_json()
        out.append({"group": e.group, "start_ts": e.start, "end_ts": end,
                    "kind": str(item.get("kind", "outage")), "affected": len(e.affected)})
    return out


def collect(store: Store, scope: Scope) -> ReportData:
    data = ReportData(scope)
    where = Filter(since=scope.since, until=scope.until, probe_cc=scope.cc, probe_asn=scope.asn)
    after: str | None = None
    for _ in range(10_000_000 // PAGE + 1):
        page = store.export_page(where, PAGE, after)
        fold(data, page)
        if len(page) < PAGE:
            break
        after = page[-1].summary.measurement_id
    return data


def write_report(store: Store, events: Sequence[OutageEvent], scope: Scope, out: Path,
                 collector: str = "vigil-collector", pdf: bool = False) -> ReportResult:
    if scope.since >= scope.until:
        raise VigilError("--since must be earlier than --until")
    data = collect(store, scope)
    outages = outage_rows(events, data)
    evidence = out / "evidence"
    try:
        evidence.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VigilError(f"cannot create {evidence}: {exc.strerror}") from None
    html = render(data, outages, datetime.now(UTC), collector)
    (out / "report.html").write_text(html, "utf-8")
    claims = claims_for(data)
    probes: dict[str, dict[str, Any]] = {}
    with open(evidence / "envelopes.jsonl", "wb") as fh:
        for claim in claims:
            m = store.get_measurement(str(claim["measurement_id"]))
            if m is None:
                raise VigilError(f"measurement {claim['measurement_id']} vanished while "
                                 "the report was written (pruned?): run it again")
            fh.write(export_line(m))
            if m.summary.probe_id not in probes:
                p = store.get_probe(m.summary.probe_id)
                if p is None:
                    raise VigilError(f"probe {m.summary.probe_id} is not enrolled here")
                probes[p.probe_id] = {
                    "probe_id": p.probe_id,
                    "public_key": base64.b64encode(p.public_key).decode("ascii"),
                    "enrolled_at": p.enrolled_at.isoformat().replace("+00:00", "Z"),
                    "revoked_at": None if p.revoked_at is None
                    else p.revoked_at.isoformat().replace("+00:00", "Z"),
                }
    (evidence / "probes.json").write_text(json.dumps(
        {"probes": [probes[k] for k in sorted(probes)]}, indent=1) + "\n", "utf-8")
    (evidence / "cited.json").write_text(json.dumps(
        {"scope": {"cc": scope.cc, "asn": scope.asn,
                   "since": scope.since.isoformat().replace("+00:00", "Z"),
                   "until": scope.until.isoformat().replace("+00:00", "Z")},
         "measurements": claims}, indent=1, ensure_ascii=False) + "\n", "utf-8")
    script = resources.files("collector.report").joinpath("verify_bundle.py")
    with resources.as_file(script) as src:
        shutil.copyfile(src, evidence / "verify.py")
    names = ["../report.html", "envelopes.jsonl", "probes.json", "cited.json", "verify.py"]
    if pdf:
        print_pdf(out / "report.html", out / "report.pdf")
        names.insert(1, "../report.pdf")
    lines = [f"{hashlib.sha256((evidence / n).read_bytes()).hexdigest()}  {n}" for n in names]
    (evidence / "MANIFEST.sha256").write_text("\n".join(lines) + "\n", "utf-8")
    return ReportResult(out / "report.html", evidence, data.total, len(claims),
                        len({f.domain for f in data.blocked_findings()}))
