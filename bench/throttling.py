"""Throttling detection benchmark on the namespace lab (run by hand as root, never in tests):

    .venv/bin/python -m bench.throttling [--detect 20] [--clean 100] [--jitter-ms 50] [--loss 1]

Builds a lab whose censor shapes flows with SNI ``*.twimg.lab.test`` to 130 kbit/s (Russia,
2021) and runs the agent's real throttling measurement (``measure`` + ``analyze``) from the
probe namespace against a bulk endpoint in the inet namespace (its own address, port 443, so
the censor's SNI rules see it; the path is unshaped veth, far above 10 Mbit/s):

* ``detect`` runs with SNI = the throttled name: detection rate, bytes and seconds per target
  (target: detected every time within 1 MB and 10 s);
* ``clean`` runs with unthrottled random names, with ``--jitter-ms`` of random pacing added by
  the bulk endpoint before every 16 kB chunk (the kernel here has no netem) and ``--loss``
  percent of its packets dropped by an nftables ``numgen`` rule on the ISP router: false
  positives (target: zero in 100).

Prints one JSON summary.  Nothing leaves the lab's namespaces.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_ADDR = "198.19.9.9"
BULK_PORT = 443
THROTTLED = "abs.twimg.lab.test"

SCENARIOS = """
[[scenario]]
id = "bench-throttled"
url = "https://abs.twimg.lab.test/"
test = "throttling"
censor = [{ kind = "sni_throttle", rate_kbit = 130 }]
"""


# ---- inside the inet namespace: the bulk endpoint ----------------------------------------------
async def serve(cfg: dict[str, Any]) -> None:
    from collector.helper.bulk import BulkConfig, BulkServer
    from lab.servers.common import Lifetime, mark_ready

    life = Lifetime(cfg)
    server = BulkServer(BulkConfig(BENCH_ADDR, BULK_PORT, jitter_ms=float(cfg["jitter_ms"])))
    async with server:
        Path(cfg["info_file"]).write_text(json.dumps(
            {"port": server.port, "certificate_sha256": server.certificate_sha256}))
        mark_ready(cfg)
        await life.wait()


# ---- inside the probe namespace: the measurements ----------------------------------------------
class _Discovery:
    """Stands in for the control helper: answers only the bulk endpoint discovery."""

    base_url = f"https://{BENCH_ADDR}/"

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info

    async def request_json(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        if path == "/api/v1/bulk":
            return {"available": True, "max_bytes": 4 * 1024 * 1024, **self.info}
        raise RuntimeError(f"not in the benchmark: {path}")

    async def control(self, url: str, tcp_connect: Any, body_cap: Any = None) -> Any:
        raise RuntimeError("not in the benchmark")


async def probe(cfg: dict[str, Any]) -> None:
    import secrets

    from agent.config import NetConfig
    from agent.engine.runner import MeasureContext
    from agent.experiments.throttling.analysis import analyze
    from agent.experiments.throttling.measure import ThrottlingSettings, measure
    from agent.net.dns import parse_resolver
    from agent.net.tls import make_contexts

    ctx = MeasureContext(net=NetConfig(), tls=make_contexts(None),
                         resolver=parse_resolver("198.18.1.53"),
                         control=_Discovery(cfg["info"]))
    settings = ThrottlingSettings(address_test=False)
    for i in range(int(cfg["runs"])):
        host = cfg["host"] or f"clean{secrets.token_hex(3)}.lab.test"
        t0 = time.monotonic()
        obs = await measure(f"https://{host}/", ctx, settings)
        seconds = time.monotonic() - t0
        verdict, details = analyze(obs)
        print(json.dumps({"run": i, "host": host, "status": str(verdict.status),
                          "reason": verdict.reason, "bytes": obs.bytes_total,
                          "seconds": round(seconds, 3), "rounds": details["sni"]["rounds"],
                          "ratio": details["sni"].get("ratio"),
                          "ks_pvalue": details["sni"].get("ks_pvalue")}), flush=True)


# ---- the driver (root namespace) ---------------------------------------------------------------
def _summary(rows: list[dict[str, Any]], want: str) -> dict[str, Any]:
    hits = [r for r in rows if r["status"] == want]
    return {
        "runs": len(rows),
        want: len(hits),
        "other": sorted({f"{r['status']}:{r['reason']}" for r in rows if r["status"] != want}),
        "max_bytes": max((r["bytes"] for r in rows), default=0),
        "mean_bytes": round(sum(r["bytes"] for r in rows) / max(1, len(rows))),
        "max_seconds": max((r["seconds"] for r in rows), default=0.0),
        "mean_seconds": round(sum(r["seconds"] for r in rows) / max(1, len(rows)), 2),
        "max_ratio_when_throttled": max((r["ratio"] or 0 for r in hits), default=None),
        "rounds": {str(k): sum(1 for r in rows if r["rounds"] == k)
                   for k in sorted({r["rounds"] for r in rows})},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detect", type=int, default=20)
    ap.add_argument("--clean", type=int, default=100)
    ap.add_argument("--jitter-ms", type=float, default=50.0)
    ap.add_argument("--loss", type=int, default=1, help="percent of bulk packets dropped")
    ap.add_argument("role", nargs="?", choices=["serve", "probe"], help=argparse.SUPPRESS)
    ap.add_argument("config", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role is not None:
        cfg = json.loads(Path(args.config).read_text())
        asyncio.run(serve(cfg) if args.role == "serve" else probe(cfg))
        return 0
    if os.geteuid() != 0:
        print("the benchmark builds a namespace lab: run it as root", file=sys.stderr)
        return 2
    from lab.lab import Lab

    with tempfile.TemporaryDirectory() as tmp:
        scen = Path(tmp) / "bench.toml"
        scen.write_text(SCENARIOS)
        lab = Lab.up([scen], helper=False)
        try:
            results = {}
            for phase, host, runs, jitter, loss in (
                ("detect", THROTTLED, args.detect, 0.0, 0),
                ("clean", "", args.clean, args.jitter_ms, args.loss),
                ("detect_lossy", THROTTLED, max(1, args.detect // 2), args.jitter_ms, args.loss),
            ):
                if runs <= 0:
                    continue
                rows = _phase(lab, Path(tmp), phase, host, runs, jitter, loss)
                results[phase] = _summary(rows, "throttled" if host else "ok")
                results[phase].update(jitter_ms=jitter, loss_percent=loss)
            print(json.dumps(results, indent=2))
        finally:
            lab.down()
    return 0


def _phase(lab: Any, tmp: Path, phase: str, host: str, runs: int, jitter: float,
           loss: int) -> list[dict[str, Any]]:
    name = f"bench-bulk-{phase}"
    info_file = tmp / f"{name}.info"
    subprocess.run(["ip", "-n", lab.ns("inet"), "addr", "replace", f"{BENCH_ADDR}/32", "dev",
                    "lo"], check=True)
    cfg = {**lab._common_cfg(name), "jitter_ms": jitter, "info_file": str(info_file)}
    (tmp / f"{name}.json").write_text(json.dumps(cfg))
    lab._spawn(name, "inet", [sys.executable, "-m", "bench.throttling", "serve",
                              str(tmp / f"{name}.json")])
    lab._wait_ready([name])
    isp = lab.ns("isp")
    subprocess.run(["ip", "netns", "exec", isp, "nft", "delete", "table", "inet",
                    "vigil_bench"], capture_output=True, check=False)
    if loss:
        rules = ("table inet vigil_bench {\n chain bench_forward {\n"
                 "  type filter hook forward priority -5;\n"
                 f"  ip saddr {BENCH_ADDR} numgen random mod 100 < {int(loss)} drop\n }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", isp, "nft", "-f", "-"], input=rules,
                       text=True, check=True)
    pcfg = {"info": json.loads(info_file.read_text()), "runs": runs, "host": host}
    (tmp / f"{phase}.probe.json").write_text(json.dumps(pcfg))
    proc = lab.run_in("probe", [sys.executable, "-m", "bench.throttling", "probe",
                                str(tmp / f"{phase}.probe.json")], timeout=30.0 * runs + 60)
    if proc.returncode != 0:
        raise SystemExit(f"{phase}: probe side failed:\n{proc.stderr[-3000:]}")
    pid = lab.state.data["processes"][name][0]
    os.kill(pid, 15)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


if __name__ == "__main__":
    sys.exit(main())
