"""Memory of the privilege split: the agent's RSS with and without packet capture, and the
packet process's own.  Run by hand (needs CAP_NET_RAW for the capture; loopback only):

    .venv/bin/python -m bench.packets

Each figure is a fresh interpreter's VmRSS (/proc/<pid>/status), so imports are counted as a
Raspberry Pi would pay them.  Results are written in docs/packet-evidence.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

AGENT_BASE = """
import agent.daemon.loop, agent.experiments as e
e.load_all()
"""

AGENT_WITH_CAPTURE = AGENT_BASE + """
import asyncio, socket, struct
from agent.net.rawprobe import client
from agent.net.rawprobe.protocol import CaptureRequest

async def flow():
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
    port = srv.getsockname()[1]
    async with client.capture(client.PacketSettings(spawn=True),
                              CaptureRequest((port,), 10, 200)) as cap:
        c = socket.create_connection(("127.0.0.1", port)); a, _ = srv.accept()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); a.close()
        c.close()
        chan = cap._chan
        child = chan.proc.pid
        child_rss = rss(child)
        pk = await cap.stop([f"127.0.0.1:{port}"])
    return len(pk), child_rss

n, child_rss = asyncio.run(flow())
OUT["packets"] = n
OUT["packet_process_kb"] = child_rss
"""

AGENT_IMPORTING_SCAPY = AGENT_BASE + """
import scapy.layers.inet, scapy.layers.inet6, scapy.layers.dns, scapy.layers.l2, scapy.sendrecv
"""

PRELUDE = """
import json, os
def rss(pid="self"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
OUT = {}
"""
EPILOGUE = """
OUT["self_kb"] = rss()
print(json.dumps(OUT))
"""


def measure(code: str) -> dict[str, int]:
    proc = subprocess.run([sys.executable, "-c", PRELUDE + code + EPILOGUE], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    rows = [("agent (daemon + experiments), no capture", measure(AGENT_BASE)),
            ("agent after a capture by the packet process", measure(AGENT_WITH_CAPTURE)),
            ("agent if it imported scapy itself", measure(AGENT_IMPORTING_SCAPY))]
    for label, r in rows:
        print(f"{label:<48} {r['self_kb'] / 1024:6.1f} MB")
    cap = rows[1][1]
    print(f"{'packet process (scapy loaded, capturing)':<48} "
          f"{cap['packet_process_kb'] / 1024:6.1f} MB   ({cap['packets']} packets)")


if __name__ == "__main__":
    main()
