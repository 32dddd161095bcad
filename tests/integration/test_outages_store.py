"""Outage detection over a real SQLite store, events persisted, webhooks to a local server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from collector.outages.detector import DetectorConfig
from collector.outages.store import OutageEventStore
from collector.outages.watch import WatchConfig, Watcher
from collector.store import open_store
from collector.store.base import IngestBatch, MeasurementRow, StatusUpdate
from tests.support.webhooks import WebhookReceiver

HB = 10.0
CFG = DetectorConfig(heartbeat_interval=HB, baseline_window=600.0)


def _row(probe: str, t: float, n: int, outage: dict[str, Any] | None = None) -> MeasurementRow:
    record = {"test_name": "connectivity", "probe_id": probe,
              "test_keys": {"state": "online", "outage": outage}}
    return MeasurementRow(
        measurement_id=f"0190a000-0000-7000-8000-{n:012d}", probe_id=probe,
        test_name="connectivity", input=None, domain=None, category_code=None,
        probe_cc="IR", probe_asn="AS64500", probe_network_name="Lab ISP", status="ok",
        blocking=None, reason="", confirmed=False, start_ts=t, received_ts=t,
        payload_type="application/vnd.vigil.measurement+json; version=1",
        payload=json.dumps(record).encode(), signature=b"\0" * 64,
    )


def populate(store: Any, probes: list[str], start: float, cut: float, back: float,
             end: float) -> None:
    for p in probes:
        store.add_probe(p, bytes(32 - len(p)) + p.encode(), note="test")
    statuses = []
    t = start
    while t < end:
        for i, p in enumerate(probes):
            ts = t + i * 0.7
            if not cut <= ts < back:
                statuses.append(StatusUpdate(p, "online", b"{}", ts))
        t += HB
    rows = [_row(p, start + 1, i) for i, p in enumerate(probes)]
    store.write_batch(IngestBatch(measurements=rows, statuses=statuses))


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        yield s
    finally:
        s.close()


async def test_shutdown_found_saved_and_notified(store: Any) -> None:
    async with WebhookReceiver() as hook:
        probes = ["pa", "pb", "pc", "pd"]
        t0 = time.time() + 5.0  # probes are enrolled just before
        cut, back = t0 + 300.0, t0 + 420.0
        populate(store, probes, t0, cut, back, t0 + 500.0)
        watcher = Watcher(store, WatchConfig(CFG, (hook.url,)))
        import aiohttp

        async with aiohttp.ClientSession() as session:
            during = await watcher.check(cut + 2 * HB, session)
            after = await watcher.check(t0 + 500.0, session)
            again = await watcher.check(t0 + 500.0, session)
        (open_,) = [e for e in during if e.group == "asn:AS64500"]
        assert open_.ongoing and open_.detected_at - cut <= 2 * HB
        (closed,) = [e for e in after if e.group == "asn:AS64500"]
        assert closed.event_id == open_.event_id
        assert closed.end is not None and back <= closed.end <= back + HB
        assert set(closed.affected) == set(probes)
        assert len(again) == len(after)
        types = sorted((r["type"], r["event"]["group"]) for r in hook.received)
        assert types == [("outage.closed", "asn:AS64500"), ("outage.closed", "cc:IR"),
                         ("outage.opened", "asn:AS64500"), ("outage.opened", "cc:IR")]
        saved = OutageEventStore(store).events()
        assert {e.event_id for e in saved} == {e.event_id for e in after}
        assert OutageEventStore(store).notified(closed.event_id) == {"opened", "closed"}


async def test_failed_webhook_is_retried_later(store: Any) -> None:
    probes = ["pa", "pb"]
    t0 = time.time() + 5.0  # probes are enrolled just before
    populate(store, probes, t0, t0 + 300.0, t0 + 9999.0, t0 + 400.0)
    watcher = Watcher(store, WatchConfig(CFG, ("http://127.0.0.1:9/nothing",), max_attempts=2))
    import aiohttp

    async with aiohttp.ClientSession() as session:
        events = await watcher.check(t0 + 400.0, session)
        assert events
        for e in events:
            assert OutageEventStore(store).notified(e.event_id) == set()
        await watcher.check(t0 + 400.0, session)
        await watcher.check(t0 + 400.0, session)
    assert max(watcher.attempts.values()) == 2  # bounded


def test_agent_records_confirm(store: Any) -> None:
    probes = ["pa", "pb"]
    t0 = time.time() + 5.0  # probes are enrolled just before
    populate(store, probes, t0, t0 + 300.0, t0 + 420.0, t0 + 500.0)
    iso = "%Y-%m-%dT%H:%M:%SZ"
    outage = {"start": time.strftime(iso, time.gmtime(t0 + 305.0)),
              "end": time.strftime(iso, time.gmtime(t0 + 415.0)),
              "states": ["offline"], "failed": [], "checks": 2, "last_ok": None}
    store.write_batch(IngestBatch(measurements=[_row("pa", t0 + 430.0, 99, outage)]))
    from collector.outages.watch import detect_now

    events = detect_now(store, t0 + 500.0, CFG)
    (e,) = [x for x in events if x.group == "asn:AS64500"]
    assert e.confirmed_by == ("pa",)


def test_cli_check_and_list(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    s = open_store(url)
    t0 = time.time() + 5.0
    try:
        populate(s, ["pa", "pb", "pc"], t0, t0 + 300.0, t0 + 9999.0, t0 + 400.0)
        events = Watcher(s, WatchConfig(CFG)).events_store
        from collector.outages.watch import detect_now

        for e in detect_now(s, t0 + 400.0, CFG):
            events.save(e)
    finally:
        s.close()
    from collector.cli.main import main

    runner = CliRunner()
    res = runner.invoke(main_cmd(), ["check", "--store", url, "--heartbeat", str(HB),
                                     "--window", "600", "--json"])
    assert res.exit_code == 0, res.output  # now: no history yet at the real clock
    res = runner.invoke(main_cmd(), ["list", "--store", url, "--ongoing", "--json"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.splitlines() if x.strip()]
    assert {x["group"] for x in lines} == {"asn:AS64500", "cc:IR"}
    assert all(x["ongoing"] for x in lines)
    res = runner.invoke(main_cmd(), ["list", "--store", url])
    assert res.exit_code == 0 and "asn:AS64500" in res.output and "ongoing" in res.output
    assert main(["outages", "list", "--store", url, "--since", "not-a-time"]) == 2
    assert main(["outages", "check", "--store", url, "--webhook", "ftp://x"]) == 2


def main_cmd() -> Any:
    from collector.cli.outages import outages

    return outages


async def test_serve_runs_the_outage_detector_in_the_background(tmp_path: Path) -> None:
    """``serve`` with [outages] enabled: passes every quarter heartbeat on a store connection
    of its own, counted in /metrics and the API, and a clean stop with the app."""
    from aiohttp.test_utils import TestClient, TestServer

    from collector.config import ApiConfig, CollectorConfig, OutagesConfig, StoreConfig
    from collector.runtime import RUNTIME, ServeSettings
    from collector.service import create_app
    from tests.support.waiting import wait_until

    config = CollectorConfig(store=StoreConfig(url=f"sqlite:///{tmp_path / 'serve.db'}"),
                             api=ApiConfig(), outages=OutagesConfig(heartbeat_s=1.0)).validate()
    app = create_app(ServeSettings(config=config, ingest=False, slowdowns=False))
    async with TestClient(TestServer(app)) as client:
        rt = app[RUNTIME]
        await wait_until(lambda: rt.outages.passes >= 2, "two outage detection passes")
        body = await (await client.get("/api/v1/outages")).json()
        assert body["detector"]["running"] is True and body["detector"]["last_success"]
        metrics = await (await client.get("/metrics")).text()
        assert "vigil_outage_detector_enabled 1.0" in metrics
        assert "vigil_slowdown_detector_enabled 0.0" in metrics
    assert rt.failure is None and rt.outages.failures == 0
