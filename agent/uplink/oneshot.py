"""Publishing for a one-shot run (``vigil-agent run --once``) when the config has a broker.

The long-running agent owns its outbox and publisher for months (agent.daemon.backend); a
``--once`` run borrows them for its duration: every record is committed to the outbox first,
then written to the run's own sink (JSONL), and a publisher drains the outbox while the run
measures.  At the end the publisher gets a bounded grace to finish; what no collector has
receipted yet (with receipts off: what the broker has not acknowledged) stays in the outbox
for the next run or the daemon.

When the outbox is in use (the daemon is running on the same state directory) the run does
not publish; its records are still in its JSONL output, and a warning says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from agent.config import AgentConfig
from agent.errors import OutboxError
from agent.identity import Identity
from agent.uplink.outbox import Outbox, OutboxSink, limits_from_config
from agent.uplink.publisher import Publisher, settings_from_config
from agent.wire.record import MeasurementRecord

log = logging.getLogger("vigil.uplink")

DRAIN_GRACE = 10.0  # seconds the publisher gets after the last measurement
STOP_GRACE = 5.0


class Sink(Protocol):
    async def put(self, record: MeasurementRecord) -> None: ...


class TeeSink:
    """Each record to every sink, in order (the durable outbox first).

    A sink that fails does not keep the record from the others; the first error is raised
    once all were tried (a full disk under the outbox still leaves the JSONL line, if it can).
    """

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    async def put(self, record: MeasurementRecord) -> None:
        first: Exception | None = None
        for sink in self.sinks:
            try:
                await sink.put(record)
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first


@contextlib.asynccontextmanager
async def publishing(
    config: AgentConfig, identity: Identity, sink: Sink, *, grace: float = DRAIN_GRACE
) -> AsyncIterator[Sink]:
    """Yield the sink to measure into: ``sink`` alone, or outbox + ``sink`` with a publisher."""
    base = config.path.parent if config.path is not None else None
    settings = settings_from_config(config.section("mqtt"), base)
    if settings is None:
        yield sink
        return
    try:
        outbox = Outbox(config.state_dir, identity, limits_from_config(config.section("outbox")))
    except OutboxError as exc:
        log.warning("not publishing this run (%s); results are in the output file only", exc)
        yield sink
        return
    try:
        publisher = Publisher(outbox, settings)
        stop = asyncio.Event()
        task = asyncio.create_task(publisher.run(stop), name="vigil publisher")
        try:
            yield TeeSink(OutboxSink(outbox, on_commit=publisher.notify), sink)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            # Ready rows, and (receipts on) sent rows whose receipt has not come yet.
            while (
                (outbox.has_ready() or (settings.receipts and outbox.awaiting_receipt()))
                and loop.time() < deadline
                and not task.done()
            ):
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            done, _ = await asyncio.wait([task], timeout=STOP_GRACE)
            if not done:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        left = len(outbox)
        if left:
            log.warning("%d record(s) not yet stored by a collector stay in the outbox for "
                        "the next run", left)
    finally:
        outbox.close()
