"""The probe and the checks of the operator-guide test, run inside its namespace (a script, not
a test module).  A synthetic signed probe (lab.probes.TestProbe) stands for a real one.

    python -m tests.integration.guide_probe new-key DIR            -> PROBE_ID=... PUBLIC_KEY=...
    python -m tests.integration.guide_probe deliver DIR --password PW --recent N --old M
    python -m tests.integration.guide_probe refused DIR --password PW
    python -m tests.integration.guide_probe count --expect N [--ids DIR]
    python -m tests.integration.guide_probe wait-tcp HOST:PORT...

Measurements go to the broker on 127.0.0.1:8883 with /etc/vigil/ca.pem, exactly as a probe
enrolled by the guide would send them; ``deliver`` resends what is not stored yet (a real
agent does the same on a retry receipt) until the store holds all of them, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.wire import envelope as wire
from lab.probes import TestProbe

CA = "/etc/vigil/ca.pem"
CONFIG = "/etc/vigil/collector.toml"
BROKER = ("127.0.0.1", 8883)
OLD_S = 300 * 86400  # "old": older than the guide's 180-day retention, younger than max_age_days
DEADLINE_S = 90.0


def load_probe(d: Path) -> TestProbe:
    key = serialization.load_pem_private_key((d / "probe.key").read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return TestProbe(key, wire.probe_id_for(key.public_key()))


def new_key(d: Path) -> None:
    p = TestProbe.new()
    (d / "probe.key").write_bytes(p.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    print(f"PROBE_ID={p.probe_id}\nPUBLIC_KEY={p.public_b64}")


def stored_ids() -> tuple[int, set[str]]:
    out = subprocess.run(["vigil-collector", "query", "--config", CONFIG, "--json",
                          "--limit", "10000"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"query failed: {out.stderr}")
    report = json.loads(out.stdout)
    return report["totals"]["measurements"], {m["measurement_id"] for m in report["recent"]}


async def publish(p: TestProbe, password: str, envelopes: list[bytes]) -> None:
    ctx = ssl.create_default_context(cafile=CA)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    async with aiomqtt.Client(BROKER[0], BROKER[1], username=p.probe_id, password=password,
                              identifier=p.probe_id, protocol=aiomqtt.ProtocolVersion.V5,
                              tls_context=ctx, properties=props) as client:
        for env in envelopes:
            await client.publish(p.topic, env, qos=1)


def deliver(d: Path, password: str, recent: int, old: int) -> None:
    p = load_probe(d)
    now = time.time()
    records = [p.record(start=now - 60 - i) for i in range(recent)]
    records += [p.record(start=now - OLD_S - i) for i in range(old)]
    envelopes = {r["measurement_id"]: p.envelope(r) for r in records}
    (d / "ids.json").write_text(json.dumps(sorted(envelopes)))
    deadline = time.monotonic() + DEADLINE_S
    sends = 0
    while True:
        _, have = stored_ids()
        missing = [env for mid, env in envelopes.items() if mid not in have]
        if not missing:
            print(f"delivered {len(envelopes)} measurements in {sends} sends")
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(missing)} of {len(envelopes)} never stored")
        asyncio.run(publish(p, password, missing))
        sends += 1
        wait_until = time.monotonic() + 6  # > the ingest's key refresh (5 s)
        while time.monotonic() < wait_until and stored_ids()[1] < set(envelopes):
            time.sleep(0.5)


def refused(d: Path, password: str) -> None:
    p = load_probe(d)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            asyncio.run(publish(p, password, []))
        except aiomqtt.MqttCodeError as exc:
            rc = exc.rc
            code = rc.value if isinstance(rc, ReasonCode) else rc
            print(f"the revoked probe is refused by the broker (reason {code})")
            return
        time.sleep(0.2)
    raise SystemExit("the revoked probe can still log in")


def count(expect: int, d: Path | None) -> None:
    total, have = stored_ids()
    if total != expect:
        raise SystemExit(f"store holds {total} measurements, expected {expect}")
    if d is not None:
        ids = set(json.loads((d / "ids.json").read_text()))
        if have != ids:
            raise SystemExit(f"ids differ: {len(ids - have)} missing, {len(have - ids)} extra")
    print(f"counted {total} measurements")


def wait_tcp(endpoints: list[str]) -> None:
    deadline = time.monotonic() + 60
    for ep in endpoints:
        host, port = ep.rsplit(":", 1)
        while True:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{ep} never listened") from None
                time.sleep(0.1)
    print("listening: " + " ".join(endpoints))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("new-key").add_argument("dir", type=Path)
    dv = sub.add_parser("deliver")
    dv.add_argument("dir", type=Path)
    dv.add_argument("--password", required=True)
    dv.add_argument("--recent", type=int, required=True)
    dv.add_argument("--old", type=int, default=0)
    rf = sub.add_parser("refused")
    rf.add_argument("dir", type=Path)
    rf.add_argument("--password", required=True)
    ct = sub.add_parser("count")
    ct.add_argument("--expect", type=int, required=True)
    ct.add_argument("--ids", type=Path, default=None)
    sub.add_parser("wait-tcp").add_argument("endpoints", nargs="+")
    a = ap.parse_args(argv)
    if a.cmd == "new-key":
        new_key(a.dir)
    elif a.cmd == "deliver":
        deliver(a.dir, a.password, a.recent, a.old)
    elif a.cmd == "refused":
        refused(a.dir, a.password)
    elif a.cmd == "count":
        count(a.expect, a.ids)
    else:
        wait_tcp(a.endpoints)


if __name__ == "__main__":
    main(sys.argv[1:])
