"""Endpoint checks of one app (I/O): DNS, TCP, TLS, HTTPS GET, VPN first packets.

Each endpoint is checked from the probe, then the control helper repeats the same checks from
outside (``POST /api/v1/reach``) so the analysis can tell "blocked here" from "down
everywhere".  For VPN endpoints the helper is handed a fresh first packet built *after* the
probe's own (WireGuard servers refuse an initiation whose timestamp is not newer than the last
one they saw) and returns the raw reply, which the probe verifies with its own keys.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.errors import ControlError
from agent.experiments.apps.analysis import EndpointResult
from agent.experiments.apps.spec import AppSpec, Endpoint
from agent.experiments.context import MeasurementContext
from agent.net import failures, http1
from agent.net import handshakes as hs
from agent.net.dns import resolve_first
from agent.net.tcp import connect
from agent.net.tls import handshake

MAX_PARALLEL = 8


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


def first_packet(ep: Endpoint) -> tuple[bytes, Any]:
    """(packet to send, state needed to verify the answer) for a VPN endpoint."""
    if ep.check == "wireguard":
        if ep.public_key is None:
            raise ValueError("wireguard endpoint without a public key")
        client = (X25519PrivateKey.from_private_bytes(ep.client_private_key)
                  if ep.client_private_key else None)
        init = hs.wg_initiation(ep.public_key, client, psk=ep.preshared_key)
        return init.packet, init
    reset = hs.ovpn_client_reset()
    return reset.packet, reset


def check_reply(ep: Endpoint, state: Any, reply: bytes) -> str | None:
    if ep.check == "wireguard":
        return hs.wg_check_response(state, reply)
    return hs.ovpn_check_response(state, reply)


async def _udp(ip: str, port: int, payload: bytes, timeout: float) -> tuple[bytes | None,
                                                                             str | None]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Datagram, remote_addr=(ip, port))
    try:
        transport.sendto(payload)
        async with asyncio.timeout(timeout):
            return await proto.reply, None
    except (OSError, TimeoutError) as exc:
        return None, failures.classify(exc)
    finally:
        transport.close()


async def _recv_exact(sock: Any, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    while len(out) < n:
        data = await loop.sock_recv(sock, n - len(out))
        if not data:
            raise EOFError("closed")
        out += data
    return out


async def check_endpoint(ep: Endpoint, ctx: MeasurementContext, origin: float) -> EndpointResult:
    loop = asyncio.get_running_loop()
    net = ctx.net
    t0 = loop.time()
    detail: dict[str, Any] = {}

    def done(address: str | None, stage: str | None, failure: str | None) -> EndpointResult:
        return EndpointResult(
            group=ep.group, name=ep.name, host=ep.host, address=address, check=ep.check,
            failed_stage=stage, failure=failure, t0=round(t0 - origin, 6),
            t=round(loop.time() - origin, 6), detail=detail,
        )

    if ep.is_address:
        ip = ep.host
    else:
        addrs = await resolve_first(ep.host, ctx.resolver, timeout=net.dns_timeout,
                                    on_bytes=ctx.on_bytes)
        if not addrs:
            return done(None, "dns", "dns_lookup_failed")
        ip = addrs[0]
        detail["resolved"] = list(addrs)
    address = f"{ip}:{ep.port}"
    if ep.transport == "udp":
        packet, state = first_packet(ep)
        reply, failure = await _udp(ip, ep.port, packet, net.connect_timeout)
        if reply is None:
            return done(address, "handshake", failure)
        why = check_reply(ep, state, reply)
        detail["reply_bytes"] = len(reply)
        return done(address, None if why is None else "handshake", why)
    conn = await connect(ip, ep.port, timeout=net.connect_timeout, origin=origin)
    ctx.note_local_address(conn.local_ip)
    try:
        if conn.sock is None:
            return done(address, "tcp", conn.failure)
        if ep.check == "tcp":
            return done(address, None, None)
        if ep.check == "openvpn-tcp":
            packet, state = first_packet(ep)
            try:
                async with asyncio.timeout(net.connect_timeout):
                    await loop.sock_sendall(conn.sock, hs.ovpn_tcp_frame(packet))
                    size = int.from_bytes(await _recv_exact(conn.sock, 2), "big")
                    reply = await _recv_exact(conn.sock, min(size, 4096))
            except (OSError, EOFError, TimeoutError) as exc:
                return done(address, "handshake", failures.classify(exc))
            why = check_reply(ep, state, reply)
            return done(address, None if why is None else "handshake", why)
        context = ctx.tls.verify if ep.verify else ctx.tls.insecure
        result = await handshake(conn.sock, ep.server_name, context, timeout=net.tls_timeout,
                                 origin=origin, on_bytes=ctx.on_bytes)
        detail["tls_version"] = result.tls_version
        detail["peer_certificate_sha256"] = result.peer_certificate_sha256
        if result.failure is not None:
            return done(address, "tls", result.failure)
    finally:
        conn.close()
    if ep.check == "https":
        status, failure = await https_get(ep, ip, ctx)
        detail["status_code"] = status
        if failure is not None:
            return done(address, "http", failure)
    return done(address, None, None)


async def https_get(
    ep: Endpoint, ip: str, ctx: MeasurementContext
) -> tuple[int | None, str | None]:
    """A GET over a fresh verified connection to ``ip``; any HTTP status is a success (the app's
    server answered), a failure string otherwise."""
    net = ctx.net
    context = ctx.tls.verify if ep.verify else ctx.tls.insecure
    writer = None
    try:
        async with asyncio.timeout(net.http_timeout):
            reader, writer = await asyncio.open_connection(
                ip, ep.port, ssl=context, server_hostname=ep.server_name
            )
            writer.write(http1.request(ep.path, ep.server_name))
            await writer.drain()
            line = await reader.readline()
        if not line:
            return None, failures.EOF_ERROR
        try:
            return http1.status_code(line), None
        except http1.HeadError:
            return None, failures.unknown("not HTTP")
    except (OSError, TimeoutError, ssl.SSLError, EOFError) as exc:
        return None, failures.classify(exc)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


async def control_view(
    spec: AppSpec, results: Sequence[EndpointResult], ctx: MeasurementContext
) -> tuple[list[EndpointResult], str | None]:
    """Ask the helper to repeat the checks of the endpoints that failed here."""
    control = ctx.control
    failed = [(i, r) for i, r in enumerate(results) if not r.ok and r.address is not None]
    if not failed:
        return list(results), None
    if control is None or not hasattr(control, "request_json"):
        return list(results), "no_control_helper"
    by_key = {(e.group, e.name): e for e in spec.endpoints}
    checks: list[dict[str, Any]] = []
    states: list[Any] = []
    for _, r in failed[:32]:
        ep = by_key[(r.group, r.name)]
        item: dict[str, Any] = {"address": r.address, "check": ep.check}
        state = None
        if ep.check in ("tls", "https"):
            item["sni"] = ep.server_name
        if ep.check in ("wireguard", "openvpn-udp", "openvpn-tcp"):
            packet, state = first_packet(ep)
            item["payload"] = base64.b64encode(packet).decode("ascii")
        checks.append(item)
        states.append(state)
    try:
        answer = await control.request_json("POST", "/api/v1/reach", {"checks": checks})
        seen = answer["results"]
    except ControlError as exc:
        return list(results), getattr(exc, "failure", str(exc))
    except (KeyError, TypeError) as exc:
        return list(results), failures.unknown(f"malformed reach answer: {exc}")
    out = list(results)
    from dataclasses import replace

    for (idx, r), res, state in zip(failed, seen, states, strict=False):
        ep = by_key[(r.group, r.name)]
        ok = bool(res.get("ok"))
        why = None
        if ok and state is not None:
            reply_b64 = res.get("reply")
            reply = base64.b64decode(reply_b64) if isinstance(reply_b64, str) else b""
            why = check_reply(ep, state, reply)
            ok = why is None
        failure = why or res.get("tcp_failure") or res.get("tls_failure") \
            or res.get("handshake_failure")
        out[idx] = replace(r, control_ok=ok, control_failure=None if ok else failure)
    return out, None


async def measure(
    spec: AppSpec, ctx: MeasurementContext
) -> tuple[list[EndpointResult], str | None]:
    loop = asyncio.get_running_loop()
    origin = loop.time()
    sem = asyncio.Semaphore(MAX_PARALLEL)

    async def one(ep: Endpoint) -> EndpointResult:
        async with sem:
            return await check_endpoint(ep, ctx, origin)

    results = list(await asyncio.gather(*(one(ep) for ep in spec.endpoints)))
    return await control_view(spec, results, ctx)
