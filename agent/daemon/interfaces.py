"""What the long-running agent's async loop needs from the outside world.

``agent.daemon.loop`` drives a :class:`Backend` (``agent.daemon.backend.RealBackend`` in
production, fakes in tests) and reads the time from a :class:`Clock`; neither side imports the
other's internals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from agent.config import AgentConfig
from agent.daemon.settings import Settings
from agent.wire.record import MeasurementRecord, Target


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class Measurer(Protocol):
    """One open measurement session (MeasureContext and control client)."""

    async def measure(self, test: str, target: Target) -> MeasurementRecord | None:
        """Measure; None when the experiment could not run.  Writes nothing anywhere."""
        ...


@dataclass(frozen=True, slots=True)
class LinkStatus:
    broker_connected: bool = False
    last_upload: datetime | None = None
    outbox_pending: int | None = None


CommandHandler = Callable[[str, bytes], None]


class Backend(Protocol):
    probe_id: str

    def plan(self, kind: str, inputs: Sequence[Target] | None) -> list[tuple[str, Target]]:
        """(test name, target) pairs for one run of ``kind`` (campaigns pass their inputs)."""
        ...

    def session(self, kind: str) -> AbstractAsyncContextManager[Measurer]: ...

    async def store(self, record: MeasurementRecord) -> None:
        """Commit a record durably to the outbox (returns after fsync)."""
        ...

    def bytes_used(self) -> int:
        """Bytes moved by measurements since start (monotonic counter)."""
        ...

    async def refresh(self) -> str:
        """Refresh test lists and fingerprints; a one-line summary."""
        ...

    async def housekeeping(self) -> None: ...

    def link(self) -> LinkStatus: ...

    async def serve(self, stop: asyncio.Event, on_command: CommandHandler) -> None:
        """Run the publisher (and command subscription) until ``stop`` is set."""
        ...

    def probe_cc(self) -> str | None:
        """The country the control helper says we are in (None until known)."""
        ...

    def reconfigure(self, config: AgentConfig) -> None: ...

    async def aclose(self) -> None: ...


BackendFactory = Callable[[AgentConfig, Settings], Backend]
