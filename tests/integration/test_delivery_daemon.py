"""The real long-running agent on a state filesystem that fills up, then drains without help.

``agent.daemon.loop.run_forever`` (runner, outbox, publisher, campaigns; the loopback
``slow_fetch`` experiment of tests/integration/sigterm_agent.py) measures an operator campaign
with its state directory on a small tmpfs and no collector listening.  The filesystem is then
filled to the last byte; the agent refuses new records (counted), is stopped and started again
on the full filesystem, as systemd would, and once a collector (``python -m collector
ingest``) is back every record it had committed is stored and its outbox is empty.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.uplink.outbox import read_stats
from agent.wire.envelope import raw_public_key
from collector.store import open_store
from lab.broker import MosquittoBroker
from tests.integration.test_delivery import fill, small_tmpfs
from tests.integration.test_ingest import collector_proc, rejections
from tests.integration.test_sigterm import journal, make_setup, slow_server, terminate, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def stored_nonces(url: str) -> set[str]:
    import json

    store = open_store(url)
    try:
        rows = store.export_page(limit=100_000)
    finally:
        store.close()
    return {json.loads(r.payload)["test_keys"]["nonce"] for r in rows
            if json.loads(r.payload)["test_name"] == "slow_fetch"}


def held_nonces(state: Path) -> set[str]:
    """Nonces of every record still in the outbox, sent or not (read-only, whole table)."""
    import json
    import sqlite3

    from agent.wire.envelope import parse_envelope

    db = sqlite3.connect(f"file:{state / 'outbox.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT envelope FROM outbox WHERE kind = 'measurement'").fetchall()
    finally:
        db.close()
    return {json.loads(parse_envelope(bytes(r[0])).payload)["test_keys"]["nonce"]
            for r in rows}


async def test_real_agent_on_a_full_state_filesystem_drains_without_help(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    with small_tmpfs(tmp_path / "state", "8m") as state:
        async with slow_server(delay=0.05) as port:
            setup = await make_setup(tmp_path, broker_factory, 30, "d", port, grace=2.0)
            assert setup.config.read_text().rstrip().splitlines()[-1].startswith("password")
            setup.config.write_text(
                setup.config.read_text()
                # [mqtt] goes on: retry soon once a collector subscribes
                + "unrouted_retry = 0.2\nreceipt_timeout = 2.0\n"
                + "[outbox]\nmin_free_mb = 1\nreserve_mb = 0.5\n"
                # list updates stay on loopback (a closed port), never the internet
                + '[lists]\nsource_url = "http://127.0.0.1:9/"\n'
            )
            url = f"sqlite://{tmp_path}/collector.db"
            store = open_store(url)
            try:
                store.add_probe(setup.ident.probe_id, raw_public_key(setup.ident.public_key))
            finally:
                store.close()

            proc = setup.start()  # no collector: records stay in the outbox
            try:
                await wait_for(lambda: len(journal(setup.journal)[1]) >= 10, 60,
                               "10 measurements", setup)
                fill(state)  # the SD card fills up (logs, another program)
                await wait_for(lambda: "new measurements refused" in setup.log(), 60,
                               "a measurement refused for the full disk", setup)
            finally:
                await terminate(proc, setup)

            proc = setup.start()  # restarted on a filesystem with no byte left
            try:
                await wait_for(lambda: setup.log().count("connected to") >= 2, 60,
                               "the restarted agent to connect", setup)
                async with collector_proc(tmp_path, setup.broker.info, url, "c1") as col:
                    col.start()
                    await col.wait_connected()
                    await wait_for(
                        lambda: (s := read_stats(state)) is not None and s.count == 0, 90,
                        "the outbox to drain", setup)
                    assert col.terminate() == 0, col.log_text()
            finally:
                await terminate(proc, setup)
            final = read_stats(state)
    assert final is not None
    _, done = journal(setup.journal)
    stored = stored_nonces(url)
    enqueued, refused = final.counters["enqueued"], final.counters["disk_full_refused"]
    print(f"real agent on a full disk: {len(done)} measured, {enqueued} committed, {refused} "
          f"refused for the full disk, {len(stored)} stored, outbox left {final.count}")
    assert final.count == 0 and len(stored) == enqueued >= 10  # everything it held drained
    assert stored <= done and refused >= 1
    assert len(done) == enqueued + refused  # every measurement: stored, or refused and counted
    assert set(rejections(url)) <= {"duplicate"}, rejections(url)
    assert "cannot open outbox" not in setup.log() and "Traceback" not in setup.log()


async def test_real_agent_loses_nothing_to_a_broker_sigkill_while_collectors_are_away(
    tmp_path: Path, broker_factory: Callable[..., MosquittoBroker]
) -> None:
    """The long-running agent measures while the collectors are away; every record is
    PUBACKed into the broker's queue; the broker is SIGKILLed before it saved anything and
    restarted.  Once the collector is back, every measurement taken is stored."""
    async with slow_server(delay=0.05) as port:
        setup = await make_setup(
            tmp_path, lambda **kw: broker_factory(autosave_interval=3600, **kw), 40, "d",
            port, grace=2.0,
        )
        setup.config.write_text(
            setup.config.read_text() + "receipt_timeout = 2.0\nunrouted_retry = 0.2\n"
            + '[lists]\nsource_url = "http://127.0.0.1:9/"\n'
        )
        url = f"sqlite://{tmp_path}/collector.db"
        store = open_store(url)
        try:
            store.add_probe(setup.ident.probe_id, raw_public_key(setup.ident.public_key))
        finally:
            store.close()
        state = tmp_path / "state"
        async with collector_proc(tmp_path, setup.broker.info, url, "c1") as col:
            col.start()
            await col.wait_connected()  # its session and shared subscription now exist
            assert col.terminate() == 0  # the collectors go away

            proc = setup.start()
            try:
                def all_sent() -> bool:
                    s = read_stats(state)
                    return (s is not None and s.counters["enqueued"] >= 30
                            and s.awaiting_receipt == s.count)

                await wait_for(all_sent, 60, "30 measurements sent into the broker's queue",
                               setup)
                taken = len(journal(setup.journal)[1])
                setup.broker.kill()  # before any autosave: its queue is gone
                setup.broker.start()
                col.start()
                await col.wait_connected()
                await wait_for(lambda: len(stored_nonces(url)) >= taken, 90,
                               "every measurement taken before the crash", setup)
            finally:
                await terminate(proc, setup)
            assert col.terminate() == 0, col.log_text()
    _, done = journal(setup.journal)
    stored = stored_nonces(url)
    final = read_stats(state)
    assert final is not None
    print(f"real agent, broker SIGKILL: {taken} measured before the crash, {len(stored)} of "
          f"{len(done)} measured stored, outbox left {final.count} (awaiting receipts "
          f"{final.awaiting_receipt})")
    held = held_nonces(state)
    assert stored <= done and len(stored) >= taken >= 30
    assert done == stored | held  # the rest is still in the outbox: none lost
    assert len(held) == final.count  # (a stored one may be held until its receipt comes)
    assert set(rejections(url)) <= {"duplicate"}, rejections(url)
