"""The ingest's intake rules: the in-flight window from the byte budget, QoS 0 refusals."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from collector.ingest.intake import PACKET_OVERHEAD, QOS0_REFUSED, IntakeQueue, inflight_window

MIB = 1_048_576


@pytest.mark.parametrize(("receive_maximum", "budget", "message", "window"), [
    (3000, 256 * MIB, MIB, 256 * MIB // (MIB + PACKET_OVERHEAD)),  # bytes bind: 255
    (3000, 256 * MIB, 16_384, 3000),  # small messages: the configured maximum binds
    (100, 4 * 1024 * MIB, MIB, 100),
    (3000, MIB, 4 * MIB, 1),  # never zero
    (100_000, 1 << 40, 1, 65_535),  # the protocol's ceiling
])
def test_inflight_window(receive_maximum: int, budget: int, message: int, window: int) -> None:
    assert inflight_window(receive_maximum, budget, message) == window
    assert window == 1 or window * message <= budget


@dataclass
class Msg:
    topic: str
    qos: int


@pytest.mark.parametrize(("topic", "qos", "queued"), [
    ("edge/vigil/v1/probes/abc/measurements", 0, False),  # QoS 0 measurement: refused
    ("vigil/v1/probes/abc/measurements", 0, False),
    ("edge/vigil/v1/probes/abc/measurements", 1, True),
    ("edge/vigil/v1/probes/abc/status", 0, True),  # a Last Will may be QoS 0
    ("edge/vigil/v1/probes/abc/other", 0, True),  # left to the verifier (topic_mismatch)
])
def test_intake_refuses_only_qos0_measurements(topic: str, qos: int, queued: bool) -> None:
    counter: Counter[str] = Counter()
    q = IntakeQueue(counter)
    q.put_nowait(Msg(topic, qos))
    assert (q.qsize() == 1) is queued
    assert counter[QOS0_REFUSED] == (0 if queued else 1)
