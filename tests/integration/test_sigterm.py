"""SIGTERM during an operator campaign loses nothing.

The real agent process (agent.daemon.loop.run_forever with the real runner, outbox and
publisher) runs a signed campaign received through the real broker (configs/mosquitto/),
measuring a slow loopback HTTP server.  We SIGTERM it mid-campaign and check:

* it exits 0 within seconds;
* every measurement that finished is either at the collector or still in the outbox, signed
  and valid (nothing lost), and nothing else is anywhere (no partial record);
* a measurement still in flight after the grace period is abandoned without any record;
* after a restart the outbox drains and the campaign (persisted) goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent import identity as agent_identity
from agent.identity import Identity
from agent.uplink.outbox import Outbox
from agent.wire.commands import Audience
from agent.wire.envelope import parse_envelope, verify_envelope
from collector.campaigns import (
    BrokerTarget,
    CampaignSpec,
    build_campaign,
    create_operator_key,
    public_key_b64,
    publish_command,
    sign_command,
    topic_for,
)
from lab.broker import MosquittoBroker
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


# ---- a slow loopback web server ---------------------------------------------------------------
@contextlib.asynccontextmanager
async def slow_server(delay: float) -> AsyncIterator[int]:
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(delay)
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in list(handlers):
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


# ---- the collector's view ---------------------------------------------------------------------
@dataclass
class Collector:
    nonces: dict[str, str] = field(default_factory=dict)  # nonce -> measurement_id
    bad: list[str] = field(default_factory=list)


async def collect(
    broker: MosquittoBroker, probe_key: Identity, out: Collector, ready: asyncio.Event
) -> None:
    info = broker.info
    async with aiomqtt.Client(
        info.host,
        info.collector_port,
        username=info.collector.username,
        password=info.collector.password,
        tls_context=info.tls_context(),
        identifier="test-collector",
    ) as client:
        await client.subscribe("edge/vigil/v1/probes/+/measurements", qos=1)
        ready.set()
        async for msg in client.messages:
            data = bytes(msg.payload) if isinstance(msg.payload, bytes | bytearray) else b""
            try:
                rec = _open(data, probe_key)
            except Exception as exc:  # anything unverifiable is a failure of the test
                out.bad.append(repr(exc))
                continue
            if rec["test_name"] == "slow_fetch":
                out.nonces[rec["test_keys"]["nonce"]] = rec["measurement_id"]


def _open(envelope: bytes, identity: agent_identity.Identity) -> dict[str, Any]:
    env = parse_envelope(envelope)
    payload = verify_envelope(env, identity.public_key, identity.probe_id)
    rec: dict[str, Any] = json.loads(payload)
    return rec


def outbox_nonces(state_dir: Path, identity: agent_identity.Identity) -> dict[str, str]:
    out: dict[str, str] = {}
    with Outbox(state_dir, identity) as box:
        for item in box.take(100_000):
            rec = _open(item.envelope, identity)  # every row is signed and complete
            keys = rec["test_keys"]
            assert isinstance(keys, dict)
            if rec["test_name"] == "slow_fetch":
                out[keys["nonce"]] = str(rec["measurement_id"])
    return out


def journal(path: Path) -> tuple[set[str], set[str]]:
    started: set[str] = set()
    done: set[str] = set()
    if path.exists():
        for line in path.read_text().splitlines():
            kind, nonce, _ = line.split(" ", 2)
            (started if kind == "start" else done).add(nonce)
    return started, done


# ---- the agent process -------------------------------------------------------------------------
@dataclass
class Setup:
    tmp: Path
    broker: MosquittoBroker
    ident: agent_identity.Identity
    config: Path
    journal: Path

    def start(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
        env["VIGIL_TEST_JOURNAL"] = str(self.journal)
        env["PYTHONPATH"] = str(ROOT)
        log = (self.tmp / "agent.log").open("ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.integration.sigterm_agent", str(self.config)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()

    def log(self) -> str:
        return (self.tmp / "agent.log").read_text(errors="replace")


async def make_setup(
    tmp: Path, broker_factory: object, urls: int, delay_path: str, port: int, grace: float
) -> Setup:
    state = tmp / "state"
    ident = agent_identity.create(state)
    broker: MosquittoBroker = broker_factory(probe_ids=[ident.probe_id])  # type: ignore[operator]
    info = broker.info
    op_key = create_operator_key(tmp / "operator.key")
    now = datetime.now(UTC).replace(microsecond=0)
    spec = CampaignSpec(
        audience=Audience(probe_id=ident.probe_id),
        urls=[(f"http://127.0.0.1:{port}/{delay_path}/{i}", None) for i in range(urls)],
        interval=60.0,
        test_name="slow_fetch",
        start=now - timedelta(minutes=1),
        end=now + timedelta(hours=1),
        note="sigterm test",
    )
    cmd = build_campaign(spec, now)
    target = BrokerTarget(
        info.host,
        info.collector_port,
        info.collector.username,
        info.collector.password,
        info.ca_file,
    )
    await publish_command(sign_command(cmd, op_key), topic_for(cmd.audience), target)
    config = tmp / "agent.toml"
    config.write_text(
        f"""
[agent]
state_dir = "{state}"
[net]
resolver = "127.0.0.1:53"
[scheduler]
tests = []
initial_spread_seconds = 0
pause_min_seconds = 0.02
pause_max_seconds = 0.05
stop_grace_seconds = {grace}
daily_budget_mb = 0
[campaigns]
operator_keys = ["{public_key_b64(op_key)}"]
[mqtt]
host = "{info.host}"
port = {info.probe_port}
ca_file = "{info.ca_file}"
password = "{info.probes[ident.probe_id].password}"
"""
    )
    return Setup(tmp, broker, ident, config, tmp / "journal.txt")


async def wait_for(cond: Callable[[], bool], timeout: float, what: str, setup: Setup) -> None:
    await wait_until(cond, what, timeout=timeout, detail=setup.log)


async def terminate(proc: subprocess.Popen[bytes], setup: Setup) -> float:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = await asyncio.to_thread(proc.wait, 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"agent did not stop within 20 s\n{setup.log()}") from None
    assert rc == 0, setup.log()
    return time.monotonic() - t0


@contextlib.asynccontextmanager
async def collecting(setup: Setup, got: Collector) -> AsyncIterator[None]:
    """A collector subscribed (and ready) for the probe's records while the block runs."""
    ready = asyncio.Event()
    sub = asyncio.create_task(collect(setup.broker, setup.ident, got, ready))
    try:
        await asyncio.wait_for(ready.wait(), 15)
        yield
    finally:
        sub.cancel()
        await asyncio.gather(sub, return_exceptions=True)


async def start_until(setup: Setup, cond: Callable[[], bool], what: str) -> subprocess.Popen[bytes]:
    """Start the agent and wait (60 s at most) for ``cond``; kill it if that fails."""
    proc = setup.start()
    try:
        await wait_for(cond, 60, what, setup)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return proc


# ---- the tests ---------------------------------------------------------------------------------
async def test_sigterm_mid_campaign_loses_nothing(tmp_path: Path, broker_factory: object) -> None:
    got = Collector()
    async with slow_server(delay=0.3) as port:
        setup = await make_setup(tmp_path, broker_factory, 40, "d", port, grace=5.0)
        async with collecting(setup, got):
            proc = await start_until(setup, lambda: len(got.nonces) >= 3, "3 measurements")
            took = await terminate(proc, setup)
            started, done = journal(setup.journal)
            boxed = outbox_nonces(tmp_path / "state", setup.ident)
            await asyncio.sleep(0.5)  # let in-flight deliveries to the collector land
            at_collector = set(got.nonces)
            assert took < 10, f"stop took {took:.1f}s"
            assert not got.bad
            assert done, "some measurements finished"
            # The measurement in flight at SIGTERM finished within the grace period...
            assert started == done, setup.log()
            # ...and every finished measurement is kept: delivered or still in the outbox.
            assert done == at_collector | set(boxed), done - at_collector - set(boxed)
            assert (at_collector | set(boxed)) <= done  # nothing that did not finish
            assert "stopped" in setup.log()

            # Restart: the backlog drains and the persisted campaign goes on.
            proc = setup.start()
            try:
                await wait_for(lambda: done <= set(got.nonces), 60, "the backlog", setup)
                await wait_for(
                    lambda: len(journal(setup.journal)[1]) > len(done) + 2,
                    60,
                    "the campaign to continue",
                    setup,
                )
            finally:
                await terminate(proc, setup)
            started2, done2 = journal(setup.journal)
            assert started2 == done2
            await asyncio.sleep(0.5)
            assert done2 == set(got.nonces) | set(outbox_nonces(tmp_path / "state", setup.ident))


async def test_sigterm_abandons_a_stuck_measurement_without_a_record(
    tmp_path: Path, broker_factory: object
) -> None:
    got = Collector()
    async with slow_server(delay=30.0) as port:
        setup = await make_setup(tmp_path, broker_factory, 5, "stuck", port, grace=1.0)
        async with collecting(setup, got):
            proc = await start_until(
                setup, lambda: bool(journal(setup.journal)[0]), "a measurement")
            took = await terminate(proc, setup)
            started, done = journal(setup.journal)
            assert len(started) == 1 and not done
            assert took < 8, f"stop took {took:.1f}s"
            assert outbox_nonces(tmp_path / "state", setup.ident) == {}
            assert got.nonces == {}
            assert "abandoning in-flight measurement" in setup.log()
