"""The censor's on-path box: it sniffs copies of the probe's packets and races the real reply.

This kernel has no NFQUEUE, so like a real on-path (not in-path) censor the injector cannot
hold a packet: it sees a copy (AF_PACKET with a kernel BPF filter compiled by tcpdump), and
  - DNS query for a listed name: forges an answer from the resolver's address; the real
    answer still arrives later (two replies: the signature of injection);
  - TLS ClientHello whose SNI matches: resets both ends (reset), or puts the flow in the
    router's drop set so the ServerHello never arrives (drop), or in the shaping map so the
    flow is squeezed to the throttle rate (throttle);
  - TLS ClientHello whose SNI matches, or HTTP request whose Host matches: closes the
    client's side with a forged FIN (close: the client reads EOF) and drops the flow;
  - HTTP request whose Host matches: forges the blockpage as the server's response (and
    drops the real one), resets both ends, or black-holes the flow (drop);
  - DNS query over TCP whose name matches: resets both ends (censors that inject into UDP
    DNS reset TCP DNS);
  - dual-stack labs: an IPv6 ClientHello whose SNI matches is reset (both ends, forged) or
    dropped like an IPv4 one, through the router's IPv6 flow sets.
Lab servers answer after a few tens of milliseconds, so the injector wins the race.
Every action is logged as one JSON line (the self-checks read them).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset

from lab import packets as P
from lab.blockpages import http_response
from lab.servers.common import Lifetime, load_config, mark_ready

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
ETH_HLEN = 14


class Nft:
    """Adds set elements through libnftables (about a millisecond), or the nft binary."""

    def __init__(self) -> None:
        self._lib: Any = None
        self._ctx: Any = None
        path = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            return
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            return
        lib.nft_ctx_buffer_error(ctx)
        lib.nft_ctx_buffer_output(ctx)
        self._lib, self._ctx = lib, ctx

    def run(self, cmd: str) -> str | None:
        """Run one nft command; None on success, the error text otherwise."""
        if self._lib is not None:
            if self._lib.nft_run_cmd_from_buffer(self._ctx, cmd.encode()) == 0:
                return None
            err = self._lib.nft_ctx_get_error_buffer(self._ctx)
            return (err or b"nft error").decode(errors="replace").strip()
        proc = subprocess.run(["nft", cmd], capture_output=True, text=True, timeout=5,
                              check=False)
        return None if proc.returncode == 0 else proc.stderr.strip()


class Injector:
    def __init__(self, cfg: dict[str, Any], nft: Nft, send: Any, log: Any,
                 send6: Any = None) -> None:
        self.table = cfg.get("table", "vigil_censor")
        self.dns_rules = cfg.get("dns", [])
        self.tls_rules = cfg.get("tls", [])
        self.http_rules = cfg.get("http", [])
        self.dns_tcp_rules = cfg.get("dns_tcp", [])
        self.nft = nft
        # what the censor's forged IPv4 packets leave with (its own stack's initial TTL)
        ttl = int(cfg.get("ttl", 64))
        self.send = send if ttl == 64 else (  # callable(packet_bytes, dst_ip)
            lambda pkt, dst: send(P.with_ttl(pkt, ttl), dst))
        self.send6 = send6  # the same for whole IPv6 packets
        self.log = log  # callable(dict)

    def handle6(self, ip: P.IPv6) -> None:
        """IPv6: SNI rules only, through the router's IPv6 flow sets (nothing forged)."""
        if ip.proto != P.PROTO_TCP:
            return
        tcp = P.parse_tcp(ip.payload)
        if tcp is None or not tcp.payload or tcp.dport != 443:
            return
        sni = P.tls_sni(tcp.payload)
        rules = [r for r in self.tls_rules if r.get("family", "both") != "v4"]
        rule = None if sni is None else _first(rules, "sni", sni)
        if rule is None or rule["action"] not in ("reset", "drop"):
            return
        key = f"{ip.src} . {tcp.sport} . {ip.dst} . {tcp.dport}"
        if rule["action"] == "reset" and self.send6 is not None:
            ack = tcp.seq + len(tcp.payload)
            self.send6(P.build_tcp6(ip.dst, ip.src, tcp.dport, tcp.sport, tcp.ack, ack,
                                    P.RST | P.ACK), ip.src)
            self.send6(P.build_tcp6(ip.src, ip.dst, tcp.sport, tcp.dport, ack, 0, P.RST), ip.dst)
        err = self._add(f"flow6_{rule['action']}", key)
        self.log({"event": f"tls6_{rule['action']}", "sni": sni, "flow": key, "error": err})

    def handle(self, ip: P.IPv4) -> None:
        if ip.proto == P.PROTO_UDP:
            udp = P.parse_udp(ip.payload)
            if udp is not None and udp.dport == 53:
                self._dns(ip, udp)
        elif ip.proto == P.PROTO_TCP:
            tcp = P.parse_tcp(ip.payload)
            if tcp is None or not tcp.payload:
                return
            if tcp.dport == 443:
                self._tls(ip, tcp)
            elif tcp.dport == 80:
                self._http(ip, tcp)
            elif tcp.dport == 53:
                self._dns_tcp(ip, tcp)

    def _dns_tcp(self, ip: P.IPv4, tcp: P.TCP) -> None:
        name = P.dns_over_tcp_name(tcp.payload)
        rule = None if name is None else _first(self.dns_tcp_rules, "name", name)
        if rule is None:
            return
        self._reset_both(ip, tcp)
        self.log({"event": "dns_tcp_reset", "name": name,
                  "flow": f"{ip.src} . {tcp.sport} . {ip.dst} . {tcp.dport}"})

    def _dns(self, ip: P.IPv4, udp: P.UDP) -> None:
        try:
            query = dns.message.from_wire(udp.payload)
        except dns.exception.DNSException:
            return
        if not query.question or query.flags & dns.flags.QR:
            return
        q = query.question[0]
        name = q.name.to_text().lower().rstrip(".")
        rule = _first(self.dns_rules, "name", name)
        if rule is None:
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if q.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text_list(q.name, 60, "IN", "A", rule["a"]))
        pkt = P.build_udp(ip.dst, ip.src, 53, udp.sport, response.to_wire())
        self.send(pkt, ip.src)
        self.log({"event": "dns_inject", "name": name, "qtype": dns.rdatatype.to_text(q.rdtype),
                  "client": f"{ip.src}:{udp.sport}", "answer": rule["a"]})

    def _tls(self, ip: P.IPv4, tcp: P.TCP) -> None:
        sni = P.tls_sni(tcp.payload)
        if sni is None:
            return
        rule = _first([r for r in self.tls_rules if r.get("family", "both") != "v6"], "sni", sni)
        if rule is None:
            return
        action = rule["action"]
        key = f"{ip.src} . {tcp.sport} . {ip.dst} . {tcp.dport}"
        err: str | None = None
        if action == "reset":
            self._reset_both(ip, tcp)
            err = self._add("flow_reset", key)
        elif action == "drop":
            err = self._add("flow_drop", key)
        elif action == "close":
            self._close_client(ip, tcp)
            err = self._add("flow_drop", key)
        elif action == "throttle":
            err = self._add("flow_throttle", f"{key} : {rule['classid']}")
        self.log({"event": f"tls_{action}", "sni": sni, "flow": key, "error": err})

    def _http(self, ip: P.IPv4, tcp: P.TCP) -> None:
        host = P.http_host(tcp.payload)
        if host is None:
            return
        rule = _first(self.http_rules, "host", host)
        if rule is None:
            return
        key = f"{ip.src} . {tcp.sport} . {ip.dst} . {tcp.dport}"
        action = rule["action"]
        err: str | None = None
        if action == "blockpage":
            body = http_response(rule.get("page", "iran"))
            ack = tcp.seq + len(tcp.payload)
            self.send(P.build_tcp(ip.dst, ip.src, tcp.dport, tcp.sport, tcp.ack, ack,
                                  P.PSH | P.ACK | P.FIN, body), ip.src)
            self.send(P.build_tcp(ip.src, ip.dst, tcp.sport, tcp.dport, ack, 0, P.RST), ip.dst)
            err = self._add("flow_drop", key)
        elif action == "reset":
            self._reset_both(ip, tcp)
            err = self._add("flow_reset", key)
        elif action == "drop":
            err = self._add("flow_drop", key)
        elif action == "close":
            self._close_client(ip, tcp)
            err = self._add("flow_drop", key)
        self.log({"event": f"http_{action}", "host": host, "flow": key, "error": err})

    def _close_client(self, ip: P.IPv4, tcp: P.TCP) -> None:
        """A FIN to the client in the server's name (it reads EOF), a RST to the server."""
        ack = tcp.seq + len(tcp.payload)
        self.send(P.build_tcp(ip.dst, ip.src, tcp.dport, tcp.sport, tcp.ack, ack,
                              P.FIN | P.ACK), ip.src)
        self.send(P.build_tcp(ip.src, ip.dst, tcp.sport, tcp.dport, ack, 0, P.RST), ip.dst)

    def _reset_both(self, ip: P.IPv4, tcp: P.TCP) -> None:
        # to the client: the sequence number it expects next is the trigger's ack number
        ack = tcp.seq + len(tcp.payload)
        self.send(P.build_tcp(ip.dst, ip.src, tcp.dport, tcp.sport, tcp.ack, ack,
                              P.RST | P.ACK), ip.src)
        # to the server: it has already received the trigger (forwarded before we ran)
        self.send(P.build_tcp(ip.src, ip.dst, tcp.sport, tcp.dport, ack, 0, P.RST), ip.dst)

    def _add(self, set_name: str, element: str) -> str | None:
        return self.nft.run(f"add element inet {self.table} {set_name} {{ {element} }}")


def _first(rules: list[dict[str, Any]], key: str, name: str) -> dict[str, Any] | None:
    # the most specific pattern wins
    for rule in sorted(rules, key=lambda r: -len(r[key])):
        if P.name_matches(name, rule[key]):
            return rule
    return None


def _open_sniffer(iface: str, bpf: list[list[int]], ipv6: bool = False) -> socket.socket:
    # protocol 0 first: no packet is queued before the filter is attached
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    prog = b"".join(struct.pack("HBBI", *ins) for ins in bpf)
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HL", len(bpf), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    sock.bind((iface, ETH_P_ALL if ipv6 else ETH_P_IP))
    sock.settimeout(0.5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return sock


def main(cfg: dict[str, Any]) -> None:
    life = Lifetime(cfg)
    life.install_signals()
    ipv6 = bool(cfg.get("ipv6"))
    sniffer = _open_sniffer(cfg["iface"], cfg["bpf"], ipv6)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    log_file = open(cfg["log_file"], "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def send(pkt: bytes, dst: str) -> None:
        try:
            raw.sendto(pkt, (dst, 0))
        except OSError as exc:
            log({"event": "send_error", "error": str(exc)})

    def log(entry: dict[str, Any]) -> None:
        entry["t"] = time.time()
        log_file.write(json.dumps(entry) + "\n")

    raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW) if ipv6 else None

    def send6(pkt: bytes, dst: str) -> None:
        try:
            assert raw6 is not None
            raw6.sendto(pkt, (dst, 0))
        except OSError as exc:
            log({"event": "send_error", "error": str(exc)})

    injector = Injector(cfg, Nft(), send, log, send6 if ipv6 else None)
    mark_ready(cfg)
    try:
        while not life.expired():
            try:
                data, addr = sniffer.recvfrom(65535)
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            if addr[2] == PACKET_OUTGOING or len(data) <= ETH_HLEN:
                continue
            ethertype = struct.unpack_from("!H", data, 12)[0]
            if ethertype == ETH_P_IPV6:
                ip6 = P.parse_ipv6(data[ETH_HLEN:])
                if ip6 is not None:
                    injector.handle6(ip6)
                continue
            ip = P.parse_ipv4(data[ETH_HLEN:])
            if ip is not None:
                injector.handle(ip)
    finally:
        sniffer.close()
        raw.close()
        if raw6 is not None:
            raw6.close()
        log_file.close()


if __name__ == "__main__":
    main(load_config(sys.argv))
