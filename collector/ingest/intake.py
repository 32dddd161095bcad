"""What the collector lets into its memory from the broker, bounded in bytes.

Two rules keep one hostile probe from filling the collector's memory:

* **QoS 1 only on measurement topics.**  The broker's flow control (MQTT v5 Receive Maximum)
  applies to QoS 1 and 2 only: QoS 0 messages would arrive as fast as the broker can send
  them.  Honest probes publish measurements at QoS 1 (they need the acknowledgement to
  empty their outbox), so a QoS 0 measurement is refused on arrival, counted, and never
  queued.  Statuses may be QoS 0 (a Last Will); they are at most ``MAX_STATUS_BYTES`` each.
* **At most ``max_inflight_bytes`` of QoS 1 messages in flight.**  The collector asks the
  broker for a Receive Maximum of ``max_inflight_bytes // max_message_bytes`` unacknowledged
  messages (:func:`inflight_window`), so the broker itself never sends more than that.  The
  bound holds when the broker's ``message_size_limit`` is the collector's
  ``max_message_bytes`` (both 1 MiB by default).  No Maximum Packet Size is asked for: the
  broker would drop a bigger message for us silently, where the verifier counts it
  ``oversized``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from agent.wire.topics import MEASUREMENTS, topic_parts

# Topic name, packet id and properties around a payload in a PUBLISH packet, with room to spare.
PACKET_OVERHEAD = 4_096
QOS0_REFUSED = "qos0_refused"


def inflight_window(receive_maximum: int, max_inflight_bytes: int, max_message_bytes: int) -> int:
    """The Receive Maximum to ask for: the configured one, lowered to fit the byte budget."""
    by_bytes = max(1, max_inflight_bytes // max(1, max_message_bytes + PACKET_OVERHEAD))
    return max(1, min(receive_maximum, by_bytes, 65_535))


def is_measurement(topic: str) -> bool:
    parts = topic_parts(topic)
    return parts is not None and parts[1] == MEASUREMENTS


class IntakeQueue(asyncio.Queue[Any]):
    """aiomqtt's incoming-message queue: refuses QoS 0 measurements, counts them in
    ``counter[QOS0_REFUSED]`` (the ingest's per-process rejection counters)."""

    def __init__(self, counter: Counter[str] | None = None, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.counter: Counter[str] = Counter() if counter is None else counter

    def put_nowait(self, item: Any) -> None:
        if getattr(item, "qos", 1) == 0 and is_measurement(str(getattr(item, "topic", ""))):
            self.counter[QOS0_REFUSED] += 1
            return
        super().put_nowait(item)
