"""Hostile-probe soak: one enrolled probe attacks everything it can reach while honest probes
publish; counts what the honest probes lost and the collector's peak memory.

    .venv/bin/python -m bench.hostile_soak                      # 5 minutes, 4 honest probes
    .venv/bin/python -m bench.hostile_soak --duration 60 --json out.json

Real parts, loopback only: a Mosquitto with the project's configs (lab/broker.py), ``vigil-
collector serve`` (API + ingest) as a child process on a SQLite store, and a control helper
(signed mode, every route) in this process.  The attacker, for the whole duration:

* joins the collectors' shared subscription (every spelling) with a persistent session;
* tries retained messages on sub-topics of its own;
* sends garbage (quarantine growth), deeply nested signed JSON and statuses;
* sends valid ~0.9 MB measurements at QoS 0 (no flow control) and at QoS 1;
* abuses the helper: a page of repeated <title>, throughput to a banned port, 32-dial reach
  requests, nested JSON bodies, unsigned floods, replays;
* asks the API for impossible times.

Counted at the end: every honest measurement the honest probes got a PUBACK for must be in
the store (lost = sent - stored, by measurement id), the collector's peak RSS (VmHWM of the
serve process and of its verify worker), the attacker's results.  Each honest record carries
``probe_seq``: the store's delivery gaps for the honest probes must be zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.identity import Identity
from agent.wire.envelope import probe_id_for
from agent.wire.helper_auth import sign_request
from collector.helper.app import HelperConfig, create_app
from collector.helper.reach import reach_extension
from collector.store import open_store
from lab.broker import BrokerInfo, MosquittoBroker, free_port
from lab.probes import TestProbe

REPO = Path(__file__).resolve().parent.parent
V5 = aiomqtt.ProtocolVersion.V5


def client(info: BrokerInfo, probe_id: str, clean: bool = True) -> aiomqtt.Client:
    return aiomqtt.Client(info.host, info.probe_port, username=probe_id,
                          password=info.probes[probe_id].password, identifier=probe_id,
                          protocol=V5, tls_context=info.tls_context(), clean_start=clean)


def rss_peak_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    return []


async def honest(info: BrokerInfo, probe: TestProbe, stop: float, rate: float,
                 sent: dict[str, list[str]]) -> None:
    seq = 0
    async with client(info, probe.probe_id) as c:
        while time.monotonic() < stop:
            seq += 1
            record = probe.record(probe_seq=seq)
            await c.publish(probe.topic, probe.envelope(record), qos=1)  # returns on PUBACK
            sent[probe.probe_id].append(record["measurement_id"])
            await asyncio.sleep(1 / rate)


async def attack_broker(info: BrokerInfo, bad: TestProbe, stop: float, tally: Counter[str]
                        ) -> None:
    big = bad.envelope(test_keys={"padding": "x" * 650_000})  # ~0.9 MB signed, valid
    async with client(info, bad.probe_id, clean=False) as c:
        for f in ("$share/collectors/vigil/v1/probes/+/measurements",
                  "$share/collectors/edge/vigil/v1/probes/+/measurements", "#"):
            await c.subscribe(f, qos=1)
    deep = b"[" * 20_000 + b"]" * 20_000
    while time.monotonic() < stop:
        with contextlib.suppress(aiomqtt.MqttError):
            async with client(info, bad.probe_id, clean=False) as c:
                while time.monotonic() < stop:
                    for i in range(5):
                        await c.publish(f"{bad.topic}/x{i}", b"r" * 100_000, qos=1, retain=True)
                    tally["retained_tries"] += 5
                    for _ in range(20):
                        await c.publish(bad.topic, os.urandom(60_000), qos=1)
                    tally["garbage"] += 20
                    await c.publish(bad.topic, bad.sign(deep), qos=1)
                    await c.publish(bad.status_topic, b"[" * 5000 + b"]" * 5000, qos=1)
                    tally["deep"] += 2
                    for _ in range(20):
                        await c.publish(bad.topic, big, qos=0)
                    tally["qos0_big"] += 20
                    # QoS 1 in parallel: up to the broker's max_inflight_messages at once, so
                    # the collector's in-flight window is what bounds its memory.
                    await asyncio.gather(*(c.publish(bad.topic, bad.envelope(
                        test_keys={"padding": "y" * 650_000}), qos=1) for _ in range(40)))
                    tally["qos1_big"] += 40


async def attack_helper(base: str, bad: Identity, title_url: str, stop: float,
                        tally: Counter[str]) -> None:
    async with aiohttp.ClientSession() as s:

        async def call(path: str, body: bytes, who: Identity | None = bad,
                       headers: dict[str, str] | None = None) -> int:
            h = dict(headers or {})
            if who is not None and headers is None:
                h.update(sign_request(who, "POST", path, body, time.time()))
            async with s.post(base + path, data=body, headers=h) as r:
                await r.read()
                tally[f"helper {path} {r.status}"] += 1
                return r.status

        closed = free_port()  # nothing listens there: each dial is refused
        while time.monotonic() < stop:
            await call("/api/v1/control", json.dumps({"url": title_url}).encode())
            await call("/api/v1/throughput", b'{"url": "http://127.0.0.1:6667/"}')
            await call("/api/v1/reach", json.dumps({"checks": [
                {"address": f"127.0.0.1:{closed}", "check": "tcp"}] * 32}).encode())
            await call("/api/v1/control", b"[" * 5000 + b"]" * 5000)
            stranger = Identity(Ed25519PrivateKey.generate(), bad.probe_id)
            await call("/api/v1/control", b"{}", who=stranger)  # forged: unauthenticated
            body = json.dumps({"url": title_url}).encode()
            replay = sign_request(bad, "POST", "/api/v1/control", body, time.time())
            await call("/api/v1/control", body, headers=replay)
            await call("/api/v1/control", body, headers=replay)
            await asyncio.sleep(0.05)


async def attack_api(api: str, stop: float, tally: Counter[str]) -> None:
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < stop:
            for path in ("measurements", "stats", "export", "outages"):
                async with s.get(f"{api}/api/v1/{path}",
                                 params={"since": "0001-01-01T00:00:00+14:00"}) as r:
                    await r.read()
                    tally[f"api {r.status}"] += 1
            await asyncio.sleep(0.2)


async def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    honest_probes = [TestProbe.new() for _ in range(args.honest)]
    bad = TestProbe.new()
    everyone = [*honest_probes, bad]
    broker = MosquittoBroker(work / "broker", probe_ids=[p.probe_id for p in everyone],
                             message_size_limit=1_048_576)
    broker.start()
    info = broker.info
    db = work / "collector.db"
    store = open_store(f"sqlite://{db}")
    for p in everyone:
        store.add_probe(p.probe_id, p.public_raw)
    store.close()
    api_port = free_port()
    config = work / "collector.toml"
    config.write_text("\n".join([
        "[broker]", f'host = "{info.host}"', f"port = {info.collector_port}",
        f'ca_file = "{info.ca_file}"', f'username = "{info.collector.username}"',
        f'password = "{info.collector.password}"', 'client_id = "soak-collector"',
        "[store]", f'url = "sqlite://{db}"',
        "[ingest]", "stats_interval_s = 0.0", "key_refresh_s = 2.0",
        f"max_inflight_bytes = {args.inflight_mib * 1_048_576}",
        "[api]", f"port = {api_port}",
        "[outages]", "enabled = false", ""]))
    log = (work / "serve.log").open("wb")
    serve = subprocess.Popen([sys.executable, "-m", "collector", "serve", "--config", str(config)],
                             cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{api_port}"

    # The control helper (signed mode) and a target site with a page of repeated <title>.
    key = Ed25519PrivateKey.generate()
    bad_helper_id = Identity(key, probe_id_for(key.public_key()))
    probes_file = work / "probes.jsonl"
    import base64

    from agent.wire.envelope import raw_public_key
    probes_file.write_text(json.dumps({
        "probe_id": bad_helper_id.probe_id, "revoked": False,
        "public_key": base64.b64encode(raw_public_key(key.public_key())).decode()}) + "\n")
    site = web.Application()
    site.router.add_get("/titles", lambda r: web.Response(body=b"<title>" * 10_000,
                                                          content_type="text/html"))
    site_runner = web.AppRunner(site)
    await site_runner.setup()
    site_port = free_port()
    await web.TCPSite(site_runner, "127.0.0.1", site_port).start()
    helper_app = create_app(HelperConfig(mode="signed", allow_ranges=("127.0.0.0/8",),
                                         probes_file=probes_file),
                            own_addresses=(), extensions=[reach_extension(None)])
    helper_runner = web.AppRunner(helper_app, access_log=None)
    await helper_runner.setup()
    helper_port = free_port()
    await web.TCPSite(helper_runner, "127.0.0.1", helper_port).start()

    tally: Counter[str] = Counter()
    sent: dict[str, list[str]] = {p.probe_id: [] for p in honest_probes}
    try:
        async with aiohttp.ClientSession() as s:  # wait for serve's API and ingest
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"{api}/healthz") as r:
                        if r.status == 200 and (await r.json())["ingest"].get("connected"):
                            break
                await asyncio.sleep(0.2)
        t0 = time.monotonic()
        stop = t0 + args.duration
        peaks: list[tuple[int, int]] = []

        async def sample() -> None:
            while time.monotonic() < stop + 30:
                kids = children(serve.pid)
                peaks.append((rss_peak_kib(serve.pid), max((rss_peak_kib(k) for k in kids),
                                                            default=0)))
                await asyncio.sleep(1.0)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(
            *(honest(info, p, stop, args.rate, sent) for p in honest_probes),
            attack_broker(info, bad, stop, tally),
            attack_helper(f"http://127.0.0.1:{helper_port}", bad_helper_id,
                          f"http://127.0.0.1:{site_port}/titles", stop, tally),
            attack_api(api, stop, tally),
        )
        # Drain: wait (bounded) until every acknowledged honest measurement is stored.
        want = {m for ids in sent.values() for m in ids}
        deadline = time.monotonic() + 120
        stored: set[str] = set()
        while time.monotonic() < deadline:
            st = open_store(f"sqlite://{db}")
            try:
                stored = {m.measurement_id for m in st.recent(10_000_000)} & want
                gaps = st.delivery_gaps()
                rejections = st.rejection_counts()
            finally:
                st.close()
            if stored == want:
                break
            await asyncio.sleep(1.0)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        final = (rss_peak_kib(serve.pid), max((rss_peak_kib(k) for k in children(serve.pid)),
                                              default=0))
        peaks.append(final)
    finally:
        serve.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            serve.wait(60)
        if serve.poll() is None:
            serve.kill()
        log.close()
        await helper_runner.cleanup()
        await site_runner.cleanup()
        broker.stop()
    return {
        "duration_s": args.duration,
        "honest_probes": args.honest,
        "honest_sent_acked": len(want),
        "honest_stored": len(stored),
        "honest_lost": len(want - stored),
        "honest_missing_by_probe_seq": {p: gaps[p].missing if p in gaps else None
                                        for p in sent},
        "collector_peak_rss_mib": round(max(p for p, _ in peaks) / 1024, 1),
        "verify_worker_peak_rss_mib": round(max(w for _, w in peaks) / 1024, 1),
        "max_inflight_mib": args.inflight_mib,
        "rejections": rejections,
        "attacker": dict(sorted(tally.items())),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of attack")
    p.add_argument("--honest", type=int, default=4, help="honest probes")
    p.add_argument("--rate", type=float, default=5.0, help="measurements/s per honest probe")
    p.add_argument("--inflight-mib", type=int, default=256, help="[ingest] max_inflight_bytes")
    p.add_argument("--json", type=Path, default=None, help="write the result here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vigil-soak-") as tmp:
        result = asyncio.run(soak(args, Path(tmp)))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    sys.exit(0 if result["honest_lost"] == 0 else 1)


if __name__ == "__main__":
    main()
