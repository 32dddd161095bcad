"""A measuring client for the self-checks, run inside a lab namespace.

    ip netns exec <ns> python -m lab.client \
        '{"parallel": true, "checks": [{"type": "dns", "name": "x.lab.test"}]}'
(or the same JSON on stdin).

It is deliberately independent of the agent: the self-checks prove the censor manifests on
the wire with a client that knows nothing about verdicts.  Check types:
  dns  {name, server?, qtype?, listen_s?}   every reply to one query (listening listen_s
                                            after the first), with arrival times
  dns_tcp {name, server?, qtype?, timeout?}  the same query over TCP: one answer or the error
  tcp  {ip, port, timeout?}                 connect outcome and time
  tls  {ip, port?, sni, ca_file?, timeout?} handshake outcome (verified when ca_file is set)
  http {ip, port?, host, path?, tls?, sni?, ca_file?, timeout?}
       one GET; status, length, head, and throughput (bytes/s after the first body byte)
Errors are short strings: timeout, connection_refused, connection_reset, eof, ssl:<reason>.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import ssl
import sys
import time
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype


def _error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, ConnectionResetError):
        return "connection_reset"
    if isinstance(exc, asyncio.IncompleteReadError | EOFError):
        return "eof"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"ssl_verify:{exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"ssl:{exc.reason}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return f"other:{type(exc).__name__}:{exc}"


def _system_resolver() -> str:
    with open("/etc/resolv.conf", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1]
    raise RuntimeError("no nameserver in /etc/resolv.conf")


async def check_dns(c: dict[str, Any]) -> dict[str, Any]:
    server = c.get("server") or _system_resolver()
    qtype = dns.rdatatype.from_text(c.get("qtype", "A"))
    query = dns.message.make_query(c["name"], qtype)
    listen = float(c.get("listen_s", 0.3))
    timeout = float(c.get("timeout", 3.0))
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    replies: list[dict[str, Any]] = []
    try:
        await loop.sock_connect(sock, (server, 53))
        t0 = time.monotonic()
        await loop.sock_sendall(sock, query.to_wire())
        deadline = t0 + timeout
        while time.monotonic() < deadline and len(replies) < 10:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65535),
                                              deadline - time.monotonic())
            except TimeoutError:
                break
            except ConnectionRefusedError:
                return {"replies": replies, "error": "connection_refused"}
            t = time.monotonic() - t0
            try:
                msg = dns.message.from_wire(data)
            except Exception as exc:
                replies.append({"t": t, "error": f"unparsable: {exc}"})
                continue
            if msg.id != query.id:
                continue
            answers = [r.to_text() for rr in msg.answer for r in rr
                       if rr.rdtype == dns.rdatatype.A]
            replies.append({"t": t, "rcode": dns.rcode.to_text(msg.rcode()), "answers": answers,
                            "tc": bool(msg.flags & dns.flags.TC)})
            if len(replies) == 1:
                deadline = min(deadline, time.monotonic() + listen)
    finally:
        sock.close()
    return {"replies": replies, "error": None if replies else "timeout"}


async def check_dns_tcp(c: dict[str, Any]) -> dict[str, Any]:
    server = c.get("server") or _system_resolver()
    query = dns.message.make_query(c["name"], dns.rdatatype.from_text(c.get("qtype", "A")))
    wire = query.to_wire()
    t0 = time.monotonic()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(float(c.get("timeout", 3.0))):
            reader, writer = await asyncio.open_connection(server, 53)
            writer.write(len(wire).to_bytes(2, "big") + wire)
            await writer.drain()
            length = int.from_bytes(await reader.readexactly(2), "big")
            msg = dns.message.from_wire(await reader.readexactly(length))
        answers = [r.to_text() for rr in msg.answer for r in rr
                   if rr.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)]
        return {"ok": True, "error": None, "rcode": dns.rcode.to_text(msg.rcode()),
                "answers": answers, "t": time.monotonic() - t0}
    except Exception as exc:
        return {"ok": False, "error": _error(exc), "t": time.monotonic() - t0}
    finally:
        if writer is not None:
            await _close(writer)


async def _open(c: dict[str, Any], tls: bool) -> tuple[asyncio.StreamReader,
                                                        asyncio.StreamWriter, float]:
    ctx = None
    if tls:
        ctx = ssl.create_default_context(cafile=c.get("ca_file")) if c.get("ca_file") else \
            ssl._create_unverified_context()
        ctx.check_hostname = bool(c.get("ca_file"))
    t0 = time.monotonic()
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(c["ip"], int(c.get("port", 443 if tls else 80)), ssl=ctx,
                                server_hostname=c.get("sni") if tls else None,
                                ssl_handshake_timeout=float(c.get("timeout", 5.0))
                                if tls else None),
        float(c.get("timeout", 5.0)))
    return reader, writer, time.monotonic() - t0


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def check_tcp(c: dict[str, Any]) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        _, writer, t = await _open(c, tls=False)
    except Exception as exc:
        return {"ok": False, "error": _error(exc), "t": time.monotonic() - t0}
    await _close(writer)
    return {"ok": True, "error": None, "t": t}


async def check_tls(c: dict[str, Any]) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        _, writer, t = await _open(c, tls=True)
    except Exception as exc:
        return {"ok": False, "error": _error(exc), "t": time.monotonic() - t0}
    await _close(writer)
    return {"ok": True, "error": None, "t": t}


async def check_http(c: dict[str, Any]) -> dict[str, Any]:
    tls = bool(c.get("tls", False))
    if tls:
        c = {**c, "sni": c.get("sni", c["host"])}
    t0 = time.monotonic()
    try:
        reader, writer, t_conn = await _open(c, tls=tls)
    except Exception as exc:
        return {"ok": False, "error": _error(exc), "t": time.monotonic() - t0, "stage": "connect"}
    timeout = float(c.get("timeout", 5.0))
    try:
        request = (f"GET {c.get('path', '/')} HTTP/1.1\r\nHost: {c['host']}\r\n"
                   "User-Agent: vigil-lab-selfcheck\r\nConnection: close\r\n\r\n")
        writer.write(request.encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        t_head = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", "-1"))
        body = bytearray()
        # throughput is measured over the last 3/4 of the body: the start of a flow passes
        # before a censor has classified it (and queues fill), as in the wild
        mark = max(1, length // 4) if length > 0 else 1 << 62
        t_mark: float | None = None
        mark_len = 0
        deadline = time.monotonic() + float(c.get("body_timeout", timeout))
        while length < 0 or len(body) < length:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                break
            body += chunk
            if t_mark is None and len(body) >= mark:
                t_mark, mark_len = time.monotonic(), len(body)
        t_end = time.monotonic()
        rate = None
        if t_mark is not None and len(body) >= 16384 and len(body) > mark_len:
            rate = (len(body) - mark_len) * 8 / max(t_end - t_mark, 1e-6)
        overall = len(body) * 8 / max(t_end - t_head, 1e-6) if len(body) >= 16384 else None
        return {
            "ok": True, "error": None, "status": status, "headers": headers,
            "body_length": len(body), "body_head": body[:300].decode("utf-8", "replace"),
            "t_connect": t_conn, "t_head": t_head - t0, "t": t_end - t0, "bits_per_s": rate,
            "overall_bits_per_s": overall,
        }
    except Exception as exc:
        return {"ok": False, "error": _error(exc), "t": time.monotonic() - t0, "stage": "http"}
    finally:
        await _close(writer)


CHECKS = {"dns": check_dns, "dns_tcp": check_dns_tcp, "tcp": check_tcp, "tls": check_tls,
          "http": check_http}


async def run_all(spec: dict[str, Any]) -> list[dict[str, Any]]:
    checks = spec["checks"]
    if spec.get("parallel", True):
        return list(await asyncio.gather(*(CHECKS[c["type"]](c) for c in checks)))
    return [await CHECKS[c["type"]](c) for c in checks]


def main() -> None:
    spec = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    results = asyncio.run(run_all(spec))
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
