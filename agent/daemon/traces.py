"""Which blocked URLs the long-running agent traces next (censor_trace), and how often: pure.

A web_connectivity verdict of blocking at the TCP, TLS or HTTP layer is worth localising; the
trace costs a few dozen connections, so it is rationed: opt-in (``[censor_trace] auto``), at
most ``per_day`` traces a day, never the same URL twice within ``cooldown``, and a short queue.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from agent.wire.record import Blocking, MeasurementRecord, Status

TRACEABLE = frozenset({Blocking.TCP_IP, Blocking.TLS, Blocking.HTTP_FAILURE})
QUEUE_MAX = 8


@dataclass
class TraceQueue:
    enabled: bool = False
    per_day: int = 4
    cooldown: timedelta = timedelta(days=1)
    _queue: deque[str] = field(default_factory=lambda: deque(maxlen=QUEUE_MAX))
    _last: dict[str, datetime] = field(default_factory=dict)
    _day: tuple[object, int] = (None, 0)

    def offer(self, record: MeasurementRecord, now: datetime) -> bool:
        """Queue the record's URL when it is a web_connectivity block worth tracing."""
        v = record.verdict
        url = record.input
        if (not self.enabled or record.test_name != "web_connectivity" or not url
                or v.status is not Status.BLOCKED or v.blocking not in TRACEABLE
                or url in self._queue):
            return False
        last = self._last.get(url)
        if last is not None and now - last < self.cooldown:
            return False
        self._queue.append(url)
        return True

    def take(self, now: datetime) -> list[str]:
        """The URLs to trace now (within today's ration); they leave the queue."""
        day, used = self._day
        if day != now.date():
            used = 0
        out: list[str] = []
        while self._queue and used < self.per_day:
            url = self._queue.popleft()
            self._last[url] = now
            out.append(url)
            used += 1
        self._day = (now.date(), used)
        # forget old cooldowns: bounded memory on a long-running agent
        for url in [u for u, t in self._last.items() if now - t >= self.cooldown]:
            del self._last[url]
        return out
