"""Measurement records for the outbox and publisher tests (schema-valid, signed by a real key)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.wire import envelope as wire
from agent.wire.record import Blocking, MeasurementRecord, Status, Verdict


def make_record(
    probe_id: str, i: int = 0, *, pad: int = 200, **overrides: Any
) -> MeasurementRecord:
    """Record number ``i`` of a campaign; ``pad`` bytes of test_keys control its size."""
    fields: dict[str, Any] = {
        "measurement_id": wire.uuid7(),
        "test_name": "web_connectivity",
        "test_version": "0.1.0",
        "input": f"https://site{i}.example.org/",
        "category_code": "NEWS",
        "probe_id": probe_id,
        "probe_asn": "AS12880",
        "probe_cc": "IR",
        "probe_network_name": "Test Network",
        "resolver_asn": "AS12880",
        "measurement_start_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "test_runtime": 0.25,
        "software_name": "vigil-agent",
        "software_version": "0.1.0",
        "test_keys": {"seq": i, "pad": "x" * pad},
        "verdict": Verdict(Status.BLOCKED, Blocking.DNS, "dns.nxdomain")
        if i % 3 == 0
        else Verdict(Status.OK),
    }
    fields.update(overrides)
    return MeasurementRecord(**fields)
