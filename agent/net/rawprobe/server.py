"""The packet process: captures headers and sends TTL-limited probes, with CAP_NET_RAW only.

Run as ``python -m agent.net.rawprobe.server`` (JSON lines on stdin/stdout: spawned by the agent
when it may give the capability) or ``--socket PATH`` (the ``vigil-packets`` unit: the agent
connects to the Unix socket).  scapy is imported here and nowhere else, on first use; it needs
tcpdump to compile BPF filters.  See ``protocol`` for the requests.

A trace probe is an ordinary kernel TCP connection (or UDP socket) whose TTL is lowered after
the handshake, so the trigger (and its benign twin) expires at hop N; the capture sees the ICMP
time-exceeded that names hop N and whatever the censor sends back.  Nothing here is forged.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.net.rawprobe import protocol as proto
from agent.net.rawprobe import triggers
from agent.net.rawprobe.protocol import CaptureRequest, ProtocolError, TraceRequest

MAX_SESSIONS = 4
DUPLICATE_WINDOW_S = 0.005
GRACE_S = 0.3
SETTLE_QUIET_S = 0.15
SETTLE_LIMIT_S = 1.0  # after the first answer to a probe: how long to wait for a second one
ICMP_TIME_EXCEEDED = 11
ICMP_UNREACHABLE = 3


def availability() -> str | None:
    """None when captures can work here, else why not (no capability, no scapy, no tcpdump)."""
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.close()
    except PermissionError:
        return "no CAP_NET_RAW: raw packet capture is not permitted"
    except OSError as exc:
        return f"raw sockets unavailable: {exc.strerror or exc}"
    if shutil.which("tcpdump") is None:
        return "tcpdump not installed (scapy needs it to compile capture filters)"
    try:
        import scapy  # noqa: F401
    except ImportError:
        return "scapy not installed (install the agent with the 'raw' extra)"
    return None


def _load_scapy() -> None:
    """The layers a capture dissects (they register the link types the sniffer needs)."""
    import scapy.layers.dns
    import scapy.layers.inet
    import scapy.layers.inet6
    import scapy.layers.l2  # noqa: F401


def summarize(pkt: Any, t0: float, dns_ports: frozenset[int] = frozenset({53})
              ) -> dict[str, Any] | None:
    """One captured scapy packet as a ``records.Packet`` JSON object (headers only)."""
    from scapy.layers.dns import DNS
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
    from scapy.layers.inet6 import IPv6

    out: dict[str, Any] = {"t": round(max(0.0, float(pkt.time) - t0), 6)}
    if IP in pkt:
        ip = pkt[IP]
        out.update(src=ip.src, dst=ip.dst, ttl=int(ip.ttl), ip_id=int(ip.id),
                   df=bool(int(ip.flags) & 0x2))
        l4_len = int(ip.len) - int(ip.ihl) * 4
    elif IPv6 in pkt:
        ip = pkt[IPv6]
        out.update(src=ip.src, dst=ip.dst, ttl=int(ip.hlim), ip_id=0, df=True)
        l4_len = int(ip.plen)
    else:
        return None
    if TCP in pkt and ICMP not in pkt:
        tcp = pkt[TCP]
        out.update(proto="tcp", sport=int(tcp.sport), dport=int(tcp.dport), flags=str(tcp.flags),
                   seq=int(tcp.seq), ack=int(tcp.ack), window=int(tcp.window),
                   options=[str(o[0]) for o in tcp.options][: 40],
                   payload_len=max(0, l4_len - int(tcp.dataofs) * 4))
    elif UDP in pkt and ICMP not in pkt:
        udp = pkt[UDP]
        out.update(proto="udp", sport=int(udp.sport), dport=int(udp.dport),
                   payload_len=max(0, l4_len - 8))
        d = None
        if int(udp.sport) in dns_ports:
            with contextlib.suppress(Exception):  # not DNS after all: keep the header
                d = pkt[DNS] if DNS in pkt else DNS(bytes(udp.payload))
        if d is not None and int(d.qr) == 1:
            answers: list[str] = []
            with contextlib.suppress(Exception):  # malformed records: keep the header
                for rr in d.an or []:
                    if int(rr.type) in (1, 28):
                        answers.append(str(rr.rdata))
            out.update(dns_id=int(d.id), dns_rcode=_rcode(int(d.rcode)),
                       dns_answers=answers[: 32])
    elif ICMP in pkt:
        icmp = pkt[ICMP]
        out.update(proto="icmp", icmp_type=int(icmp.type), icmp_code=int(icmp.code))
        if IPerror in pkt:
            inner = pkt[IPerror]
            q: dict[str, Any] = {"src": inner.src, "dst": inner.dst, "sport": 0, "dport": 0,
                                 "proto": "icmp"}
            if TCPerror in pkt:
                q.update(proto="tcp", sport=int(pkt[TCPerror].sport),
                         dport=int(pkt[TCPerror].dport))
            elif UDPerror in pkt:
                q.update(proto="udp", sport=int(pkt[UDPerror].sport),
                         dport=int(pkt[UDPerror].dport))
            out["quoted"] = q
    else:
        return None
    return out


def _rcode(code: int) -> str:
    return {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
            5: "REFUSED"}.get(code, str(code))


class Capture:
    """A bounded sniffer: headers of matching packets, kept in memory until stopped."""

    def __init__(self, bpf: str, max_packets: int, ifaces: list[str] | None = None,
                 dns_ports: frozenset[int] = frozenset({53})) -> None:
        _load_scapy()
        from scapy.sendrecv import AsyncSniffer

        self.t0 = time.time()
        self.packets: list[dict[str, Any]] = []
        self.dropped = 0
        self.max_packets = max_packets
        self.dns_ports = dns_ports
        self.cond = threading.Condition()
        self._recent: collections.deque[tuple[float, tuple[Any, ...]]] = collections.deque(
            maxlen=32)
        self._started = threading.Event()
        kwargs: dict[str, Any] = {"filter": bpf, "store": False, "prn": self._add,
                                  "started_callback": self._started.set}
        if ifaces:
            kwargs["iface"] = ifaces if len(ifaces) > 1 else ifaces[0]
        self.sniffer = AsyncSniffer(**kwargs)

    def start(self, timeout: float = 5.0) -> None:
        self.sniffer.start()
        if not self._started.wait(timeout):
            raise OSError("the capture did not start")

    def _add(self, pkt: Any) -> None:
        try:
            item = summarize(pkt, self.t0, self.dns_ports)
        except Exception:  # a packet scapy cannot dissect: skip it, keep capturing
            item = None
        with self.cond:
            if item is None:
                return
            # a loopback packet is seen twice (going out, coming in): keep it once
            key = tuple(v for k, v in sorted(item.items()) if k != "t")
            if any(abs(item["t"] - t) < DUPLICATE_WINDOW_S and k == key
                   for t, k in self._recent):
                return
            self._recent.append((item["t"], key))
            if len(self.packets) >= self.max_packets:
                self.dropped += 1
                self.cond.notify_all()
                return
            self.packets.append(item)
            self.cond.notify_all()

    def settle(self, quiet: float = SETTLE_QUIET_S, limit: float = SETTLE_LIMIT_S) -> None:
        """Wait until no packet has arrived for ``quiet`` seconds (at most ``limit``): the
        last packets of a flow are still in the sniffer's queue when the agent says stop."""
        end = time.monotonic() + limit
        with self.cond:
            while True:
                seen = len(self.packets) + self.dropped
                now = time.monotonic()
                if now >= end:
                    return
                self.cond.wait(timeout=min(quiet, end - now))
                if len(self.packets) + self.dropped == seen:
                    return

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.sniffer.stop(join=True)

    def wait_for(self, match: Callable[[dict[str, Any]], bool], start: int, deadline: float
                 ) -> list[dict[str, Any]]:
        """Packets from index ``start`` on that match, once at least one does (or deadline);
        after the first, wait ``GRACE_S`` more for a second kind of answer."""
        found: list[dict[str, Any]] = []
        grace_end: float | None = None
        with self.cond:
            while True:
                found = [p for p in self.packets[start:] if match(p)]
                now = time.monotonic()
                if found and grace_end is None:
                    grace_end = min(deadline, now + GRACE_S)
                end = deadline if grace_end is None else grace_end
                if now >= end:
                    return found
                self.cond.wait(timeout=end - now)


def _up_interfaces() -> list[str]:
    """Interfaces that are up (a capture on a down one fails to open)."""
    names: list[str] = []
    for _, name in socket.if_nameindex():
        try:
            with open(f"/sys/class/net/{name}/flags", encoding="ascii") as f:
                flags = int(f.read().strip(), 16)
        except (OSError, ValueError):
            continue
        if flags & 0x1:  # IFF_UP
            names.append(name)
    return names[:16]


def _ifaces_for(addresses: list[str]) -> list[str] | None:
    from scapy.config import conf

    names: set[str] = set()
    for a in addresses:
        with contextlib.suppress(Exception):
            names.add(str(conf.route.route(a)[0]))
    return sorted(names) or None


# ---- trace ---------------------------------------------------------------------------------
def _tcp_probe(req: TraceRequest, cap: Capture, ttl: int, name: str) -> dict[str, Any]:
    result: dict[str, Any] = {"name": name}
    t_start = time.monotonic()
    try:
        sock = socket.create_connection((req.address, req.port), timeout=req.timeout)
    except OSError as exc:
        result.update(outcome="connect_failed", error=str(exc.strerror or exc))
        return result
    try:
        lport = sock.getsockname()[1]
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        start = len(cap.packets)
        t0 = time.monotonic()
        sent_at = time.time() - cap.t0
        sock.sendall(triggers.payload(req.protocol, name))

        def match(p: dict[str, Any]) -> bool:
            q = p.get("quoted")
            if p["proto"] == "icmp" and q is not None:
                return bool(q["proto"] == "tcp" and q["sport"] == lport
                            and q["dst"] == req.address and q["dport"] == req.port)
            return bool(p["proto"] == "tcp" and p["src"] == req.address
                        and p["sport"] == req.port and p["dport"] == lport
                        and (p["payload_len"] > 0 or set(p["flags"]) & {"R", "F"}))

        found = cap.wait_for(match, start, t0 + req.timeout)
        _classify(result, found, sent_at)
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    result["elapsed_ms"] = round((time.monotonic() - t_start) * 1000, 1)
    return result


def _dns_probe(req: TraceRequest, cap: Capture, ttl: int, name: str) -> dict[str, Any]:
    result: dict[str, Any] = {"name": name}
    qid = random.randrange(1, 65536)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        sock.connect((req.address, req.port))
        lport = sock.getsockname()[1]
        start = len(cap.packets)
        t0 = time.monotonic()
        sent_at = time.time() - cap.t0
        sock.send(triggers.payload("dns", name, qid))

        def match(p: dict[str, Any]) -> bool:
            q = p.get("quoted")
            if p["proto"] == "icmp" and q is not None:
                return bool(q["proto"] == "udp" and q["sport"] == lport
                            and q["dst"] == req.address)
            return bool(p["proto"] == "udp" and p["src"] == req.address
                        and p["dport"] == lport and p.get("dns_id") == qid)

        found = cap.wait_for(match, start, t0 + req.timeout)
    _classify(result, found, sent_at)
    return result


def _classify(result: dict[str, Any], found: list[dict[str, Any]], sent_at: float) -> None:
    """expired (ICMP time exceeded: names the hop), reset, fin, answer, unreachable, silent.
    ``sent_at``: when the probe left, on the capture's clock."""
    icmp = next((p for p in found if p["proto"] == "icmp"), None)
    resp = next((p for p in found if p["proto"] != "icmp"), None)
    if icmp is not None:
        result["hop_address"] = icmp["src"]
        result["rtt_ms"] = round(max(0.0, icmp["t"] - sent_at) * 1000, 1)
        result["icmp"] = icmp
    if resp is not None:
        result["response"] = resp
        result["response_rtt_ms"] = round(max(0.0, resp["t"] - sent_at) * 1000, 1)
        flags = set(resp.get("flags", ""))
        result["outcome"] = ("reset" if "R" in flags else "fin" if "F" in flags
                             else "answer")
    elif icmp is not None:
        result["outcome"] = ("expired" if icmp["icmp_type"] == ICMP_TIME_EXCEEDED
                             else "unreachable")
    else:
        result["outcome"] = "silent"


def run_trace(req: TraceRequest) -> dict[str, Any]:
    deadline = time.monotonic() + req.budget_s
    bpf = (f"icmp or (src host {req.address} and src port {req.port} and "
           f"{'udp' if req.protocol == 'dns' else 'tcp'})")
    cap = Capture(bpf, proto.MAX_CAPTURE_PACKETS, _ifaces_for([req.address]),
                  frozenset({req.port}) if req.protocol == "dns" else frozenset())
    cap.start()
    probe = _dns_probe if req.protocol == "dns" else _tcp_probe
    hops: list[dict[str, Any]] = []
    stopped = "max_hops"
    try:
        for ttl in range(1, req.max_hops + 1):
            hop: dict[str, Any] = {"ttl": ttl, "trigger": [], "twin": []}
            for _ in range(req.probes_per_hop):
                for role, name in (("twin", req.twin), ("trigger", req.name)):
                    if time.monotonic() + req.timeout > deadline:
                        stopped = "time_budget"
                        break
                    hop[role].append(probe(req, cap, ttl, name))
            hops.append(hop)
            if stopped == "time_budget":
                break
            twins = hop["twin"]
            if any(t["outcome"] == "connect_failed" for t in twins + hop["trigger"]):
                stopped = "connect_failed"
                break
            if twins and all(t["outcome"] == "answer" for t in twins):
                stopped = "destination_reached"
                break
    finally:
        cap.stop()
    return {"ok": True, "event": "trace", "hops": hops, "stopped": stopped}


# ---- sessions ------------------------------------------------------------------------------
class Session:
    """One client connection: hello, capture/stop, trace; replies as JSON lines."""

    def __init__(self, reader: asyncio.StreamReader, write: Callable[[dict[str, Any]], Any],
                 slots: asyncio.Semaphore) -> None:
        self.reader = reader
        self.write = write
        self.slots = slots

    async def run(self) -> None:
        while True:
            try:
                line = await self.reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                await self.write({"ok": False, "error": "request line too long"})
                return
            if not line:
                return
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ProtocolError("a request is a JSON object")
                await self.handle(req)
            except (ProtocolError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                await self.write({"ok": False, "error": f"bad request: {exc}"})
            except OSError as exc:
                await self.write({"ok": False, "error": f"packet I/O failed: {exc}"})

    async def handle(self, req: dict[str, Any]) -> None:
        op = req.get("op")
        if op == "hello":
            why = await asyncio.to_thread(availability)
            if why is None:
                await self.write({"ok": True, "version": proto.VERSION,
                                  "ops": ["capture", "stop", "trace"]})
            else:
                await self.write({"ok": False, "error": why})
            return
        if op not in ("capture", "trace"):
            raise ProtocolError(f"unknown op {str(op)[:32]!r}")
        if self.slots.locked():
            await self.write({"ok": False, "error": "busy: too many captures at once"})
            return
        async with self.slots:
            if op == "capture":
                await self.capture(proto.parse_capture(req))
            else:
                treq = proto.parse_trace(req)
                await self.write(await asyncio.to_thread(run_trace, treq))

    async def capture(self, req: CaptureRequest) -> None:
        ports = " or ".join(f"port {p}" for p in req.ports)
        # every interface: which one the measurement's flows take is not known yet
        ifaces = _up_interfaces()
        cap = Capture(f"(tcp or udp) and ({ports})", req.max_packets, ifaces or None,
                      frozenset(req.ports) - {80, 443})
        await asyncio.to_thread(cap.start)
        endpoints: set[tuple[str, int]] = set()
        try:
            await self.write({"ok": True, "event": "started"})
            try:
                async with asyncio.timeout(req.seconds):
                    line = await self.reader.readline()
                stop = json.loads(line) if line.strip() else {}
                if not isinstance(stop, dict) or stop.get("op") != "stop":
                    raise ProtocolError("a capture ends with a stop request")
                endpoints = proto.parse_endpoints(stop)
            except TimeoutError:
                pass
            await asyncio.to_thread(cap.settle)
        finally:
            await asyncio.to_thread(cap.stop)
        with cap.cond:
            packets = [p for p in cap.packets
                       if (p["src"], p.get("sport")) in endpoints
                       or (p["dst"], p.get("dport")) in endpoints]
        await self.write({"ok": True, "event": "packets", "packets": packets,
                          "dropped": cap.dropped})


async def _serve_stdio() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=proto.MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    async def write(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        out.flush()

    await Session(reader, write, asyncio.Semaphore(1)).run()


async def _serve_socket(path: str) -> None:
    slots = asyncio.Semaphore(MAX_SESSIONS)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def write(obj: dict[str, Any]) -> None:
            writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
            await writer.drain()

        try:
            await Session(reader, write, slots).run()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = await asyncio.start_unix_server(client, path, limit=proto.MAX_LINE)
    os.chmod(path, 0o660)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: None)  # no config
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vigil-packets", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", help="serve on this Unix socket (default: stdin/stdout)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve_socket(args.socket) if args.socket else _serve_stdio())
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
