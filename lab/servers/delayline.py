"""A delay line for the lab's ISP router: real round-trip times without netem (I/O).

The kernel here has no netem, so packets to and from "distant" sites take a detour through a
TUN device in the ISP namespace.  Policy routing sends a delayed site's packets (arriving from
the probe or from the uplink) into the TUN; this process reads each packet, holds it for half
the site's round-trip time and writes it back, and the kernel routes it on (packets coming out
of the TUN use the main table).  So TCP sees the RTT on every segment, from the SYN on: slow
start, ACK clocking and retransmission timers behave as on a long path.  The censor's rules
(matched on the probe- and uplink-facing interfaces) and the HTB shaping on the probe link are
unchanged.

Per direction every site has one fixed delay, so packets of one direction leave in the order
they came (one FIFO per delay value).  Config: ``{"tun": "dly0", "delays": {"198.19.1.5": 150,
...}}`` (round-trip milliseconds); routes and rules are set up here, after the TUN exists.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import os
import struct
import subprocess
import sys
from typing import Any

from lab.servers.common import Lifetime, load_config, mark_ready

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
TABLE = "100"
MAX_QUEUED = 20_000  # per delay value: beyond this a packet is dropped, like a full buffer


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def route_setup(tun: str, addresses: list[str], probe_if: str, uplink_if: str,
                tun_addr: str) -> None:
    cmds = [
        ["ip", "addr", "add", f"{tun_addr}/32", "dev", tun],
        ["ip", "link", "set", tun, "up", "txqueuelen", "10000"],
        ["ip", "route", "replace", "default", "dev", tun, "table", TABLE],
        ["ip", "rule", "add", "pref", "100", "iif", tun, "lookup", "main"],
        ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
         f"net.ipv4.conf.{tun}.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"],
    ]
    for addr in addresses:
        cmds.append(["ip", "rule", "add", "pref", "110", "iif", probe_if, "to", addr,
                     "lookup", TABLE])
        cmds.append(["ip", "rule", "add", "pref", "120", "iif", uplink_if, "from", addr,
                     "lookup", TABLE])
    for cmd in cmds:
        subprocess.run(cmd, check=True, capture_output=True, timeout=10)


class DelayLine:
    def __init__(self, fd: int, delays_ms: dict[str, float]) -> None:
        self.fd = fd
        self.loop = asyncio.get_running_loop()
        self.one_way = {bytes(int(x) for x in a.split(".")): ms / 2000.0
                        for a, ms in delays_ms.items()}
        self.queues: dict[float, collections.deque[tuple[float, bytes]]] = {}
        self.timers: dict[float, asyncio.TimerHandle] = {}
        self.dropped = 0

    def on_readable(self) -> None:
        now = self.loop.time()
        for _ in range(256):  # bounded batch per wake-up
            try:
                pkt = os.read(self.fd, 65_535)
            except BlockingIOError:
                return
            except OSError:
                return
            if len(pkt) < 20 or pkt[0] >> 4 != 4:
                continue
            delay = self.one_way.get(pkt[16:20])
            if delay is None:
                delay = self.one_way.get(pkt[12:16], 0.0)
            self.enqueue(delay, now + delay, pkt)

    def enqueue(self, delay: float, due: float, pkt: bytes) -> None:
        q = self.queues.setdefault(delay, collections.deque())
        if len(q) >= MAX_QUEUED:
            self.dropped += 1
            return
        q.append((due, pkt))
        if delay not in self.timers:
            self.timers[delay] = self.loop.call_at(due, self.drain, delay)

    def drain(self, delay: float) -> None:
        self.timers.pop(delay, None)
        q = self.queues[delay]
        now = self.loop.time()
        while q and q[0][0] <= now + 0.0002:
            _, pkt = q.popleft()
            try:
                os.write(self.fd, pkt)
            except OSError:
                self.dropped += 1
        if q:
            self.timers[delay] = self.loop.call_at(q[0][0], self.drain, delay)


async def main(cfg: dict[str, Any]) -> None:
    life = Lifetime(cfg)
    tun = str(cfg.get("tun", "dly0"))
    fd = open_tun(tun)
    delays = {str(a): float(ms) for a, ms in cfg["delays"].items()}
    route_setup(tun, sorted(delays), str(cfg["probe_if"]), str(cfg["uplink_if"]),
                str(cfg["tun_addr"]))
    line = DelayLine(fd, delays)
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, line.on_readable)
    mark_ready(cfg)
    try:
        await life.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


if __name__ == "__main__":
    asyncio.run(main(load_config(sys.argv)))
