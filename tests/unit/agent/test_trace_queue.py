"""Which blocked URLs the long-running agent traces, and how often (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from agent.daemon.traces import QUEUE_MAX, TraceQueue
from agent.wire.record import Blocking, Status, Verdict
from lab.records import make_record

T0 = datetime(2026, 6, 18, 10, tzinfo=UTC)


@pytest.mark.parametrize(("test_name", "verdict", "queued"), [
    ("web_connectivity", Verdict(Status.BLOCKED, Blocking.TLS, "tls.sni_reset"), True),
    ("web_connectivity", Verdict(Status.BLOCKED, Blocking.TCP_IP, "tcp.reset"), True),
    ("web_connectivity", Verdict(Status.BLOCKED, Blocking.HTTP_FAILURE, "http.reset"), True),
    ("web_connectivity", Verdict(Status.BLOCKED, Blocking.DNS, "dns.nxdomain"), False),
    ("web_connectivity", Verdict(Status.OK), False),
    ("censor_trace", Verdict(Status.BLOCKED, Blocking.TLS, "trace.reset_at_hop"), False),
])
def test_what_is_worth_tracing(test_name: str, verdict: Verdict, queued: bool) -> None:
    q = TraceQueue(enabled=True)
    rec = replace(make_record("a" * 26, 1, input="https://x.test/", verdict=verdict),
                  test_name=test_name)
    assert q.offer(rec, T0) is queued
    assert q.take(T0) == (["https://x.test/"] if queued else [])


def test_ration_cooldown_and_opt_in() -> None:
    blocked = Verdict(Status.BLOCKED, Blocking.TLS, "tls.sni_reset")
    off = TraceQueue()
    assert not off.offer(make_record("a" * 26, 1, input="https://x.test/", verdict=blocked), T0)
    q = TraceQueue(enabled=True, per_day=2)
    for i in range(QUEUE_MAX + 3):
        q.offer(make_record("a" * 26, i, input=f"https://s{i}.test/", verdict=blocked), T0)
    assert len(q.take(T0)) == 2
    assert q.take(T0 + timedelta(hours=1)) == []  # today's ration is spent
    nxt = q.take(T0 + timedelta(days=1))
    assert len(nxt) == 2
    again = make_record("a" * 26, 1, input=nxt[0], verdict=blocked)
    assert not q.offer(again, T0 + timedelta(days=1, hours=1))  # traced less than a day ago
    assert q.offer(again, T0 + timedelta(days=2, hours=1))
