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

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.wire import envelope as wire
from lab import addressing as A
from lab import nsctl
from lab.preflight import agent_unavailable
from lab.probes import TestProbe, iso
from tests.lab.conftest import add_report, skip_or_fail
from tests.support.webhooks import WebhookReceiver

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


async def test_whole_isp_slowdown_found_by_the_collector(lab: Any, tmp_path: Path) -> None:
    if why := agent_unavailable():
        skip_or_fail(why)
    from collector.config import OutagesConfig, SlowdownsConfig
    from collector.runtime import ServeSettings
    from collector.service import create_app
    from collector.slowdowns.rates import benign_rate_bps
    from lab.broker import MosquittoBroker, mosquitto_available
    from tests.support.collector import (
        enrol,
        publish,
        serve_config,
        wait_ingest_connected,
        wait_json,
    )

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
    async with WebhookReceiver() as hook:
        try:
            info = broker.start()
            url = f"sqlite://{tmp_path}/collector.db"
            enrol(url, probes)
            config = serve_config(
                info, url, "lab-slowdown", batch_size=20, outages=OutagesConfig(enabled=False),
                slowdowns=SlowdownsConfig(interval_s=INTERVAL, window_s=10 * INTERVAL,
                                          webhooks=(hook.url,)))
            async with TestClient(TestServer(create_app(ServeSettings(config=config,
                                                                      outages=False)))) as client:
                await wait_ingest_connected(client, timeout=WAIT, interval=0.25)
                for p in probes:
                    await publish(info, p, info.probes[p.probe_id].password,
                                  [env for who, env in envelopes if who is p])
                await wait_json(client, "/api/v1/stats", lambda b: b["total"] == len(envelopes),
                                "every record stored", timeout=WAIT, interval=0.25)
                body = await wait_json(
                    client, "/api/v1/slowdowns",
                    lambda b: any(e["group_kind"] == "asn" and not e["ongoing"]
                                  for e in b["slowdowns"]),
                    "the slowdown in the API", timeout=WAIT, interval=0.25)
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
                await hook.wait_for("slowdown.closed", e["event_id"], timeout=WAIT)
                assert ("slowdown.opened", e["event_id"]) in hook.notified()
        finally:
            broker.stop()
