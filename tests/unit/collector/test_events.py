"""The event code outages and slowdowns share: the record's JSON, a batch run's bookkeeping,
the events table (on SQLite) and the watcher's pass and webhook bookkeeping."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from collector.events.record import EventLog, EventRecord, group_names, stable_id
from collector.events.table import EventTable
from collector.events.watch import EventWatcher
from collector.store import open_store
from collector.store.base import StoreError


@dataclass(frozen=True, slots=True)
class Sample(EventRecord):
    event_id: str
    group: str
    start: float
    detected_at: float
    end: float | None
    affected: tuple[str, ...]
    count: int
    evidence: dict[str, Any] = field(default_factory=dict)


def test_json_follows_the_fields_with_the_group_parts_and_ongoing() -> None:
    e = Sample("e1", "asn:AS64500", 10.0, 12.5, None, ("p2", "p1"), 3, {"k": [1]})
    assert e.ongoing
    body = e.to_json()
    assert list(body) == ["event_id", "group", "group_kind", "group_key", "start",
                          "detected_at", "end", "ongoing", "affected", "count", "evidence"]
    assert body["group_kind"] == "asn" and body["group_key"] == "AS64500"
    assert body["affected"] == ["p2", "p1"] and body["end"] is None
    assert Sample.from_json(json.loads(json.dumps(body))) == e
    closed = Sample("e2", "cc:IR", 1.0, 2.0, 5.0, (), 0)
    assert closed.to_json()["ongoing"] is False
    assert Sample.from_json(closed.to_json()) == closed


def test_from_json_defaults_the_collections_and_counts_and_needs_the_rest() -> None:
    e = Sample.from_json({"event_id": "e", "group": "cc:IR", "start": "1", "detected_at": 2})
    assert (e.start, e.end, e.affected, e.count, e.evidence) == (1.0, None, (), 0, {})
    with pytest.raises(KeyError):
        Sample.from_json({"event_id": "e", "group": "cc:IR", "start": 1})


def test_a_field_without_a_json_form_is_refused() -> None:
    @dataclass(frozen=True, slots=True)
    class Odd(EventRecord):
        event_id: str
        group: str
        start: float
        end: float | None
        when: list[float]

    with pytest.raises(TypeError, match=r"Odd\.when"):
        Odd("e", "cc:IR", 1.0, None, [1.0]).to_json()


def test_groups_and_ids() -> None:
    assert group_names("AS64500", "IR") == ["asn:AS64500", "cc:IR"]
    assert group_names("AS0", "ZZ") == [] and group_names("", "") == []
    assert stable_id("cc:IR", "1.000") == stable_id("cc:IR", "1.000")
    assert stable_id("cc:IR", "1.000") != stable_id("cc:IR", "2.000")
    assert len(stable_id("x")) == 16


def test_event_log_keeps_closed_and_still_open_events_oldest_first() -> None:
    log: EventLog[Sample] = EventLog()
    a = Sample("a", "cc:IR", 5.0, 6.0, 9.0, (), 1)
    b = Sample("b", "asn:AS1", 5.0, 6.0, None, (), 1)
    c = Sample("c", "cc:IR", 1.0, 2.0, 3.0, (), 1)
    log.step("opened", a)
    log.step("updated", a)
    log.step("closed", a)
    log.step(None, None)
    log.end_of_group(b)
    log.step("closed", c)
    log.end_of_group(None)
    assert [e.event_id for e in log.events()] == ["c", "b", "a"]


# ---- the table ---------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    s = open_store(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        yield s
    finally:
        s.close()


def table(store: Any) -> EventTable[Sample]:
    return EventTable(store, "sample_events", Sample, what="samples")


def test_table_saves_updates_lists_and_retracts(store: Any) -> None:
    t = table(store)
    old = Sample("old", "cc:IR", 100.0, 101.0, 200.0, ("p1",), 1)
    now = Sample("now", "asn:AS1", 300.0, 301.0, None, ("p2",), 2)
    tie = Sample("tie", "cc:IR", 300.0, 301.0, 350.0, ("p3",), 1)
    for e in (old, now, tie):
        t.save(e)
    t.save(Sample("old", "cc:IR", 100.0, 101.0, 250.0, ("p1", "p4"), 2))  # recomputed
    assert [e.event_id for e in t.events()] == ["now", "tie", "old"]
    assert t.events(group="cc:IR")[1].affected == ("p1", "p4")
    assert [e.event_id for e in t.events(ongoing=True)] == ["now"]
    assert [e.event_id for e in t.events(since=260.0)] == ["now", "tie"]
    assert len(t.events(limit=1)) == 1
    assert {e.event_id for e in t.known_before(320.0)} == {"now", "tie"}
    assert [e.event_id for e in t.known_before(260.0)] == []
    t.retract(["tie", "absent"])
    assert [e.event_id for e in t.events()] == ["now", "old"]
    # a second opening finds the table and its rows
    assert [e.event_id for e in table(store).events()] == ["now", "old"]


def test_table_remembers_notifications(store: Any) -> None:
    t = table(store)
    t.save(Sample("e", "cc:IR", 1.0, 2.0, None, (), 0))
    assert t.notified("e") == set() and t.notified("absent") == set()
    t.mark_notified("e", "opened")
    t.mark_notified("e", "opened")
    t.mark_notified("e", "closed")
    assert t.notified("e") == {"opened", "closed"}


def test_table_needs_an_sql_store_and_a_table_name(store: Any) -> None:
    with pytest.raises(StoreError, match="samples need an SQL store"):
        EventTable(object(), "sample_events", Sample, what="samples")
    with pytest.raises(ValueError):
        EventTable(store, "events; DROP TABLE x", Sample, what="samples")


# ---- the watcher -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    webhooks: tuple[str, ...] = ()
    webhook_timeout: float = 2.0
    max_attempts: int = 2
    step: float = 0.01


class FixedWatcher(EventWatcher[Sample, Settings]):
    """Finds the same events on every pass, and counts its passes."""

    kind = "sample"

    def __init__(self, store: Any, settings: Settings, found: list[Sample]) -> None:
        super().__init__(settings, table(store))
        self.found = found
        self.passes = 0

    def detect(self, now: float) -> list[Sample]:
        self.passes += 1
        for e in self.found:
            self.events_store.save(e)
        return self.found


async def test_watch_runs_its_passes_and_saves_what_it_finds(store: Any) -> None:
    found = [Sample("e", "cc:IR", 1.0, 2.0, None, (), 0)]
    watcher = FixedWatcher(store, Settings(), found)
    await watcher.watch(max_passes=3)
    assert watcher.passes == 3
    assert [e.event_id for e in watcher.events_store.events()] == ["e"]
    stop = asyncio.Event()
    stop.set()
    await watcher.watch(max_passes=10, stop=stop)
    assert watcher.passes == 4  # the first pass, then the stop


async def test_undelivered_notifications_are_bounded(store: Any) -> None:
    import aiohttp

    from tests.support.net import closed_port

    url = f"http://127.0.0.1:{closed_port()}/hook"
    found = [Sample("e", "cc:IR", 1.0, 2.0, 3.0, (), 0)]
    watcher = FixedWatcher(store, Settings(webhooks=(url,)), found)
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            assert await watcher.check(10.0, session) == found
    assert watcher.attempts == {("e", "opened"): 2, ("e", "closed"): 2}
    assert watcher.events_store.notified("e") == set()
