"""A total shutdown and its recovery, end to end, on the namespace lab.

Ground truth: the ISP's uplink is cut at ``T_cut`` and restored at ``T_back`` (the lab's own
``shutdown``/``restore``).  Deployed as in production: the real agent daemon in the probe
namespace (connectivity checks every 10 s, heartbeats every 5 s over MQTT, durable outbox),
Mosquitto with the project's config and the collector's ingest in the inet namespace, behind
the cut.  After the recovery:

* the agent's outbox drains (every record made during the cut reaches the collector);
* the agent's own ``connectivity`` record of the outage starts and ends at the cut's edges;
* the collector's outage detector finds the network's (and the country's) outage within two
  heartbeat intervals of the cut, ends it at the restore, and the agent's record confirms it.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lab import addressing as A
from lab.preflight import agent_unavailable
from tests.lab.conftest import skip_or_fail

pytestmark = [pytest.mark.lab, pytest.mark.slow]

HEARTBEAT_S = 5.0
CONNECTIVITY_S = 10.0
CUT_S = 20.0  # four heartbeat intervals and two connectivity checks inside the cut
PROBE_PORT, COLLECTOR_PORT = 8883, 8885


def _wait(what: str, predicate: Any, timeout: float, step: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Deployment:
    """Broker, ingest and agent daemon started in the lab (stopped by the lab's teardown)."""

    def __init__(self, lab: Any) -> None:
        import trustme

        from scripts.mosquitto_conf import (
            BrokerSettings,
            install_acls,
            render,
            write_password_file,
        )

        self.lab = lab
        self.dir = lab.dir / "shutdown-e2e"
        self.dir.mkdir(exist_ok=True)
        probe_id = lab.state.data.get("probe_id")
        if not probe_id:
            skip_or_fail("the lab agent has no identity (vigil-agent init failed)")
        self.probe_id: str = probe_id
        ca = trustme.CA(organization_name="Vigil lab broker CA")
        self.ca_file = self.dir / "broker-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        server = ca.issue_cert(A.BROKER_ADDR)
        cert, key = self.dir / "broker.pem", self.dir / "broker.key"
        server.private_key_pem.write_to_path(str(key))
        with cert.open("wb") as fh:
            for blob in server.cert_chain_pems:
                fh.write(blob.bytes())
        key.chmod(0o600)
        self.probe_pw = secrets.token_urlsafe(18)
        self.collector_pw = secrets.token_urlsafe(18)
        write_password_file(self.dir / "probes.passwd", {probe_id: self.probe_pw})
        write_password_file(self.dir / "collectors.passwd", {"vigil-collector": self.collector_pw})
        probes_acl, collectors_acl = install_acls(self.dir)
        (self.dir / "data").mkdir(exist_ok=True)
        settings = BrokerSettings(
            data_dir=self.dir / "data", ca_file=self.ca_file, server_cert_file=cert,
            server_key_file=key, probe_password_file=self.dir / "probes.passwd",
            collector_password_file=self.dir / "collectors.passwd",
            probe_acl_file=probes_acl, collector_acl_file=collectors_acl,
            log_dest=f"file {self.dir / 'mosquitto.log'}", probe_port=PROBE_PORT,
            probe_cert_port=8884, collector_port=COLLECTOR_PORT, probe_bind=A.BROKER_ADDR,
            collector_bind=A.BROKER_ADDR, user="root",
        )
        conf = self.dir / "mosquitto.conf"
        conf.write_text(render(settings), "utf-8")
        self.store_url = f"sqlite:///{self.dir / 'collector.db'}"
        self._enrol(lab)
        self._guarded("broker", ["/usr/sbin/mosquitto", "-c", str(conf)],
                      (A.BROKER_ADDR, PROBE_PORT))
        self._spawn_ingest()
        self._spawn_agent()

    def _enrol(self, lab: Any) -> None:
        from collector.store import open_store

        line = (lab.dir / "probes.jsonl").read_text("utf-8").splitlines()[0]
        info = json.loads(line)
        store = open_store(self.store_url)
        try:
            store.add_probe(info["probe_id"], base64.b64decode(info["public_key"]), "lab")
        finally:
            store.close()

    def _guarded(self, name: str, argv: list[str], ready: tuple[str, int]) -> None:
        cfg = {**self.lab._common_cfg(name), "argv": argv, "cwd": str(self.dir),
               "ready_tcp": list(ready), "ready_timeout": 20,
               "child_pid_file": str(self.dir / f"{name}.child.pid")}
        path = self.dir / f"{name}.json"
        path.write_text(json.dumps(cfg), encoding="utf-8")
        self.lab._spawn(name, "inet", [sys.executable, "-m", "lab.servers.guard",
                                       str(path)])
        self.lab._wait_ready([name])

    def _spawn_ingest(self) -> None:
        bindir = Path(sys.executable).parent
        argv = [str(bindir / "vigil-collector"), "ingest", "--store", self.store_url,
                "--broker-host", A.BROKER_ADDR, "--broker-port", str(COLLECTOR_PORT),
                "--ca-file", str(self.ca_file), "--username", "vigil-collector",
                "--password", self.collector_pw]
        self.lab._spawn("ingest", "inet", argv)

    def _spawn_agent(self) -> None:
        env = self.lab.agent_env()
        base = Path(env["VIGIL_CONFIG"]).read_text("utf-8")
        config = self.dir / "agent-daemon.toml"
        config.write_text(
            base
            + f'[control]\nurl = "{self.lab.control_url}"\n'
            + f'[net]\nca_file = "{self.lab.ca_file}"\n'
            + "[scheduler]\n"
            + f"connectivity_interval_seconds = {CONNECTIVITY_S}\n"
            + 'tests = ["connectivity"]\ninitial_spread_seconds = 0\njitter = 0\n'
            + "[mqtt]\n"
            + f'host = "{A.BROKER_ADDR}"\nport = {PROBE_PORT}\nca_file = "{self.ca_file}"\n'
            + f'password = "{self.probe_pw}"\nstatus_interval = {HEARTBEAT_S}\n'
            + "keepalive = 5\nbackoff_initial = 0.5\nbackoff_max = 3.0\nack_timeout = 5.0\n"
            + "connect_timeout = 3.0\n",
            encoding="utf-8",
        )
        agent = Path(sys.executable).parent / "vigil-agent"
        argv = ["env", *(f"{k}={v}" for k, v in {**env, "VIGIL_CONFIG": str(config)}.items()),
                str(agent), "run"]
        self.lab._spawn("agent-daemon", "probe", argv)
        self.state_dir = Path(env["VIGIL_STATE_DIR"])

    # ---- observations ----------------------------------------------------------------------
    def connectivity_records(self) -> list[dict[str, Any]]:
        from collector.store import open_store
        from collector.store.base import Filter

        store = open_store(self.store_url)
        try:
            out = []
            for m in store.recent(limit=10_000, where=Filter(test_name="connectivity")):
                stored = store.get_measurement(m.measurement_id)
                if stored is not None:
                    out.append(json.loads(stored.payload))
            return out
        finally:
            store.close()

    def outbox_count(self) -> int | None:
        from agent.uplink.outbox import read_stats

        stats = read_stats(self.state_dir)
        return None if stats is None else stats.count

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.lab.log_tail(n, 30)}"
                         for n in ("agent-daemon", "ingest", "broker"))


@pytest.fixture(scope="module")
def deployment(lab: Any) -> Iterator[Deployment]:
    why = agent_unavailable()
    if why:
        skip_or_fail(why)
    for module in ("agent.daemon.loop", "agent.uplink.publisher", "collector.ingest.pipeline"):
        import importlib.util

        if importlib.util.find_spec(module) is None:
            skip_or_fail(f"{module} is not built yet")
    from lab.broker import mosquitto_available

    if reason := mosquitto_available():
        skip_or_fail(reason)
    yield Deployment(lab)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_shutdown_recovery_outbox_and_outage_event(deployment: Deployment) -> None:
    d, lab = deployment, deployment.lab
    try:
        _wait("two connectivity records at the collector before the cut",
              lambda: len(d.connectivity_records()) >= 2, 90)
        time.sleep(2 * HEARTBEAT_S)  # a little more baseline
        t_cut = time.time()
        lab.shutdown()
        try:
            time.sleep(CUT_S)
        finally:
            lab.restore()
        t_back = time.time()

        def closed_outage() -> dict[str, Any] | None:
            for r in d.connectivity_records():
                o = r["test_keys"].get("outage")
                if o and o.get("end") and _ts(o["start"]) >= t_cut - CONNECTIVITY_S:
                    return dict(o)
            return None

        outage = _wait("the agent's closed outage record", closed_outage, 120)
        _wait("the outbox to drain", lambda: d.outbox_count() == 0, 60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{d.logs()}") from None
    # the agent's own record brackets the cut (checks run every CONNECTIVITY_S)
    assert t_cut <= _ts(outage["start"]) <= t_cut + CONNECTIVITY_S + 3
    assert t_back <= _ts(outage["end"]) <= t_back + CONNECTIVITY_S + 3
    assert "offline" in outage["states"]
    records = d.connectivity_records()
    during = [r for r in records
              if t_cut + 1 < _ts(r["measurement_start_time"]) < t_back - 1]
    assert during, "records made during the cut were uploaded afterwards"
    assert all(r["verdict"]["status"] == "down" for r in during)

    from collector.outages.detector import DetectorConfig
    from collector.outages.watch import detect_now
    from collector.store import open_store

    cfg = DetectorConfig(heartbeat_interval=HEARTBEAT_S, baseline_window=3600.0,
                         min_history_intervals=4.0)
    store = open_store(d.store_url)
    try:
        events = detect_now(store, time.time(), cfg)
    finally:
        store.close()
    by_group = {e.group: e for e in events if e.start >= t_cut - 2 * HEARTBEAT_S}
    assert {"asn:AS64500", "cc:IR"} <= set(by_group), [e.to_json() for e in events]
    e = by_group["asn:AS64500"]
    assert e.affected == (d.probe_id,)
    assert t_cut - HEARTBEAT_S - 1 <= e.start <= t_cut + 1
    assert e.detected_at - t_cut <= 2 * HEARTBEAT_S
    assert e.end is not None and t_back - 1 <= e.end <= t_back + 3 * HEARTBEAT_S
    assert e.confirmed_by == (d.probe_id,)
    print(f"cut {datetime.fromtimestamp(t_cut, UTC):%H:%M:%S}, "
          f"detected +{e.detected_at - t_cut:.1f}s, start error {e.start - t_cut:+.1f}s, "
          f"end error {e.end - t_back:+.1f}s")
