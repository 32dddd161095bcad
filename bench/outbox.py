"""Benchmark of the durable outbox and the publisher, run by hand (never a timed test):

    .venv/bin/python -m bench.outbox [--records 2000] [--pad 2000] [--no-broker]

Prints, for records of about ``--pad`` bytes of test_keys (a typical web_connectivity record
is 2-6 kB signed):

* enqueue rate: sign + commit with fsync (SQLite WAL, synchronous=FULL), one record per
  transaction, as the runner does it (this is the durability cost per measurement);
* sign-only rate (the Ed25519 + JSON share of it);
* take+ack rate without a broker (acks deleted in batches of 64, one fsync per batch);
* take + mark sent + receipt without a broker (receipts on: two transactions per batch of 64,
  the PUBACK marking the rows sent and the collector's receipt deleting them);
* drain rate through a real Mosquitto (configs/mosquitto/, TLS, QoS 1, a collector subscribed
  through the shared subscription), unless ``--no-broker``.

Uses a temporary directory on the same filesystem as the system temp dir: fsync costs depend
on the disk (an SD card is 10-100x slower than an SSD).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from agent import identity
from agent.uplink.outbox import Outbox, OutboxLimits
from agent.wire import envelope as wire
from agent.wire.receipts import Receipt
from lab.records import make_record


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s ({seconds * 1000 / n:.2f} ms each)"


def bench_local(tmp: Path, n: int, pad: int) -> None:
    ident = identity.create(tmp / "state")
    recs = [make_record(ident.probe_id, i, pad=pad) for i in range(n)]
    with Outbox(tmp / "state", ident, OutboxLimits(max_count=10 * n)) as ob:
        t = time.perf_counter()
        for r in recs[: n // 4]:
            wire.sign_envelope(wire.encode_record(r.to_json()), ident.private_key, ident.probe_id)
        print(f"sign only (encode + Ed25519):    {rate(n // 4, time.perf_counter() - t)}")
        t = time.perf_counter()
        for r in recs:
            ob.enqueue(r)
        dt = time.perf_counter() - t
        print(f"enqueue (sign + commit + fsync): {rate(n, dt)}; "
              f"avg envelope {ob.size_bytes // n} bytes")
        t = time.perf_counter()
        done = 0
        while True:
            items = ob.take(256)
            if not items:
                break
            for i in range(0, len(items), 64):
                ob.ack(x.seq for x in items[i : i + 64])
            done += len(items)
        print(f"take + ack (batches of 64):      {rate(done, time.perf_counter() - t)}")
        for r in recs:
            ob.enqueue(r)
        t = time.perf_counter()
        done = 0
        while True:
            items = ob.take(256)
            if not items:
                break
            for i in range(0, len(items), 64):
                batch = items[i : i + 64]
                ob.mark_sent([x.seq for x in batch], 120.0, 3600.0)
                ob.apply_receipt(Receipt(stored=tuple(x.measurement_id for x in batch)))
            done += len(items)
        print(f"take + sent + receipt (64s):     {rate(done, time.perf_counter() - t)}")


async def bench_broker(tmp: Path, n: int, pad: int) -> None:
    from agent.uplink.publisher import Publisher, PublisherSettings
    from lab.broker import MosquittoBroker, mosquitto_available
    from lab.mini_collector import Collector

    if reason := mosquitto_available():
        print(f"broker drain: skipped ({reason})")
        return
    ident = identity.create(tmp / "probe")
    with MosquittoBroker(tmp / "broker", probe_ids=[ident.probe_id]) as broker:
        info = broker.info
        with Outbox(tmp / "probe", ident, OutboxLimits(max_count=10 * n)) as ob:
            for i in range(n):
                ob.enqueue(make_record(ident.probe_id, i, pad=pad))
            settings = PublisherSettings(
                host=info.host, port=info.probe_port, ca_file=info.ca_file,
                password=info.probes[ident.probe_id].password,
                receipts=False,  # the minimal collector sends none: the broker layer alone
            )
            async with Collector(info, {ident.probe_id: ident}) as col:
                t = time.perf_counter()
                published = await Publisher(ob, settings).flush()
                dt = time.perf_counter() - t
                deadline = time.monotonic() + 60
                while len(col.received) < n and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                total = time.perf_counter() - t
            print(f"drain to Mosquitto (TLS, QoS 1): {rate(published, dt)}; collector had all "
                  f"{len(col.received)} verified after {total:.2f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="outbox and publisher benchmark")
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--pad", type=int, default=2000, help="bytes of filler in test_keys")
    p.add_argument("--no-broker", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as d:
        tmp = Path(d)
        print(f"{args.records} records, pad {args.pad} bytes, in {tmp}")
        bench_local(tmp, args.records, args.pad)
        if not args.no_broker:
            asyncio.run(bench_broker(tmp, args.records, args.pad))
    return 0


if __name__ == "__main__":
    sys.exit(main())
