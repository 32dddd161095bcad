"""What an incident report says, computed from the signed records it cites (pure).

The report reads every measurement in scope once (oldest first, in bounded pages) and folds
it here; nothing in the report comes from anywhere else than the signed records and the
outage detector's events, so each sentence can be traced to envelopes in the bundle.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from collector.store.base import StoredMeasurement

DAY = 86400
SAMPLES_PER_FINDING = 3  # envelopes cited per (domain, network) besides the first and last


@dataclass(frozen=True, slots=True)
class Scope:
    cc: str
    since: datetime
    until: datetime
    asn: str | None = None


@dataclass
class Finding:
    """One domain on one network: how often it was blocked, how, and since when."""

    domain: str
    asn: str
    network_name: str
    category: str
    total: int = 0
    blocked: int = 0  # blocked or throttled
    techniques: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    confirmed: int = 0
    fingerprints: Counter[str] = field(default_factory=Counter)
    first_blocked: datetime | None = None
    last_blocked: datetime | None = None
    first_id: str | None = None
    last_id: str | None = None
    samples: list[str] = field(default_factory=list)
    last_ok: datetime | None = None

    @property
    def share(self) -> float:
        return self.blocked / self.total if self.total else 0.0

    @property
    def technique(self) -> str:
        return ", ".join(t for t, _ in self.techniques.most_common()) or "-"

    def cited(self) -> list[str]:
        ids = [self.first_id, self.last_id, *self.samples]
        return list(dict.fromkeys(i for i in ids if i is not None))


@dataclass
class Series:
    """Per network, per UTC day: measurements and how many were blocked, throttled, down."""

    days: dict[int, Counter[str]] = field(default_factory=dict)

    def add(self, t: float, status: str) -> None:
        self.days.setdefault(int(t // DAY) * DAY, Counter())[status] += 1


@dataclass
class ReportData:
    scope: Scope
    total: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    probes: set[str] = field(default_factory=set)
    networks: dict[str, str] = field(default_factory=dict)  # asn -> name
    series: dict[str, Series] = field(default_factory=dict)  # asn -> daily counts
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)
    fingerprints: dict[str, list[str]] = field(default_factory=dict)  # name -> cited ids
    cited_claims: dict[str, dict[str, object]] = field(default_factory=dict)
    first: datetime | None = None
    last: datetime | None = None

    def blocked_findings(self) -> list[Finding]:
        out = [f for f in self.findings.values() if f.blocked]
        out.sort(key=lambda f: (-f.share, -f.blocked, f.domain, f.asn))
        return out

    def cited_ids(self) -> set[str]:
        ids: set[str] = set()
        for f in self.blocked_findings():
            ids.update(f.cited())
        for cited in self.fingerprints.values():
            ids.update(cited)
        return ids


def _claim(m: StoredMeasurement, record: dict[str, object]) -> dict[str, object]:
    verdict = record.get("verdict")
    v = verdict if isinstance(verdict, dict) else {}
    return {
        "measurement_id": m.summary.measurement_id,
        "probe_id": record.get("probe_id"),
        "measurement_start_time": record.get("measurement_start_time"),
        "probe_cc": record.get("probe_cc"),
        "probe_asn": record.get("probe_asn"),
        "input": record.get("input"),
        "test_name": record.get("test_name"),
        "status": v.get("status"),
        "blocking": v.get("blocking"),
        "reason": v.get("reason"),
        "confirmed": v.get("confirmed"),
    }


def fold(data: ReportData, measurements: Iterable[StoredMeasurement]) -> None:
    """Add measurements (oldest first) to the report."""
    for m in measurements:
        s = m.summary
        try:
            record = json.loads(m.payload)
        except ValueError:
            continue  # verified at ingest; an unreadable row is not evidence
        if not isinstance(record, dict):
            continue
        data.total += 1
        data.statuses[s.status] += 1
        data.probes.add(s.probe_id)
        name = str(record.get("probe_network_name") or "")
        data.networks.setdefault(s.probe_asn, name)
        t = s.start_time
        data.first = t if data.first is None else min(data.first, t)
        data.last = t if data.last is None else max(data.last, t)
        data.series.setdefault(s.probe_asn, Series()).add(t.timestamp(), s.status)
        if not s.domain:
            continue
        key = (s.domain, s.probe_asn)
        f = data.findings.get(key)
        if f is None:
            f = data.findings[key] = Finding(s.domain, s.probe_asn, name,
                                             str(record.get("category_code") or ""))
        f.total += 1
        verdict = record.get("verdict")
        fingerprint = verdict.get("fingerprint") if isinstance(verdict, dict) else None
        if s.status in ("blocked", "throttled"):
            f.blocked += 1
            f.techniques[s.blocking or "unknown"] += 1
            if s.reason:
                f.reasons[s.reason] += 1
            if f.first_blocked is None:
                f.first_blocked, f.first_id = t, s.measurement_id
                data.cited_claims[s.measurement_id] = _claim(m, record)
            else:
                if len(f.samples) < SAMPLES_PER_FINDING and f.blocked % 50 == 0:
                    f.samples.append(s.measurement_id)
                    data.cited_claims[s.measurement_id] = _claim(m, record)
            f.last_blocked, f.last_id = t, s.measurement_id
            data.cited_claims[s.measurement_id] = _claim(m, record)
            if s.confirmed:
                f.confirmed += 1
            if isinstance(fingerprint, str) and fingerprint:
                f.fingerprints[fingerprint] += 1
                cited = data.fingerprints.setdefault(fingerprint, [])
                if len(cited) < SAMPLES_PER_FINDING:
                    cited.append(s.measurement_id)
                    data.cited_claims[s.measurement_id] = _claim(m, record)
        elif s.status == "ok":
            f.last_ok = t


def claims_for(data: ReportData) -> list[dict[str, object]]:
    """The claims the bundle's verify.py checks against the signed records."""
    ids = data.cited_ids()
    return [c for mid, c in sorted(data.cited_claims.items()) if mid in ids]
