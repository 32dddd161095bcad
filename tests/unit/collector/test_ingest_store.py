"""How the ingest treats store failures: retry outages, isolate a row the database refuses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import pytest

from agent.wire.topics import shared
from collector.config import BrokerConfig, IngestConfig
from collector.ingest.pipeline import Ingest, paho_of
from collector.ingest.verify import Accepted, KeyTable, Verifier
from collector.store.aio import AsyncStore
from collector.store.base import (
    IngestBatch,
    InsertResult,
    MeasurementRow,
    ProbeRecord,
    StoreError,
    StoreUnavailable,
)
from lab.probes import TestProbe


class FlakyStore:
    """Fails the first ``outages`` writes as unavailable; refuses any batch holding ``poison``."""

    url = "fake://"

    def __init__(self, outages: int = 0, poison: str | None = None) -> None:
        self.outages = outages
        self.poison = poison
        self.rows: dict[str, MeasurementRow] = {}
        self.quarantined: list[Any] = []
        self.calls = 0

    def write_batch(self, batch: IngestBatch) -> InsertResult:
        self.calls += 1
        if self.outages > 0:
            self.outages -= 1
            raise StoreUnavailable("database restarting")
        if any(r.measurement_id == self.poison for r in batch.measurements):
            raise StoreError("invalid input syntax")
        new = [r for r in batch.measurements if r.measurement_id not in self.rows]
        for r in new:
            self.rows[r.measurement_id] = r
        self.quarantined += list(batch.rejections)
        dups = tuple(r.measurement_id for r in batch.measurements if r not in new)
        return InsertResult(new=len(new), duplicates=dups)

    def close(self) -> None:
        pass


@pytest.fixture
def rows() -> list[MeasurementRow]:
    p = TestProbe.new()
    v = Verifier(KeyTable([ProbeRecord(p.probe_id, p.public_raw, "", datetime.now(UTC))]))
    out = []
    for _ in range(5):
        o = v.check(p.topic, p.envelope(), time.time())
        assert isinstance(o, Accepted)
        out.append(o.row)
    return out


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    ex = ThreadPoolExecutor(1)
    yield ex
    ex.shutdown(wait=True)


def ingest_for(store: FlakyStore, executor: ThreadPoolExecutor) -> Ingest:
    return Ingest(
        BrokerConfig(client_id="t"),
        IngestConfig(retry_initial_s=0.01, retry_max_s=0.02),
        AsyncStore(store, executor),  # type: ignore[arg-type]
    )


async def test_outage_is_retried_until_stored(
    rows: list[MeasurementRow], executor: ThreadPoolExecutor
) -> None:
    store = FlakyStore(outages=3)
    ingest = ingest_for(store, executor)
    result = await ingest._store(IngestBatch(measurements=rows))
    assert result.new == 5 and len(store.rows) == 5
    assert ingest.stats.store_retries == 3 and store.calls == 4


async def test_a_refused_row_is_quarantined_not_blocking(
    rows: list[MeasurementRow], executor: ThreadPoolExecutor
) -> None:
    store = FlakyStore(poison=rows[2].measurement_id)
    ingest = ingest_for(store, executor)
    result = await ingest._store(IngestBatch(measurements=rows))
    assert result.new == 4
    assert set(store.rows) == {r.measurement_id for i, r in enumerate(rows) if i != 2}
    [q] = store.quarantined
    assert q.reason == "internal_error" and q.raw == rows[2].payload
    assert ingest.stats.rejected["internal_error"] == 1


def test_shared_subscription_names() -> None:
    assert shared("collectors", "a/+/b") == "$share/collectors/a/+/b"
    assert shared("", "a/+/b") == "a/+/b"


async def test_paho_client_is_reachable() -> None:
    client = aiomqtt.Client("127.0.0.1", 1, identifier="x")
    inner = paho_of(client)
    inner.manual_ack_set(True)  # the API the ingest relies on exists
    assert callable(inner.ack)
