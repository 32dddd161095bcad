"""Scaling out: several collectors on one MQTT v5 shared subscription over one PostgreSQL
store, each a separate process with its own broker login and client id (as on separate
hosts); one is killed with SIGKILL mid-stream and never comes back (its host is gone).

What the dead collector had taken from the broker and not stored is not lost: the agents'
outboxes keep every record until a collector's receipt says it is stored, and resend the rest
(docs/delivery.md); resends are stored once.  Counted: every record the agents committed is
stored exactly once, the outboxes end empty, nothing but duplicates is rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from agent.uplink.outbox import Outbox
from agent.uplink.publisher import Publisher
from lab.broker import MosquittoBroker
from lab.records import make_record
from tests.integration.test_delivery import new_probe, running, settings_for
from tests.integration.test_ingest import CollectorProcess, count, rejections, stored_ids, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PROBES, PER_PROBE, COLLECTORS = 3, 400, 3
WAIT = 180.0


async def test_a_collector_killed_mid_stream_loses_nothing(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker], pg_url: str
) -> None:
    broker = broker_factory()
    idents = [new_probe(tmp_path, broker, pg_url, f"p{i}") for i in range(PROBES)]
    collectors: list[CollectorProcess] = []
    for i in range(COLLECTORS):
        login = broker.add_collector(f"vigil-collector-host{i}")  # one login per "host"
        info = replace(broker.info, collector=login)
        collectors.append(CollectorProcess(tmp_path, info, pg_url, f"collector-host{i}",
                                           batch_size=20))
    victim = collectors[1]
    try:
        for c in collectors:
            c.start()
            await c.wait_connected()
        with contextlib.ExitStack() as stack:
            outboxes = [stack.enter_context(Outbox(tmp_path / f"p{i}", ident))
                        for i, ident in enumerate(idents)]
            records = {ident.probe_id: [make_record(ident.probe_id, n)
                                        for n in range(PER_PROBE)] for ident in idents}
            pubs = [Publisher(ob, settings_for(broker.info, ident.probe_id,
                                               receipt_timeout=2.0, receipt_timeout_max=4.0))
                    for ob, ident in zip(outboxes, idents, strict=True)]
            async with contextlib.AsyncExitStack() as runs:
                for pub in pubs:
                    await runs.enter_async_context(running(pub))
                for ob, pub, ident in zip(outboxes, pubs, idents, strict=True):
                    for rec in records[ident.probe_id]:
                        ob.enqueue(rec)
                    pub.notify()
                total = PROBES * PER_PROBE
                await wait_for(lambda: count(pg_url) >= total // 4, "a quarter stored", WAIT)
                victim.kill()  # SIGKILL mid-stream; its host never returns
                at_kill = count(pg_url)
                await wait_for(lambda: all(len(ob) == 0 for ob in outboxes),
                               "every record receipted", WAIT)
            resent = sum(ob.stats().counters.get("resent", 0) for ob in outboxes)
        await asyncio.sleep(1.0)  # nothing more may arrive
        survivors = [c for c in collectors if c is not victim]
        for c in survivors:
            assert c.terminate() == 0, c.log_text()[-2000:]
    finally:
        for c in collectors:
            c.cleanup()
    expected = {r.measurement_id for rs in records.values() for r in rs}
    assert len(expected) == total
    assert count(pg_url) == total
    assert stored_ids(pg_url) == expected
    assert set(rejections(pg_url)) <= {"duplicate"}, rejections(pg_url)
    assert at_kill < total
    print(f"{COLLECTORS} collectors, one SIGKILLed at {at_kill}/{total} stored: "
          f"{total} stored exactly once, {resent} records resent by the agents, "
          f"rejections {rejections(pg_url)}")


def test_the_api_serves_from_a_read_only_replica_session(tmp_path: Path, pg_url: str) -> None:
    """docs/scaling.md's API host: serve --no-ingest, detectors off, on a session where every
    transaction is read-only (what a streaming replica allows): it starts and answers."""
    import json
    import subprocess
    import sys
    import time
    import urllib.request
    from urllib.parse import quote

    from collector.store import open_store
    from lab.ports import free_port
    from lab.probes import TestProbe

    store = open_store(pg_url)  # the primary: migrated, one probe
    probe = TestProbe.new()
    try:
        store.add_probe(probe.probe_id, probe.public_raw)
    finally:
        store.close()
    read_only = (pg_url + ("&" if "?" in pg_url else "?") + "options="
                 + quote("-c default_transaction_read_only=on"))
    port = free_port()
    config = tmp_path / "api.toml"
    config.write_text(f'[store]\nurl = "{read_only}"\n[api]\nport = {port}\n'
                      "[outages]\nenabled = false\n[slowdowns]\nenabled = false\n")
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "collector", "serve", "--no-ingest",
                                 "--config", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 30
        answers: dict[str, int] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/probes",
                                            timeout=2) as resp:
                    probes = json.load(resp)["probes"]
                for path in ("/api/v1/stats", "/api/v1/measurements", "/"):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}",
                                                timeout=5) as resp:
                        answers[path] = resp.status
                break
            except OSError:
                time.sleep(0.2)
        assert answers == {"/api/v1/stats": 200, "/api/v1/measurements": 200, "/": 200}, \
            log.read_text()
        assert [p["probe_id"] for p in probes] == [probe.probe_id]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    assert "read-only" not in log.read_text()
