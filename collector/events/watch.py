"""A detector's pass over the store, its webhook notifications and the loop that repeats it.

A watcher's ``detect`` (blocking, run on a worker thread) finds and saves the events of one
pass; ``check`` runs it and POSTs each newly opened or closed event to the webhooks;
``watch`` repeats ``check`` every ``step`` seconds.

Webhook: ``POST <url>`` with ``Content-Type: application/json`` and the body
``{"type": "<kind>.opened" | "<kind>.closed", "event": {...event.to_json()...}}``; a 2xx
answer counts as delivered and is remembered in the store (``EventTable.mark_notified``), so a
restart does not notify twice; anything else is retried at the next pass, at most
``max_attempts`` times per notification.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp

from collector.events.table import EventTable, Stored

log = logging.getLogger("vigil.events")


class WatchSettings(Protocol):
    """What the loop and the notifications need of a detector's watch configuration."""

    @property
    def webhooks(self) -> tuple[str, ...]: ...

    @property
    def webhook_timeout(self) -> float: ...

    @property
    def max_attempts(self) -> int: ...

    @property
    def step(self) -> float:
        """Seconds between two passes."""


async def post_webhook(session: aiohttp.ClientSession, url: str, payload: dict[str, Any],
                       timeout: float) -> bool:
    try:
        async with session.post(url, json=payload,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            await resp.read()
            return 200 <= resp.status < 300
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        # The host only: webhook URLs often carry their secret token in the path or userinfo.
        log.warning("webhook to %s failed: %s", urlsplit(url).hostname, type(exc).__name__)
        return False


E = TypeVar("E", bound=Stored)
C = TypeVar("C", bound=WatchSettings)


class EventWatcher(ABC, Generic[E, C]):
    """One detector's passes: ``kind`` names its webhook notifications (``outage.opened``)."""

    kind: ClassVar[str]

    def __init__(self, config: C, events_store: EventTable[E]) -> None:
        self.config = config
        self.events_store = events_store
        self.attempts: dict[tuple[str, str], int] = {}

    @abstractmethod
    def detect(self, now: float) -> list[E]:
        """One detection over the store at ``now``, its events saved (blocking)."""

    async def check(self, now: float, session: aiohttp.ClientSession | None = None
                    ) -> list[E]:
        events = await asyncio.to_thread(self.detect, now)
        if self.config.webhooks and session is not None:
            await self._notify(events, session)
        return events

    async def _notify(self, events: Sequence[E], session: aiohttp.ClientSession) -> None:
        es = self.events_store
        for e in events:
            kinds = ["opened"] + ([] if e.end is None else ["closed"])
            done = await asyncio.to_thread(es.notified, e.event_id)
            for what in kinds:
                key = (e.event_id, what)
                if what in done or self.attempts.get(key, 0) >= self.config.max_attempts:
                    continue
                self.attempts[key] = self.attempts.get(key, 0) + 1
                payload = {"type": f"{self.kind}.{what}", "event": e.to_json()}
                results = [await post_webhook(session, url, payload,
                                              self.config.webhook_timeout)
                           for url in self.config.webhooks]
                if all(results):
                    await asyncio.to_thread(es.mark_notified, e.event_id, what)

    async def watch(self, *, max_passes: int, stop: asyncio.Event | None = None) -> None:
        """Check every ``step`` seconds, ``max_passes`` times at most (or until ``stop``)."""
        stop = stop or asyncio.Event()
        async with aiohttp.ClientSession() as session:
            for n in range(max_passes):
                try:
                    await self.check(time.time(), session)
                except Exception:  # one bad pass must not end the watch
                    logging.getLogger(f"vigil.{self.kind}s").exception(
                        "%s detection pass failed", self.kind)
                if n == max_passes - 1:
                    return
                try:
                    await asyncio.wait_for(stop.wait(), self.config.step)
                    return
                except TimeoutError:
                    continue
