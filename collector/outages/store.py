"""Outage events kept in the collector's store (SQLite or PostgreSQL): the ``outage_events``
table, beside the store's own tables (``collector.events.table`` says how and why)."""

from __future__ import annotations

from typing import Any

from collector.events.table import EventTable
from collector.outages.detector import OutageEvent


class OutageEventStore(EventTable[OutageEvent]):
    def __init__(self, store: Any) -> None:
        super().__init__(store, "outage_events", OutageEvent, what="outage events",
                         ties_by_id=False)
