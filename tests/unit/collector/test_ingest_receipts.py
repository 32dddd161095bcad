"""Receipts the ingest sends after a commit (collector.ingest.receipts): one row per case."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from agent.wire.receipts import Request
from collector.ingest.receipts import Answered, build, reply_topic
from collector.ingest.verify import Accepted, KeyTable, Outcome, Rejected, Verifier
from collector.store.base import ProbeRecord, QuarantineItem
from lab.probes import TestProbe

NOW = time.time()
P = TestProbe.new()
Q = TestProbe.new()


def accepted(probe: TestProbe) -> tuple[str, Accepted]:
    key = ProbeRecord(probe.probe_id, probe.public_raw, "", datetime.now(UTC))
    verifier = Verifier(KeyTable([key]))
    outcome = verifier.check(probe.topic, probe.envelope(), NOW)
    assert isinstance(outcome, Accepted)
    return outcome.row.measurement_id, outcome


def rejected(probe: TestProbe, reason: str) -> Rejected:
    return Rejected(QuarantineItem(reason, "detail", probe.topic, b"raw", NOW, probe.probe_id))


def asked(probe: TestProbe, mid: str | None, version: int | None = 1) -> Answered:
    return Answered(probe.topic, Request(version, mid, None))


MID_P, ACC_P = accepted(P)
MID_P2, ACC_P2 = accepted(P)
MID_Q, ACC_Q = accepted(Q)


@pytest.mark.parametrize(
    ("messages", "outcomes", "kw", "expected"),
    [
        pytest.param([asked(P, MID_P)], [ACC_P], {}, {P: ([MID_P], {}, {})}, id="stored"),
        pytest.param([asked(P, MID_P, None)], [ACC_P], {}, {}, id="older agent: no receipt"),
        pytest.param([asked(P, MID_P), asked(P, MID_P)], [ACC_P, ACC_P], {},
                     {P: ([MID_P], {}, {})}, id="a duplicate in the batch: one answer"),
        pytest.param([asked(P, MID_P)], [ACC_P], {"conflicts": {MID_P}},
                     {P: ([], {MID_P: "conflict"}, {})}, id="same id, other bytes"),
        pytest.param([asked(P, MID_P)], [ACC_P], {"failed": {MID_P}},
                     {P: ([], {}, {MID_P: "internal_error"})}, id="store refused the row"),
        pytest.param([asked(P, "x1")], [rejected(P, "bad_signature")], {},
                     {P: ([], {"x1": "bad_signature"}, {})}, id="refused for good"),
        pytest.param([asked(P, "x2")], [rejected(P, "unknown_key")], {},
                     {P: ([], {}, {"x2": "unknown_key"})}, id="not enrolled yet: retry"),
        pytest.param([asked(P, None)], [rejected(P, "malformed_envelope")], {}, {},
                     id="a rejection without an id cannot be named"),
        pytest.param([Answered(P.status_topic, Request(1, "s", None))],
                     [rejected(P, "oversized")], {}, {}, id="status messages get none"),
        pytest.param([asked(P, MID_P), asked(Q, MID_Q), asked(P, MID_P2)],
                     [ACC_P, ACC_Q, ACC_P2], {},
                     {P: ([MID_P, MID_P2], {}, {}), Q: ([MID_Q], {}, {})},
                     id="one receipt per probe"),
    ],
)
def test_build(messages: list[Answered], outcomes: list[Outcome], kw: dict[str, set[str]],
               expected: dict[TestProbe, tuple[list[str], dict[str, str], dict[str, str]]]
               ) -> None:
    built = build(messages, outcomes, by="c1", **kw)
    assert {pid: (list(r.stored), dict(r.refused), dict(r.retry)) for pid, r in built.items()} \
        == {reply_topic(p.topic): v for p, v in expected.items()}
    assert all(r.by == "c1" for r in built.values())


@pytest.mark.parametrize(
    ("topic", "reply"),
    [
        ("vigil/v1/probes/abc/measurements", "vigil/v1/probes/abc/receipts"),
        # a probe listener's mount_point: the answer goes back under the same name
        ("edge/vigil/v1/probes/abc/measurements", "edge/vigil/v1/probes/abc/receipts"),
    ],
)
def test_reply_topic_is_the_sibling_of_the_records_topic(topic: str, reply: str) -> None:
    assert reply_topic(topic) == reply
