"""Ingest benchmark: pre-signed envelopes through a real Mosquitto into real collectors.

    .venv/bin/python -m bench.ingest                     # everything (a few minutes)
    .venv/bin/python -m bench.ingest --stores sqlite --messages 20000 --json out.json

What it measures, in one run:

1. **Yardstick**: raw Ed25519 verifications per second on one core (this process, same
   message size as the benchmark's envelopes).
2. **Throughput** per store (SQLite, PostgreSQL) and per number of collector processes (1, 2):
   the broker is preloaded with N signed measurements queued for the collectors' persistent
   sessions (the "probes come back after a shutdown" case), then the ``vigil-collector
   ingest`` processes are started and the rate is taken from the first to the last stored
   measurement (polling the store, so it includes verification, validation, dedup and the
   durable commit).  The two-process run uses one shared subscription.
3. **Latency** at half the one-process throughput: probes publish at a steady rate while one
   collector runs; each message's end-to-end latency is the time from its publish call to the
   moment its row is visible in the store (committed), polled every 20 ms.

Targets: one process >= 5,000 msg/s and >= 40 % of the yardstick, two processes
>= 1.6x one, p99 latency < 1 s at half load.  The broker, the load generator and the
collectors share this machine's cores: the numbers are for the whole system on one box.

Uses the test broker fixture (lab/broker.py) and loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg

from agent.wire import envelope as wire
from collector.store import open_store
from lab.broker import BrokerInfo, MosquittoBroker
from lab.pg import pg_unavailable, temporary_database
from lab.probes import TestProbe

REPO = Path(__file__).resolve().parents[1]


# ---- yardstick ---------------------------------------------------------------------------------
def yardstick(sample: bytes, seconds: float = 3.0) -> float:
    """Ed25519 verifications per second on one core over a DSSE PAE of ``sample``'s size."""
    probe = TestProbe.new()
    message = wire.pae(wire.PAYLOAD_TYPE, sample)
    sig = probe.key.sign(message)
    public = probe.key.public_key()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            public.verify(sig, message)
        n += 200
    return n / (time.perf_counter() - start)


# ---- load --------------------------------------------------------------------------------------
def make_envelopes(probes: list[TestProbe], n: int) -> list[tuple[TestProbe, str, bytes]]:
    """N signed measurements spread over the probes (realistic ~1.3 kB records)."""
    out = []
    for i in range(n):
        p = probes[i % len(probes)]
        rec = p.record(input=f"https://site{i % 500}.example/path", category_code="NEWS")
        out.append((p, rec["measurement_id"], p.envelope(rec)))
    return out


def _probe_client(info: BrokerInfo, probe: TestProbe) -> aiomqtt.Client:
    client = aiomqtt.Client(
        info.host, info.probe_port, username=probe.probe_id,
        password=info.probes[probe.probe_id].password, identifier=probe.probe_id,
        protocol=aiomqtt.ProtocolVersion.V5, tls_context=info.tls_context(),
        max_inflight_messages=1000,
    )
    client.pending_calls_threshold = 1 << 30  # we mean to have many publishes in flight
    return client


async def preload(info: BrokerInfo, load: list[tuple[TestProbe, str, bytes]]) -> float:
    """Publish everything as fast as the broker acknowledges; returns messages/s."""
    by_probe: dict[str, list[bytes]] = {}
    probes: dict[str, TestProbe] = {}
    for p, _, env in load:
        by_probe.setdefault(p.probe_id, []).append(env)
        probes[p.probe_id] = p

    async def one(p: TestProbe, envs: list[bytes]) -> None:
        async with _probe_client(info, p) as c:
            for i in range(0, len(envs), 500):
                await asyncio.gather(*(c.publish(p.topic, e, qos=1) for e in envs[i:i + 500]))

    start = time.perf_counter()
    await asyncio.gather(*(one(probes[pid], envs) for pid, envs in by_probe.items()))
    return len(load) / (time.perf_counter() - start)


async def paced(info: BrokerInfo, load: list[tuple[TestProbe, str, bytes]],
                rate: float, sent: dict[str, float]) -> None:
    """Publish at ``rate`` msg/s (10 ms ticks), noting each publish time in ``sent``."""
    probes = {p.probe_id: p for p, _, _ in load}
    async with contextlib.AsyncExitStack() as stack:
        clients = {pid: await stack.enter_async_context(_probe_client(info, p))
                   for pid, p in probes.items()}
        pending: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        i = 0
        while i < len(load):
            due = int((time.monotonic() - start) * rate) + 1
            while i < min(due, len(load)):
                p, mid, env = load[i]
                sent[mid] = time.time()
                task = asyncio.ensure_future(clients[p.probe_id].publish(p.topic, env, qos=1))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i += 1
            await asyncio.sleep(0.01)
        if pending:
            await asyncio.gather(*pending)


# ---- collectors ---------------------------------------------------------------------------------
@dataclass
class Collectors:
    workdir: Path
    info: BrokerInfo
    store_url: str
    count: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    profile: Path | None = None  # py-spy raw (collapsed) stacks of each collector, if set
    profilers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def config(self, i: int) -> Path:
        path = self.workdir / f"collector{i}.toml"
        settings = {"stats_interval_s": 5.0, **self.extra}
        lines = [
            "[broker]", f'host = "{self.info.host}"', f"port = {self.info.collector_port}",
            f'ca_file = "{self.info.ca_file}"', f'username = "{self.info.collector.username}"',
            f'password = "{self.info.collector.password}"', f'client_id = "bench-c{i}"',
            "[store]", f'url = "{self.store_url}"', "[ingest]",
        ] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        path.write_text("\n".join(lines) + "\n", "utf-8")
        return path

    def start(self) -> None:
        for i in range(self.count):
            log = (self.workdir / f"collector{i}.log").open("ab")
            cmd = [sys.executable, "-m", "collector", "ingest", "--config", str(self.config(i))]
            self.procs.append(subprocess.Popen(
                cmd,
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            ))
            log.close()
            if self.profile is not None:
                out = self.profile.with_name(f"{self.profile.name}-c{i}.txt")
                self.profilers.append(subprocess.Popen(
                    [str(Path(sys.executable).with_name("py-spy")), "record", "--threads",
                     "-r", "200", "-f", "raw", "-o", str(out),
                     "--pid", str(self.procs[-1].pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))

    def wait_connected(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for i in range(self.count):
            log = self.workdir / f"collector{i}.log"
            while "connected to" not in log.read_text("utf-8", errors="replace"):
                if time.monotonic() > deadline or self.procs[i].poll() is not None:
                    raise RuntimeError(f"collector {i} did not connect:\n{log.read_text()}")
                time.sleep(0.05)

    def stop(self) -> None:
        for p in self.profilers:  # SIGINT: py-spy writes its file and exits
            p.send_signal(signal.SIGINT)
        for p in self.profilers:
            p.wait(60)
        self.profilers.clear()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.procs.clear()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def create_sessions(workdir: Path, info: BrokerInfo, url: str, n: int) -> None:
    """Start and stop the collectors once so their persistent sessions exist."""
    c = Collectors(workdir, info, url, n)
    c.start()
    try:
        c.wait_connected()
    finally:
        c.stop()
    for i in range(n):  # each run's log starts empty, so "connected to" is this run's
        (workdir / f"collector{i}.log").unlink(missing_ok=True)


def stored(url: str) -> int:
    store = open_store(url)
    try:
        return store.measurement_count()
    finally:
        store.close()


def descendants(pids: list[int]) -> list[int]:
    """``pids`` and all their live child processes (a collector's verification workers)."""
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of ``pids`` and their live children (a forkserver and its workers count)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in descendants(pids):
        with contextlib.suppress(OSError):
            fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields_[11]) + int(fields_[12])) / tick
    return total


@dataclass
class Throughput:
    store: str
    processes: int
    messages: int
    seconds: float
    rate: float
    collector_cpu_s: float
    broker_cpu_s: float
    duplicates: int
    load_avg: float  # 1-minute load average at the end: other work sharing the cores
    yardstick: float  # Ed25519 verifications/s on one core, measured just before this run


def throughput(workdir: Path, broker: MosquittoBroker, url: str, store_kind: str,
               processes: int, load: list[tuple[TestProbe, str, bytes]], extra: dict[str, Any],
               profile: Path | None = None) -> Throughput:
    info = broker.info
    create_sessions(workdir, info, url, processes)
    rate = asyncio.run(preload(info, load))
    yard = yardstick(wire.parse_envelope(load[0][2]).payload, 1.5)
    print(f"  preloaded {len(load)} messages ({rate:,.0f} msg/s)", flush=True)
    c = Collectors(workdir, info, url, processes, extra=extra,
                   profile=None if profile is None else profile / f"{store_kind}-{processes}")
    broker_cpu0 = cpu_seconds([broker.pid or 0])
    c.start()
    try:
        first_t, first_n = None, 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            n = stored(url)
            now = time.monotonic()
            if first_t is None and n > 0:
                first_t, first_n = now, n
            if n >= len(load):
                break
            time.sleep(0.05)
        done_t = time.monotonic()
        cpu = cpu_seconds(c.pids())
        broker_cpu = cpu_seconds([broker.pid or 0]) - broker_cpu0
    finally:
        c.stop()
    if first_t is None or stored(url) < len(load):
        raise RuntimeError(f"only {stored(url)} of {len(load)} stored")
    seconds = done_t - first_t
    store = open_store(url)
    dups = store.rejection_counts().get("duplicate", 0)
    store.close()
    return Throughput(store_kind, processes, len(load), seconds,
                      (len(load) - first_n) / seconds, cpu, broker_cpu, dups, os.getloadavg()[0],
                      yard)


# ---- latency ----------------------------------------------------------------------------------
class Watcher(threading.Thread):
    """Records when each published measurement first becomes visible (committed) in the store.

    Polls by primary key for the ids published but not yet seen (a few hundred at most at
    the paced rate), so the watcher's own load on the database stays small.
    """

    def __init__(self, url: str, sent: dict[str, float], interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.sent = sent  # filled by the publisher (other thread); read with list(), atomic
        self.interval = interval
        self.seen: dict[str, float] = {}
        self.stop_event = threading.Event()

    def _pending(self) -> list[str]:
        return [m for m in list(self.sent) if m not in self.seen]

    def run(self) -> None:
        if self.url.startswith("sqlite"):
            import sqlite3

            db = sqlite3.connect(self.url[len("sqlite://"):])
            try:
                while not self.stop_event.is_set():
                    pending = self._pending()
                    for i in range(0, len(pending), 500):
                        part = pending[i:i + 500]
                        rows = db.execute(
                            "SELECT measurement_id FROM measurements WHERE measurement_id IN "
                            f"({','.join('?' * len(part))})", part).fetchall()
                        now = time.time()
                        for (mid,) in rows:
                            self.seen.setdefault(mid, now)
                    time.sleep(self.interval)
            finally:
                db.close()
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop_event.is_set():
                pending = self._pending()
                if pending:
                    rows = conn.execute(
                        "SELECT measurement_id::text FROM measurements "
                        "WHERE measurement_id = ANY(%s::uuid[])", (pending,)).fetchall()
                    now = time.time()
                    for (mid,) in rows:
                        self.seen.setdefault(mid, now)
                time.sleep(self.interval)


@dataclass
class Latency:
    store: str
    rate: float
    messages: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def latency(workdir: Path, info: BrokerInfo, url: str, store_kind: str, rate: float,
            load: list[tuple[TestProbe, str, bytes]], extra: dict[str, Any]) -> Latency:
    c = Collectors(workdir, info, url, 1, extra=extra)
    c.start()
    sent: dict[str, float] = {}
    watcher = Watcher(url, sent)
    try:
        c.wait_connected()
        watcher.start()
        asyncio.run(paced(info, load, rate, sent))
        deadline = time.monotonic() + 60
        while len(watcher.seen) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.stop_event.set()
        watcher.join(10)
        c.stop()
    lat = sorted((watcher.seen[m] - t) * 1000 for m, t in sent.items() if m in watcher.seen)
    if len(lat) < len(sent):
        raise RuntimeError(f"only {len(lat)} of {len(sent)} seen in the store")
    q = statistics.quantiles(lat, n=100)
    return Latency(store_kind, rate, len(lat), q[49], q[89], q[98], lat[-1])


# ---- main ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def store_url(kind: str, workdir: Path, tag: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite://{workdir}/{tag}.db"
        return
    with temporary_database("vigil_bench") as url:
        yield url


def enrol(url: str, probes: list[TestProbe]) -> None:
    store = open_store(url)
    try:
        for p in probes:
            store.add_probe(p.probe_id, p.public_raw)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, default=30_000, help="per throughput run")
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--stores", default="sqlite,postgres")
    ap.add_argument("--processes", default="1,2")
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--verify-workers", type=int, default=None)
    ap.add_argument("--verify-processes", type=int, default=None,
                    help="verification processes per collector (-1: the config default, auto)")
    ap.add_argument("--max-inflight-bytes", type=int, default=None,
                    help="the collectors' [ingest] max_inflight_bytes (memory bound in flight)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--profile", type=Path, default=None,
                    help="directory for py-spy stacks of the throughput runs (pip install py-spy)")
    args = ap.parse_args(argv)

    extra: dict[str, Any] = {}
    if args.batch_size:
        extra["batch_size"] = args.batch_size
    if args.verify_workers is not None:
        extra["verify_workers"] = args.verify_workers
    if args.verify_processes is not None:
        extra["verify_processes"] = args.verify_processes
    if args.max_inflight_bytes is not None:
        extra["max_inflight_bytes"] = args.max_inflight_bytes
    stores = [s for s in args.stores.split(",") if s]
    if "postgres" in stores and (reason := pg_unavailable()):
        print(f"skipping PostgreSQL: {reason}")
        stores.remove("postgres")
    counts = [int(x) for x in args.processes.split(",")]

    probes = [TestProbe.new() for _ in range(args.probes)]
    print(f"signing {args.messages} envelopes...", flush=True)
    load = make_envelopes(probes, args.messages)
    sample = wire.parse_envelope(load[0][2]).payload
    yard = yardstick(sample)
    print(f"yardstick: Ed25519 verify, one core: {yard:,.0f}/s "
          f"(payload {len(sample)} B, envelope {len(load[0][2])} B)", flush=True)

    results: dict[str, Any] = {"yardstick_verify_per_s": yard, "cpus": os.cpu_count(),
                               "messages": args.messages, "settings": extra,
                               "throughput": [], "latency": []}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        workdir = Path(tmp)
        run = 0
        for kind in stores:
            one_rate = 0.0
            for n in counts:
                run += 1
                wd = workdir / f"run{run}"
                with MosquittoBroker(wd / "broker", probe_ids=[p.probe_id for p in probes],
                                     max_queued_messages=args.messages * 2) as broker, \
                        store_url(kind, wd, "t") as url:
                    enrol(url, probes)
                    print(f"{kind}, {n} collector process(es):", flush=True)
                    t = throughput(wd, broker, url, kind, n, load, extra, args.profile)
                    if n == 1:
                        one_rate = t.rate
                    results["throughput"].append(asdict(t))
                    print(f"  {t.rate:,.0f} msg/s ({t.messages} in {t.seconds:.2f} s; "
                          f"{t.rate / t.yardstick:.0%} of the yardstick measured just before, "
                          f"{t.yardstick:,.0f}/s; CPU: collectors "
                          f"{t.collector_cpu_s:.1f} s, broker {t.broker_cpu_s:.1f} s; "
                          f"load avg {t.load_avg:.1f}; duplicates {t.duplicates})", flush=True)
            if one_rate:
                run += 1
                wd = workdir / f"run{run}"
                rate = one_rate / 2
                n_msgs = int(rate * args.latency_seconds)
                lat_load = make_envelopes(probes, n_msgs)
                with MosquittoBroker(wd / "broker", probe_ids=[p.probe_id for p in probes]) \
                        as broker, store_url(kind, wd, "l") as url:
                    enrol(url, probes)
                    print(f"{kind}, latency at {rate:,.0f} msg/s for "
                          f"{args.latency_seconds:.0f} s:", flush=True)
                    lat = latency(wd, broker.info, url, kind, rate, lat_load, extra)
                results["latency"].append(asdict(lat))
                print(f"  p50 {lat.p50_ms:.0f} ms, p90 {lat.p90_ms:.0f} ms, "
                      f"p99 {lat.p99_ms:.0f} ms, max {lat.max_ms:.0f} ms", flush=True)
    _summary(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), "utf-8")
    return 0


def _summary(results: dict[str, Any]) -> None:
    yard = results["yardstick_verify_per_s"]
    print("\nsummary (targets: >= 5,000 msg/s and >= 40% of yardstick; 2 procs >= 1.6x; "
          "p99 < 1 s at half load)")
    by = {(t["store"], t["processes"]): t["rate"] for t in results["throughput"]}
    yards = {(t["store"], t["processes"]): t["yardstick"] for t in results["throughput"]}
    for (kind, n), rate in sorted(by.items()):
        line = (f"  {kind:<9} {n} proc: {rate:>8,.0f} msg/s  {rate / yards[(kind, n)]:>5.0%} of "
                f"yardstick ({rate / yard:.0%} of the first)")
        if n > 1 and (kind, 1) in by:
            line += f"  {rate / by[(kind, 1)]:.2f}x one process"
        print(line)
    for lat in results["latency"]:
        print(f"  {lat['store']:<9} latency at {lat['rate']:,.0f} msg/s: "
              f"p99 {lat['p99_ms']:.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
