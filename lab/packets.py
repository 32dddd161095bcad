"""IPv4/TCP/UDP parsing and forging for the on-path injector, plus SNI and Host extraction.

Pure byte manipulation (no sockets), so it is unit-tested without privileges.  The injector
sees copies of packets (it cannot hold them: no NFQUEUE here), so what it forges must be
exactly in the victim's receive window: a reset carries the sequence number the victim
expects next, which is the acknowledgement number of the packet that triggered it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

PROTO_TCP = 6
PROTO_UDP = 17

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass(frozen=True, slots=True)
class IPv4:
    src: str
    dst: str
    proto: int
    ttl: int
    payload: bytes  # the transport segment


@dataclass(frozen=True, slots=True)
class TCP:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class UDP:
    sport: int
    dport: int
    payload: bytes


def parse_ipv4(data: bytes) -> IPv4 | None:
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    total = struct.unpack_from("!H", data, 2)[0]
    if ihl < 20 or total < ihl or len(data) < ihl:
        return None
    frag = struct.unpack_from("!H", data, 6)[0]
    if frag & 0x1FFF:  # a non-first fragment carries no transport header
        return None
    return IPv4(
        src=socket.inet_ntoa(data[12:16]), dst=socket.inet_ntoa(data[16:20]),
        proto=data[9], ttl=data[8], payload=bytes(data[ihl:min(total, len(data))]),
    )


@dataclass(frozen=True, slots=True)
class IPv6:
    src: str
    dst: str
    proto: int  # the transport after the fixed header (the lab sends no extension headers)
    ttl: int  # hop limit
    payload: bytes


def parse_ipv6(data: bytes) -> IPv6 | None:
    if len(data) < 40 or data[0] >> 4 != 6:
        return None
    length = struct.unpack_from("!H", data, 4)[0]
    return IPv6(
        src=socket.inet_ntop(socket.AF_INET6, data[8:24]),
        dst=socket.inet_ntop(socket.AF_INET6, data[24:40]),
        proto=data[6], ttl=data[7], payload=bytes(data[40:40 + length]),
    )


def dns_over_tcp_name(payload: bytes) -> str | None:
    """The query name of a DNS-over-TCP message (2-byte length, then the message), or None."""
    if len(payload) < 2 + 12 + 1:
        return None
    msg = payload[2:]
    (qdcount,) = struct.unpack_from("!H", msg, 4)
    if qdcount < 1 or msg[2] & 0x80:  # no question, or a response
        return None
    labels: list[str] = []
    pos = 12
    for _ in range(128):
        if pos >= len(msg):
            return None
        n = msg[pos]
        if n == 0:
            return ".".join(labels).lower()
        if n & 0xC0:  # no compression in a question
            return None
        labels.append(msg[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    return None


def parse_tcp(seg: bytes) -> TCP | None:
    if len(seg) < 20:
        return None
    sport, dport, seq, ack, off_flags = struct.unpack_from("!HHIIH", seg, 0)
    off = (off_flags >> 12) * 4
    if off < 20 or off > len(seg):
        return None
    return TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=off_flags & 0x3F,
               payload=bytes(seg[off:]))


def parse_udp(seg: bytes) -> UDP | None:
    if len(seg) < 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", seg, 0)
    end = min(len(seg), length) if length >= 8 else len(seg)
    return UDP(sport=sport, dport=dport, payload=bytes(seg[8:end]))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, length)


def build_ipv4(src: str, dst: str, proto: int, segment: bytes, ttl: int = 64,
               ident: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), ident, 0x4000, ttl,
                         proto, 0, socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + segment


def with_ttl(packet: bytes, ttl: int) -> bytes:
    """The same IPv4 packet leaving with another TTL (header checksum recomputed)."""
    header = bytearray(packet[:20])
    header[8] = ttl
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    return bytes(header) + packet[20:]


def build_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    length = 8 + len(payload)
    seg = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = checksum(_pseudo(src, dst, PROTO_UDP, length) + seg) or 0xFFFF
    seg = seg[:6] + struct.pack("!H", csum) + seg[8:]
    return build_ipv4(src, dst, PROTO_UDP, seg)


def build_tcp(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
              payload: bytes = b"", window: int = 65535) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      5 << 4, flags, window, 0, 0) + payload
    csum = checksum(_pseudo(src, dst, PROTO_TCP, len(seg)) + seg)
    seg = seg[:16] + struct.pack("!H", csum) + seg[18:]
    return build_ipv4(src, dst, PROTO_TCP, seg)


def build_tcp6(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
               payload: bytes = b"", window: int = 65535, hop_limit: int = 64) -> bytes:
    """A whole IPv6 packet (fixed header, no extensions) carrying one TCP segment."""
    s_raw, d_raw = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      5 << 4, flags, window, 0, 0) + payload
    pseudo = s_raw + d_raw + struct.pack("!I3xB", len(seg), PROTO_TCP)
    seg = seg[:16] + struct.pack("!H", checksum(pseudo + seg)) + seg[18:]
    header = struct.pack("!IHBB", 6 << 28, len(seg), PROTO_TCP, hop_limit) + s_raw + d_raw
    return header + seg


def tls_sni(payload: bytes) -> str | None:
    """The server_name of a TLS ClientHello, read as far as the segment allows.

    Like a real DPI box, it looks only at the first segment of the flow's payload; OpenSSL
    puts server_name early, so even a ClientHello split over two segments is matched.
    """
    try:
        if len(payload) < 6 or payload[0] != 0x16 or payload[5] != 0x01:
            return None
        pos = 5 + 4 + 2 + 32  # record header, handshake header, client_version, random
        pos += 1 + payload[pos]  # session id
        (n,) = struct.unpack_from("!H", payload, pos)
        pos += 2 + n  # cipher suites
        pos += 1 + payload[pos]  # compression methods
        (ext_total,) = struct.unpack_from("!H", payload, pos)
        pos += 2
        end = min(len(payload), pos + ext_total)
        while pos + 4 <= end:
            ext_type, ext_len = struct.unpack_from("!HH", payload, pos)
            pos += 4
            if ext_type == 0:
                # server_name_list length (2), name_type (1), name length (2), name
                if pos + 5 > len(payload) or payload[pos + 2] != 0:
                    return None
                (name_len,) = struct.unpack_from("!H", payload, pos + 3)
                raw = payload[pos + 5 : pos + 5 + name_len]
                if len(raw) != name_len:
                    return None
                return raw.decode("ascii", "replace").lower().rstrip(".")
            pos += ext_len
    except (IndexError, struct.error):
        return None
    return None


def http_host(payload: bytes) -> str | None:
    """The Host header of a plain HTTP request in the first segment (None if not a request)."""
    head = payload.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    if not lines or b" HTTP/1." not in lines[0]:
        return None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace").lower()
            if host.startswith("["):
                return host
            return host.rsplit(":", 1)[0] if ":" in host else host
    return None


def name_matches(name: str, pattern: str) -> bool:
    """Censors match a domain and its subdomains (``x.twitter.com`` matches ``twitter.com``)."""
    name = name.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    return name == pattern or name.endswith("." + pattern)
