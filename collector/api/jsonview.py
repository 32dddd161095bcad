"""JSON views of store rows, shared by the HTTP API and ``vigil-collector query``.

One definition of which fields a measurement summary or a quarantined message shows, so the
API and the command line cannot drift apart.  Pure (no aiohttp, no store access).  The two
callers differ only in how they write times (the API: RFC 3339 with a Z; the command line:
Python's ``isoformat``) and in whether a quarantined message's raw bytes are shown (only
operators at the command line see them: they are attacker-controlled).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from typing import Any

from collector.api.params import iso
from collector.store.base import MeasurementSummary, QuarantinedRow

TimeFormat = Callable[[datetime], str]


def summary_json(m: MeasurementSummary, *, time: TimeFormat = iso) -> dict[str, Any]:
    """A stored measurement's indexed columns (no payload, no signature)."""
    return {
        "measurement_id": m.measurement_id,
        "probe_id": m.probe_id,
        "test_name": m.test_name,
        "input": m.input,
        "domain": m.domain,
        "probe_cc": m.probe_cc,
        "probe_asn": m.probe_asn,
        "status": m.status,
        "blocking": m.blocking,
        "reason": m.reason,
        "confirmed": m.confirmed,
        "measurement_start_time": time(m.start_time),
        "received_at": time(m.received_at),
    }


def quarantine_json(
    q: QuarantinedRow, *, time: TimeFormat = iso, raw: bool = False, detail: bool = True
) -> dict[str, Any]:
    """A quarantined message's metadata; with ``raw`` also its (possibly truncated) bytes.

    ``detail`` (the verifier's own words, which may quote parser or exception text) is for the
    operator's CLI; the public API leaves it out and carries the reason only.
    """
    out: dict[str, Any] = {"id": q.id, "reason": q.reason}
    if detail:
        out["detail"] = q.detail
    out |= {
        "topic": q.topic,
        "probe_id": q.probe_id,
        "size": q.size,
        "sha256": q.sha256,
    }
    if raw:
        out["raw_b64"] = base64.b64encode(q.raw).decode("ascii")
        out["truncated"] = len(q.raw) < q.size
    out["received_at"] = time(q.received_at)
    return out
