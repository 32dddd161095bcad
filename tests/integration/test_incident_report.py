"""``vigil-collector report``: the HTML report says what the signed records say, and the
evidence bundle re-verifies offline with its own script (and catches tampering)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.cli.main import main
from collector.outages.detector import OutageEvent
from collector.report.pdf import chromium
from collector.store.base import MeasurementRow
from lab.archive import Archive, generate
from tests.support.collector import archive_store

UNTIL = datetime(2026, 6, 30, tzinfo=UTC).timestamp()
SINCE = "2026-06-05"
END = "2026-06-25T12:00:00Z"


@pytest.fixture(scope="module")
def archive() -> Archive:
    return generate(1200, days=30, until=UNTIL, seed=17)


@pytest.fixture
def store_url(tmp_path: Path, archive: Archive) -> str:
    return archive_store(tmp_path, archive, [
        OutageEvent("iq-shutdown", "cc:IQ", UNTIL - 10 * 86400, UNTIL - 10 * 86400 + 60,
                    UNTIL - 10 * 86400 + 300, UNTIL - 9.5 * 86400, ("a", "b"), 0.9, 0.0, {}, ()),
        OutageEvent("ir-cut", "cc:IR", UNTIL - 10 * 86400, UNTIL - 10 * 86400 + 60,
                    UNTIL - 10 * 86400 + 300, None, ("c",), 0.9, 0.0, {}, ()),
    ])


def in_scope(archive: Archive, cc: str, asn: str | None = None) -> list[MeasurementRow]:
    lo = datetime.fromisoformat(SINCE).replace(tzinfo=UTC).timestamp()
    hi = datetime.fromisoformat(END).timestamp()
    return [r for r in archive.rows if r.probe_cc == cc and lo <= r.start_ts < hi
            and (asn is None or r.probe_asn == asn)]


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def run_report(store_url: str, out: Path, *extra: str) -> int:
    return main(["report", "--store", store_url, "--cc", "IQ", "--since", SINCE,
                 "--until", END, "--out", str(out), *extra])


def verify(bundle: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(bundle / "verify.py")], capture_output=True,
                          text=True, timeout=120, cwd=bundle.parent.parent)


def test_report_states_what_the_records_show(store_url: str, archive: Archive,
                                             tmp_path: Path) -> None:
    out = tmp_path / "report-iq"
    assert run_report(store_url, out) == 0
    html = (out / "report.html").read_text("utf-8")
    rows = in_scope(archive, "IQ")
    assert f"{len(rows)} measurements" in html
    blocked = [r for r in rows if r.status in ("blocked", "throttled")]
    pairs = {(r.domain, r.probe_asn, r.blocking) for r in blocked}
    assert {(d, b) for d, _, b in pairs} == {("telegram.org", "dns"),
                                             ("www.facebook.com", "tls")}
    table = html.split('id=blocked>', 1)[1].split("</table>", 1)[0]
    for domain, asn, technique in pairs:
        hits = [r for r in blocked if r.domain == domain and r.probe_asn == asn]
        total = [r for r in rows if r.domain == domain and r.probe_asn == asn]
        row = next(tr for tr in table.split("<tr>") if f"<td>{domain}</td>" in tr
                   and f"<td>{asn} " in tr)
        assert technique is not None and technique in row
        assert f"{len(hits)}/{len(total)}" in row
        assert when(min(r.start_ts for r in hits)) in row
        assert when(max(r.start_ts for r in hits)) in row
    assert "twitter.com" not in table  # blocked in Iran, not in Iraq
    assert "dns_ir_10.10.34.35" in html.split("id=fingerprints>", 1)[1]
    outages = html.split("id=outages>", 1)[1].split("</table>", 1)[0]
    assert "cc:IQ" in outages and "cc:IR" not in outages
    assert "id=methodology" in html and "id=limits" in html
    # Self-contained: nothing to fetch, no script.
    assert "<script" not in html and "src=" not in html and "<link" not in html
    assert html.count("<svg") == 1 and "event-outage" in html


def test_evidence_bundle_verifies_offline_and_catches_tampering(
        store_url: str, archive: Archive, tmp_path: Path) -> None:
    out = tmp_path / "report-iq"
    assert run_report(store_url, out) == 0
    bundle = out / "evidence"
    cited = json.loads((bundle / "cited.json").read_text())["measurements"]
    lines = (bundle / "envelopes.jsonl").read_text().splitlines()
    assert len(lines) == len(cited) > 4
    keys = json.loads((bundle / "probes.json").read_text())["probes"]
    assert {k["probe_id"] for k in keys} == {c["probe_id"] for c in cited}
    ok = verify(bundle)
    assert ok.returncode == 0, ok.stdout
    assert f"{len(lines)} envelope(s) verified, 0 problem(s)" in ok.stdout
    html = (out / "report.html").read_text()
    for claim in cited:  # every envelope in the bundle is cited in the report
        assert claim["measurement_id"] in html

    # A forged record: the signature no longer matches.
    forged = tmp_path / "forged"
    shutil.copytree(out, forged)
    fb = forged / "evidence"
    item = json.loads(lines[0])
    import base64

    payload = json.loads(base64.b64decode(item["envelope"]["payload"]))
    payload["verdict"]["status"] = "ok"
    item["envelope"]["payload"] = base64.b64encode(
        json.dumps(payload).encode()).decode()
    (fb / "envelopes.jsonl").write_text("\n".join([json.dumps(item), *lines[1:]]) + "\n")
    bad = verify(fb)
    assert bad.returncode == 1
    assert "BAD SIGNATURE" in bad.stdout and "SHA-256 differs" in bad.stdout

    # A claim the signed record does not make.
    lied = tmp_path / "lied"
    shutil.copytree(out, lied)
    claims = json.loads((lied / "evidence" / "cited.json").read_text())
    claims["measurements"][0]["blocking"] = "tcp_ip"
    (lied / "evidence" / "cited.json").write_text(json.dumps(claims))
    bad = verify(lied / "evidence")
    assert bad.returncode == 1 and "verdict blocking is" in bad.stdout

    # The report itself edited after the fact.
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    (edited / "report.html").write_text(html.replace("telegram.org", "example.org"))
    bad = verify(edited / "evidence")
    assert bad.returncode == 1 and "../report.html: SHA-256 differs" in bad.stdout


def test_one_network_only(store_url: str, archive: Archive, tmp_path: Path) -> None:
    out = tmp_path / "asn"
    assert run_report(store_url, out, "--asn", "as59588") == 0
    html = (out / "report.html").read_text()
    rows = in_scope(archive, "IQ", "AS59588")
    assert f"{len(rows)} measurements from 1 probe(s) on 1 network(s)" in html
    assert "AS50710" not in html


@pytest.mark.parametrize("args", [
    ["--cc", "IRQ"], ["--asn", "Iraq"], ["--since", "yesterday"],
    ["--since", "2026-06-10", "--until", "2026-06-01"],
])
def test_bad_arguments_are_usage_errors(store_url: str, tmp_path: Path,
                                        args: list[str]) -> None:
    base = {"--cc": "IQ", "--since": SINCE, "--until": END}
    argv = ["report", "--store", store_url, "--out", str(tmp_path / "x")]
    overrides = dict(zip(args[::2], args[1::2], strict=True))
    for k, v in {**base, **overrides}.items():
        argv += [k, v]
    assert main(argv) == 2
    assert not (tmp_path / "x" / "report.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no Chromium to print the PDF with")
def test_pdf_is_printed_and_covered_by_the_manifest(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "pdf"
    assert run_report(store_url, out, "--pdf") == 0
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert "../report.pdf" in (out / "evidence" / "MANIFEST.sha256").read_text()
    assert verify(out / "evidence").returncode == 0
