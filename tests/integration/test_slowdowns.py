"""Whole-network slowdowns through the real stores, the real broker and ingest, the API, the
CLI and a webhook receiver.

Ground truth: several probes of one ISP measure benign transfers once per interval; from a
known time their rates drop to 10 % of normal for several intervals, then come back.  Beside
them a probe on a slow home line (2 Mbit/s all along) and a probe of another ISP that is not
slowed.  Times are in the past (the probes' own ``measurement_start_time``), as an agent's
outbox would deliver them, so the test needs no waiting for intervals to pass.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from agent.wire import envelope as wire
from collector.config import (
    ApiConfig,
    CollectorConfig,
    OutagesConfig,
    SlowdownsConfig,
    StoreConfig,
)
from collector.runtime import ServeSettings
from collector.service import create_app
from collector.slowdowns.detector import SlowdownConfig
from collector.slowdowns.store import SlowdownStore
from collector.slowdowns.watch import SlowdownWatchConfig, SlowdownWatcher
from collector.store import open_store
from collector.store.base import IngestBatch, MeasurementRow
from lab.probes import TestProbe, iso
from tests.support.collector import enrol, publish, serve_config, wait_ingest_connected, wait_json
from tests.support.webhooks import WebhookReceiver

INTERVAL = 20.0  # simulated measurement interval, seconds
BINS = 40  # history length, intervals
SLOW_FROM, SLOW_TO = 25.3, 32.6  # in intervals from the first one: 7 intervals at 10 %
CFG = SlowdownConfig(interval=INTERVAL, baseline_window=20 * INTERVAL).validate()
API = "/api/v1"
WAIT = 60.0


@dataclass(frozen=True)
class Plan:
    """Who measures what and when; ``t0`` is the first interval's start (in the past)."""

    t0: float
    probes: list[TestProbe]
    slow_line: TestProbe
    other_isp: TestProbe

    @property
    def start(self) -> float:
        return self.t0 + SLOW_FROM * INTERVAL

    @property
    def end(self) -> float:
        return self.t0 + SLOW_TO * INTERVAL


def benign_keys(rate_bps: float | None, rng: random.Random) -> dict[str, Any]:
    """Throttling test keys as the agent writes them, its benign transfers at ``rate_bps``
    (None: every transfer failed, so the record has no rate)."""
    transfers = []
    for rnd in range(2):
        if rate_bps is None:
            transfers.append({"kind": "benign_sni", "round": rnd, "server_name": "a.example",
                              "address": "198.18.0.9:443", "failure": "generic_timeout_error",
                              "t0": 0.1, "t": 5.1, "bytes": 0, "first_byte_t": None,
                              "stop": "failure", "samples": []})
            continue
        size = 1_000_000
        seconds = size * 8 / (rate_bps * rng.lognormvariate(0.0, 0.2))
        transfers.append({"kind": "benign_sni", "round": rnd, "server_name": "a.example",
                          "address": "198.18.0.9:443", "failure": None, "t0": 0.1,
                          "t": 0.1 + 0.03 + seconds, "bytes": size, "first_byte_t": 0.03,
                          "stop": "bytes", "samples": []})
    return {"target": "www.example.com", "benign_sni": "a.example", "transfers": transfers,
            "analysis": {"sni": {"decision": "not_throttled"}}}


def records(plan: Plan, seed: int = 7) -> dict[TestProbe, list[dict[str, Any]]]:
    rng = random.Random(seed)
    normal = {p.probe_id: 10 ** rng.uniform(7.0, 8.5) for p in plan.probes}
    normal[plan.slow_line.probe_id] = 2e6
    normal[plan.other_isp.probe_id] = 3e7
    out: dict[TestProbe, list[dict[str, Any]]] = {}
    for p in [*plan.probes, plan.slow_line, plan.other_isp]:
        phase = rng.random() * INTERVAL
        asn = "AS64501" if p is plan.other_isp else "AS64500"
        recs = []
        for k in range(BINS):
            t = plan.t0 + k * INTERVAL + phase
            rate: float | None = normal[p.probe_id]
            if p is not plan.other_isp and plan.start <= t < plan.end:
                rate = normal[p.probe_id] * 0.1
            if k == 30 and p is plan.probes[0]:
                rate = None  # a failed measurement: missing data, not a zero
            recs.append(p.record(test_name="throttling", input="https://www.example.com/",
                                 category_code="NEWS", probe_asn=asn,
                                 probe_network_name="Lab ISP", start=t,
                                 test_keys=benign_keys(rate, rng),
                                 verdict={"status": "ok", "blocking": None, "reason": "",
                                          "confirmed": False}))
        out[p] = recs
    return out


def make_plan(now: float) -> Plan:
    t0 = (now // INTERVAL - BINS - 1) * INTERVAL
    return Plan(t0, [TestProbe.new() for _ in range(5)], TestProbe.new(), TestProbe.new())


def row(rec: dict[str, Any], received: float) -> MeasurementRow:
    payload = wire.encode_record(rec)
    start = rec["measurement_start_time"]
    from datetime import datetime

    ts = datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()
    return MeasurementRow(
        measurement_id=rec["measurement_id"], probe_id=rec["probe_id"],
        test_name=rec["test_name"], input=rec["input"], domain="www.example.com",
        category_code=rec["category_code"], probe_cc=rec["probe_cc"],
        probe_asn=rec["probe_asn"], probe_network_name=rec["probe_network_name"],
        status="ok", blocking=None, reason="", confirmed=False, start_ts=ts,
        received_ts=received, payload_type=wire.PAYLOAD_TYPE, payload=payload,
        signature=b"\0" * 64,
    )


def plan_batch(plan: Plan, now: float) -> IngestBatch:
    """Every record of the plan, as received at ``now``."""
    return IngestBatch(measurements=[row(r, now) for recs in records(plan).values() for r in recs])


def check_event(events: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """The ISP's event: found in time, timed within an interval, the right probes."""
    isp = [e for e in events if e["group"] == "asn:AS64500"]
    assert len(isp) == 1, events
    e = isp[0]
    assert e["detected_at"] - plan.start <= 3 * INTERVAL
    assert abs(e["start"] - plan.start) <= INTERVAL
    assert e["end"] is not None and abs(e["end"] - plan.end) <= INTERVAL
    # the whole ISP slowed, the 2 Mbit/s line too: against its own 2 Mbit/s baseline
    assert set(e["affected"]) == {p.probe_id for p in [*plan.probes, plan.slow_line]}
    assert e["evidence"]["probes"][plan.slow_line.probe_id]["baseline_bps"] < 3e6
    for pid in e["affected"]:
        ev = e["evidence"]["probes"][pid]
        assert ev["observed_bps"] <= 0.2 * ev["baseline_bps"]
    assert not [x for x in events if x["group"] == "asn:AS64501"]
    return e


# ---- through the stores ---------------------------------------------------------------------
async def test_slowdown_found_saved_notified_and_listed(store_url: str) -> None:
    now = time.time()
    plan = make_plan(now)
    store = open_store(store_url)
    try:
        store.write_batch(plan_batch(plan, now))
        async with WebhookReceiver() as hook:
            watcher = SlowdownWatcher(store, SlowdownWatchConfig(CFG, (hook.url,)))
            async with aiohttp.ClientSession() as session:
                first = await watcher.check(now, session)
                again = await watcher.check(now, session)
        check_event([e.to_json() for e in first], plan)
        assert {e.event_id for e in again} == {e.event_id for e in first}
        kinds = sorted((r["type"], r["event"]["group"]) for r in hook.received)
        assert kinds == [("slowdown.closed", "asn:AS64500"), ("slowdown.closed", "cc:IR"),
                         ("slowdown.opened", "asn:AS64500"), ("slowdown.opened", "cc:IR")]
        st = SlowdownStore(store)
        saved = st.events()
        assert {e.event_id for e in saved} == {e.event_id for e in first}
        assert all(st.notified(e.event_id) == {"opened", "closed"} for e in saved)
        # every throttling record was read once, the failed one kept as missing data
        n = store.measurement_count()
        assert len(st.observations(0, now + 1)) == n - 1
        assert st.sample_count() == n
    finally:
        store.close()


async def test_api_lists_slowdowns_and_the_signal(store_url: str) -> None:
    now = time.time()
    plan = make_plan(now)
    store = open_store(store_url)
    try:
        store.write_batch(plan_batch(plan, now))
        await SlowdownWatcher(store, SlowdownWatchConfig(CFG)).check(now)
    finally:
        store.close()
    config = CollectorConfig(store=StoreConfig(url=store_url), api=ApiConfig(),
                             outages=OutagesConfig(enabled=False),
                             slowdowns=SlowdownsConfig(enabled=False, interval_s=INTERVAL,
                                                       window_s=20 * INTERVAL)).validate()
    app = create_app(ServeSettings(config=config, ingest=False, outages=False))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get(f"{API}/slowdowns")
        body = await resp.json()
        assert resp.status == 200, body
        e = check_event(body["slowdowns"], plan)
        assert e["start_time"].endswith("Z") and e["end_time"].endswith("Z")
        assert body["detector"]["running"] is False
        only = await (await client.get(f"{API}/slowdowns", params={"group": "cc:IR"})).json()
        assert [x["group"] for x in only["slowdowns"]] == ["cc:IR"]
        resp = await client.get(f"{API}/slowdowns", params={"group": "AS1"})
        assert resp.status == 400
        sig = await (await client.get(f"{API}/slowdowns/signal", params={
            "group": "asn:AS64500", "since": iso(plan.t0 + 10 * INTERVAL)})).json()
        slow_bins = [pt for pt in sig["points"] if pt["slow"] >= 3]
        assert slow_bins and all(pt["median_ratio"] < 0.5 for pt in slow_bins)
        assert sig["points"][0]["bin_start_time"].endswith("Z")
        resp = await client.get(f"{API}/slowdowns/signal")
        assert resp.status == 400
        html = await (await client.get("/")).text()
        script = await (await client.get("/static/app.js")).text()
        assert 'id="slowdowns"' in html and "api/v1/slowdowns" in script


def test_cli_check_list_and_signal(tmp_path: Path) -> None:
    from collector.cli.main import main
    from collector.cli.throttling_events import throttling_events

    url = f"sqlite://{tmp_path}/cli.db"
    now = time.time()
    plan = make_plan(now)
    store = open_store(url)
    try:
        store.write_batch(plan_batch(plan, now))
    finally:
        store.close()
    runner = CliRunner()
    flags = ["--store", url, "--interval", str(INTERVAL), "--window", str(20 * INTERVAL)]
    res = runner.invoke(throttling_events, ["check", *flags, "--json"])
    assert res.exit_code == 0, res.output
    check_event([json.loads(x) for x in res.output.splitlines() if x.strip()], plan)
    res = runner.invoke(throttling_events, ["watch", *flags, "--passes", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(throttling_events, ["list", "--store", url, "--group", "asn:AS64500"])
    assert res.exit_code == 0 and "asn:AS64500" in res.output, res.output
    res = runner.invoke(throttling_events, ["signal", *flags, "--group", "asn:AS64500",
                                            "--since", iso(plan.t0), "--json"])
    assert res.exit_code == 0, res.output
    points = [json.loads(x) for x in res.output.splitlines() if x.strip()]
    assert any(p["slow"] >= 3 for p in points)
    assert main(["throttling-events", "list", "--store", url, "--since", "yesterday"]) == 2
    assert main(["throttling-events", "check", "--store", url, "--webhook", "ftp://x"]) == 2
    assert main(["throttling-events", "signal", "--store", url, "--group", "IR"]) == 2


# ---- end to end: signed records over the real broker -------------------------------------------
@pytest.mark.slow
async def test_slowdown_end_to_end_over_the_broker(broker: Any, tmp_path: Path) -> None:
    """Probes publish signed throttling records to Mosquitto; ``serve`` (ingest, background
    slowdown detector, API) stores them, finds the ISP's slowdown, shows it in the API and
    POSTs it to the webhook."""
    now = time.time()
    plan = make_plan(now)
    all_probes = [*plan.probes, plan.slow_line, plan.other_isp]
    url = f"sqlite://{tmp_path}/e2e.db"
    enrol(url, all_probes)
    creds = {p.probe_id: broker.add_probe(p.probe_id) for p in all_probes}
    info = broker.info
    async with WebhookReceiver() as hook:
        config = serve_config(
            info, url, "slowdown-e2e", batch_size=50, outages=OutagesConfig(enabled=False),
            slowdowns=SlowdownsConfig(interval_s=INTERVAL, window_s=20 * INTERVAL,
                                      webhooks=(hook.url,)))
        app = create_app(ServeSettings(config=config, outages=False))
        async with TestClient(TestServer(app)) as client:
            await wait_ingest_connected(client, timeout=WAIT)
            sent = 0
            for p, recs in records(plan).items():
                sent += await publish(info, p, creds[p.probe_id].password,
                                      [p.envelope(rec) for rec in recs])
            await wait_json(client, f"{API}/stats", lambda b: b["total"] == sent,
                            "every record stored", timeout=WAIT)
            body = await wait_json(
                client, f"{API}/slowdowns",
                lambda b: any(e["group"] == "asn:AS64500" and not e["ongoing"]
                              for e in b["slowdowns"]),
                "the slowdown in the API", timeout=WAIT)
            e = check_event(body["slowdowns"], plan)
            assert body["detector"]["running"] is True
            await hook.wait_for("slowdown.closed", e["event_id"], timeout=WAIT)
            assert ("slowdown.opened", e["event_id"]) in hook.notified()
            metrics = await (await client.get("/metrics")).text()
            assert "vigil_slowdown_detector_enabled 1.0" in metrics
            assert "vigil_slowdown_detector_passes_total" in metrics
            assert "vigil_outage_detector_enabled 0.0" in metrics


def test_samples_are_read_once_across_pages_and_ties(store_url: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every record received at the same instant, read in pages of 7: each one exactly once,
    and a second sync adds nothing (the overlap re-reads, the primary key drops repeats)."""
    from collector.slowdowns import store as slowdown_store

    monkeypatch.setattr(slowdown_store, "PAGE", 7)
    now = time.time()
    plan = make_plan(now)
    store = open_store(store_url)
    try:
        rows = [row(r, now) for recs in records(plan).values() for r in recs[:10]]
        other = plan.probes[0].record(start=now - 100.0)  # not a throttling record
        store.write_batch(IngestBatch(measurements=[*rows, row(other, now)]))
        st = SlowdownStore(store)
        assert st.sync_samples() == len(rows)
        assert st.sample_count() == len(rows)
        st.sync_samples()
        assert st.sample_count() == len(rows)
        got = st.observations(0, now + 1)
        assert len(got) == len(rows) and all(o.rate_bps > 0 for o in got)
    finally:
        store.close()


async def test_an_event_the_data_no_longer_shows_is_retracted(store_url: str) -> None:
    """A stored ongoing event inside the recomputed range that the samples no longer support
    (late records moved or removed its opening) is dropped; the supported one is kept."""
    from collector.slowdowns.detector import SlowdownEvent

    now = time.time()
    plan = make_plan(now)
    store = open_store(store_url)
    try:
        store.write_batch(plan_batch(plan, now))
        st = SlowdownStore(store)
        ghost = SlowdownEvent("ghost0000000000", "asn:AS64501", plan.t0 + 15 * INTERVAL,
                              plan.t0 + 14 * INTERVAL, plan.t0 + 16 * INTERVAL, None,
                              (plan.other_isp.probe_id,), 1, 0.1)
        st.save(ghost)
        found = await SlowdownWatcher(store, SlowdownWatchConfig(CFG)).check(now)
        stored = {e.event_id for e in st.events()}
        assert "ghost0000000000" not in stored
        assert stored == {e.event_id for e in found} and len(stored) == 2
    finally:
        store.close()


def test_collectors_starting_together_create_the_tables_once(store_url: str) -> None:
    """Several collectors (threads here) opening the slowdown tables at the same moment."""
    import threading

    errors: list[str] = []

    def open_tables() -> None:
        s = open_store(store_url)
        try:
            SlowdownStore(s)
        except Exception as exc:  # collected: the assertion below names it
            errors.append(repr(exc))
        finally:
            s.close()

    threads = [threading.Thread(target=open_tables) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and not any(t.is_alive() for t in threads)
    s = open_store(store_url)
    try:
        assert SlowdownStore(s).sample_count() == 0
    finally:
        s.close()
