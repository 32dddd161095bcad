"""Benchmarks of the control helper, run by hand (never a timed test):

    .venv/bin/python -m bench.helper ipdb   [--v4 500000 --v6 150000]
    .venv/bin/python -m bench.helper control [--n 2000 --concurrency 64]

``ipdb``: load time, memory and lookups/s of an iptoasn-sized database (generated, random).
``control``: controls/s of the helper against HTTP and HTTPS targets on 127.0.0.1 (a DNS stub
answers the names), signed requests, peak RSS of this process (helper + targets + client).
Loopback only: nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import ssl
import sys
import tempfile
import time
import tracemalloc
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import aiohttp
import dns.message
import dns.rcode
import dns.rrset
import trustme
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.identity import Identity
from agent.wire.envelope import probe_id_for
from agent.wire.helper_auth import sign_request
from collector.helper.app import HelperConfig, Limits, create_app, make_runner
from collector.helper.ipdb import load


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- ipdb ---------------------------------------------------------------------------------------
def bench_ipdb(n4: int, n6: int) -> None:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        v4, v6 = Path(tmp) / "ip2asn-v4.tsv", Path(tmp) / "ip2asn-v6.tsv"
        step4 = (2**32) // n4
        with v4.open("w") as fh:
            for i in range(n4):
                start = i * step4
                asn = rng.randrange(1, 75_000)  # about as many networks as the real file has
                fh.write(f"{IPv4Address(start)}\t{IPv4Address(start + step4 - 1)}\t"
                         f"{asn}\tDE\tNetwork {asn}\n")
        step6 = (2**125) // n6
        with v6.open("w") as fh:
            for i in range(n6):
                start = 2**125 + i * step6
                asn = rng.randrange(1, 75_000)
                fh.write(f"{IPv6Address(start)}\t{IPv6Address(start + step6 - 1)}\t"
                         f"{asn}\tDE\tNetwork {asn}\n")
        t0 = time.perf_counter()
        db, report = load([v4, v6])
        load_s = time.perf_counter() - t0
        del db
        tracemalloc.start()  # a second, traced load measures memory (tracing slows it down)
        db, report = load([v4, v6])
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    probes = [IPv4Address(rng.randrange(2**32)) for _ in range(200_000)]
    t0 = time.perf_counter()
    for p in probes:
        db.lookup(p)
    lookups = len(probes) / (time.perf_counter() - t0)
    print(json.dumps({
        "ranges_v4": report.ranges_v4, "ranges_v6": report.ranges_v6,
        "load_s": round(load_s, 2), "resident_mb": round(current / 2**20, 1),
        "load_peak_mb": round(peak / 2**20, 1), "lookups_per_s": round(lookups),
    }))


# ---- control throughput -------------------------------------------------------------------------
class _Stub(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        question = q.question[0]
        if question.rdtype == 1:  # A
            r.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", "127.0.0.1"))
        self.transport.sendto(r.to_wire(), addr)  # type: ignore[attr-defined]


async def bench_control(n: int, concurrency: int) -> None:
    page = b"<html><title>bench</title>" + b"x" * 20_000 + b"</html>"

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html")

    target = web.Application()
    target.router.add_get("/{tail:.*}", handler)
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("*.bench.test").configure_cert(server_ctx)
    runners = []
    ports = []
    for ctx in (None, server_ctx):
        runner = web.AppRunner(target if ctx is None else _clone(handler), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
        runners.append(runner)
        ports.append(runner.addresses[0][1])
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Stub, local_addr=("127.0.0.1", 0))
    dns_port = transport.get_extra_info("sockname")[1]
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = Path(tmp) / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        key = Ed25519PrivateKey.generate()
        probe = Identity(key, probe_id_for(key.public_key()))

        class Keys:
            async def lookup(self, probe_id: str) -> tuple[object, bool] | None:
                return (key.public_key(), False) if probe_id == probe.probe_id else None

        config = HelperConfig(
            allow_ranges=("127.0.0.0/8",), ca_file=ca_file, resolver=("127.0.0.1", dns_port),
            limits=Limits(per_client_per_minute=10**7, max_concurrent=256,
                          per_client_concurrent=256),
        )
        app = create_app(config, probe_keys=Keys(), own_addresses=())  # type: ignore[arg-type]
        helper = make_runner(app, access_log=None)
        await helper.setup()
        await web.TCPSite(helper, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{helper.addresses[0][1]}"
        ok = 0
        failures: list[object] = []
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency)
        ) as session:

            async def one(i: int) -> None:
                nonlocal ok
                scheme, port = ("https", ports[1]) if i % 2 else ("http", ports[0])
                body = json.dumps({"url": f"{scheme}://s{i}.bench.test:{port}/p{i}",
                                   "tcp_connect": [f"127.0.0.1:{port}"]}).encode()
                async with sem:
                    headers = sign_request(probe, "POST", "/api/v1/control", body, time.time())
                    async with session.post(base + "/api/v1/control", data=body,
                                            headers=headers) as resp:
                        answer = await resp.json()
                        if resp.status == 200 and answer["http_request"]["status_code"] == 200:
                            ok += 1
                        elif len(failures) < 5:
                            failures.append(answer)

            t0, cpu0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(one(i) for i in range(n)))
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await helper.cleanup()
    transport.close()
    for runner in runners:
        await runner.cleanup()
    print(json.dumps({
        "controls": n, "ok": ok, "concurrency": concurrency, "seconds": round(elapsed, 2),
        "controls_per_s": round(n / elapsed, 1), "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1), "failures": failures,
    }))


def _clone(handler: object) -> web.Application:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)  # type: ignore[arg-type]
    return app


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.helper")
    sub = parser.add_subparsers(dest="what", required=True)
    p_ipdb = sub.add_parser("ipdb")
    p_ipdb.add_argument("--v4", type=int, default=500_000)
    p_ipdb.add_argument("--v6", type=int, default=150_000)
    p_control = sub.add_parser("control")
    p_control.add_argument("--n", type=int, default=2000)
    p_control.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    if args.what == "ipdb":
        bench_ipdb(args.v4, args.v6)
    else:
        asyncio.run(bench_control(args.n, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
