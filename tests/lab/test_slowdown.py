"""A whole-ISP slowdown to 10 % on the namespace lab, found by the collector.

Ground truth: every download into the lab ISP goes through a token bucket on the internet
side of its uplink (``tbf`` on the inet namespace's ISP-facing interface): 3.6 Mbit/s
normally, 360 kbit/s (10 %) during the slowdown (under the 4 Mbit/s at which a throttling row
of the lab shapes the control helper's address, so the bucket is what sets both rates; the
faster the lines, the shorter the agent's runs).  The real agent (``vigil-agent run --once --tests
throttling``) measures in the probe namespace, with its benign transfers to the control
helper's bulk endpoint crossing that bucket.  Each run measures three targets; each of the
three records becomes one probe's measurement of that interval (re-signed by three synthetic
probes, with the interval's simulated time), so the transfers are real and the several probes
a quorum needs share one lab line.  The records go over a real Mosquitto to the collector
service (ingest, background slowdown detector, API), which must find the ISP's slowdown with
the right timing and POST it to a webhook.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent.wire import envelope as wire
from lab import addressing as A
from lab import nsctl
from lab.preflight import agent_unavailable
from lab.probes import TestProbe, iso
from tests.lab.conftest import add_report, skip_or_fail

pytestmark = [pytest.mark.lab, pytest.mark.slow]

NORMAL, SLOW = "3600kbit", "360kbit"
INTERVAL = 40.0  # simulated measurement interval
PHASES = ["normal"] * 3 + ["slow"] * 3 + ["normal"]  # one agent run per interval
TARGETS = ["https://www.news.lab.test/", "https://neighbour.lab.test/", "http://blog.lab.test/"]
WAIT = 90.0


def shape(lab: Any, rate: str | None) -> None:
    """Every download into the ISP at ``rate`` (None: unshaped, as the lab was)."""
    ns = lab.ns("inet")
    if rate is None:
        nsctl.run(["tc", "-n", ns, "qdisc", "del", "dev", A.INET_IF, "root"], check=False)
        return
    nsctl.run(["tc", "-n", ns, "qdisc", "replace", "dev", A.INET_IF, "root", "tbf",
               "rate", rate, "burst", "4kb", "latency", "200ms"])


def measure(lab: Any, workdir: Path, k: int) -> list[dict[str, Any]]:
    """One real agent run over the targets; its records (the agent's own probe id)."""
    lst = workdir / "targets.csv"
    lst.write_text("url,category_code\n" + "".join(f"{u},NEWS\n" for u in TARGETS), "utf-8")
    out = workdir / f"run-{k}.jsonl"
    proc = subprocess.run(lab.agent_argv([lst], out, tests="throttling"),
                          env={**os.environ, **lab.agent_env()}, capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines() if line]
    assert len(records) == len(TARGETS), proc.stderr[-2000:]
    return records


def as_probe(record: dict[str, Any], probe: TestProbe, t: float) -> bytes:
    """The record as ``probe`` measured it at simulated time ``t``, signed by it."""
    rec = {**record, "probe_id": probe.probe_id, "measurement_id": wire.uuid7(),
           "measurement_start_time": iso(t)}
    return probe.envelope(rec)


async def wait_json(client: TestClient[Any, Any], path: str, pred: Callable[[Any], bool],
                    what: str) -> Any:
    deadline = time.monotonic() + WAIT
    last: Any = None
    while time.monotonic() < deadline:
        resp = await client.get(path)
        last = await resp.json()
        if pred(last):
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last answer {last!r}")


async def test_whole_isp_slowdown_found_by_the_collector(lab: Any, tmp_path: Path) -> None:
    if why := agent_unavailable():
        skip_or_fail(why)
    from collector.config import (
        BrokerConfig,
        CollectorConfig,
        IngestConfig,
        OutagesConfig,
        SlowdownsConfig,
        StoreConfig,
    )
    from collector.runtime import ServeSettings
    from collector.service import create_app
    from collector.slowdowns.rates import benign_rate_bps
    from collector.store import open_store
    from lab.broker import MosquittoBroker, mosquitto_available

    if why := mosquitto_available():
        skip_or_fail(why)
    probes = [TestProbe.new() for _ in TARGETS]
    now = time.time()
    t0 = (now // INTERVAL - len(PHASES) - 1) * INTERVAL
    start = t0 + PHASES.index("slow") * INTERVAL
    end = start + PHASES.count("slow") * INTERVAL
    envelopes: list[tuple[TestProbe, bytes]] = []
    rates: dict[str, list[float]] = {"normal": [], "slow": []}
    try:
        for k, phase in enumerate(PHASES):
            shape(lab, SLOW if phase == "slow" else NORMAL)
            for i, (probe, rec) in enumerate(zip(probes, measure(lab, tmp_path, k),
                                                 strict=True)):
                rate = benign_rate_bps(rec["test_keys"])
                if rate is not None:
                    rates[phase].append(rate)
                # probes measure at different times of the interval, in the same order
                envelopes.append((probe, as_probe(rec, probe, t0 + (k + 0.2 + 0.25 * i)
                                                  * INTERVAL)))
    finally:
        shape(lab, None)
    # the ground truth reached the agent's benign transfers
    assert rates["slow"] and rates["normal"]
    assert max(rates["slow"]) < 0.3 * min(rates["normal"]), rates

    broker = MosquittoBroker(tmp_path / "broker", probe_ids=[p.probe_id for p in probes])
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    hook_app = web.Application()
    hook_app.router.add_post("/hook", hook)
    runner = web.AppRunner(hook_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        info = broker.start()
        url = f"sqlite://{tmp_path}/collector.db"
        store = open_store(url)
        try:
            for p in probes:
                store.add_probe(p.probe_id, p.public_raw)
        finally:
            store.close()
        config = CollectorConfig(
            broker=BrokerConfig(host=info.host, port=info.collector_port, tls=True,
                                ca_file=str(info.ca_file), username=info.collector.username,
                                password=info.collector.password, client_id="lab-slowdown",
                                keepalive_s=5),
            store=StoreConfig(url=url),
            ingest=IngestConfig(batch_size=20, retry_initial_s=0.1, retry_max_s=1.0,
                                key_refresh_s=0.5),
            outages=OutagesConfig(enabled=False),
            slowdowns=SlowdownsConfig(interval_s=INTERVAL, window_s=10 * INTERVAL,
                                      webhooks=(f"http://127.0.0.1:{port}/hook",)),
        ).validate()
        async with TestClient(TestServer(create_app(ServeSettings(config=config,
                                                                  outages=False)))) as client:
            await wait_json(client, "/healthz", lambda b: b["ingest"].get("connected") is True,
                            "the ingest to connect")
            for p in probes:
                async with aiomqtt.Client(
                    info.host, info.probe_port, username=p.probe_id,
                    password=info.probes[p.probe_id].password, identifier=p.probe_id,
                    protocol=aiomqtt.ProtocolVersion.V5, tls_context=info.tls_context(),
                ) as mqtt:
                    for who, env in envelopes:
                        if who is p:
                            await mqtt.publish(p.topic, env, qos=1)
            await wait_json(client, "/api/v1/stats", lambda b: b["total"] == len(envelopes),
                            "every record stored")
            body = await wait_json(
                client, "/api/v1/slowdowns",
                lambda b: any(e["group_kind"] == "asn" and not e["ongoing"]
                              for e in b["slowdowns"]),
                "the slowdown in the API")
            (e,) = [x for x in body["slowdowns"] if x["group_kind"] == "asn"]
            assert e["detected_at"] - start <= 3 * INTERVAL
            assert abs(e["start"] - start) <= INTERVAL
            assert abs(e["end"] - end) <= INTERVAL
            assert set(e["affected"]) == {p.probe_id for p in probes}
            add_report(
                f"whole-ISP slowdown ({NORMAL} -> {SLOW}): benign rates normal "
                f"{min(rates['normal']) / 1e6:.2f}-{max(rates['normal']) / 1e6:.2f} Mbit/s, "
                f"slow {min(rates['slow']) / 1e6:.3f}-{max(rates['slow']) / 1e6:.3f} Mbit/s; "
                f"found {(e['detected_at'] - start) / INTERVAL:.2f} intervals after the start, "
                f"start error {(e['start'] - start) / INTERVAL:+.2f}, end error "
                f"{(e['end'] - end) / INTERVAL:+.2f} intervals")
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and not any(
                    r["type"] == "slowdown.closed" and r["event"]["event_id"] == e["event_id"]
                    for r in received):
                await asyncio.sleep(0.25)
            assert {("slowdown.opened", e["event_id"]), ("slowdown.closed", e["event_id"])} <= {
                (r["type"], r["event"]["event_id"]) for r in received}
    finally:
        broker.stop()
        await runner.cleanup()
