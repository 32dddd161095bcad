"""Helper routes for the throughput and reachability tests.

Installed through ``create_app(extensions=[...])``.

::

    GET  /api/v1/bulk         where the bulk-transfer TLS endpoint is and the certificate to pin
    POST /api/v1/throughput   {"url", "max_bytes", "max_seconds"}: the helper downloads the
                              target itself and reports bytes, seconds and rate (the reference
                              for address-based throttling)
    POST /api/v1/reach        {"checks": [{"address", "check", "sni"?, "payload"?}]}: the helper
                              repeats app/VPN endpoint checks from outside (TCP, TLS, and the
                              first handshake packet of WireGuard/OpenVPN, returning the reply
                              for the probe to verify, since only the probe holds the keys)

All three are protected routes (signature and rate limits apply) and every address the helper
dials passes the target policy first, like the control itself.  The payload a probe asks the
helper to send must be a well-formed WireGuard initiation or OpenVPN client reset (fixed small
sizes), so the route cannot be used to send arbitrary datagrams.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from agent.net import http1
from agent.net.failures import classify_quietly
from agent.net.handshakes import (
    ovpn_looks_like_client_reset,
    ovpn_tcp_frame,
    wg_looks_like_initiation,
)
from collector.helper.app import (
    CLIENT,
    HELPER_STATE,
    HelperExtension,
    HelperState,
    add_route,
    outbound_ssl_context,
    read_json_object,
)
from collector.helper.bulk import BulkServer
from collector.helper.errors import BAD_REQUEST, TARGET_FORBIDDEN, Refusal
from collector.helper.fetch import ForbiddenAddress, guarded_socket, make_resolver
from collector.helper.fetch import resolve as helper_resolve
from collector.helper.policy import port_allowed

MAX_CHECKS = 32
CHECKS = frozenset({"tcp", "tls", "https", "wireguard", "openvpn-udp", "openvpn-tcp"})


@dataclass(frozen=True, slots=True)
class ExtLimits:
    throughput_max_bytes: int = 2 * 1024 * 1024
    throughput_max_seconds: float = 10.0
    connect_timeout: float = 5.0
    tls_timeout: float = 5.0
    udp_timeout: float = 3.0


async def _read_json(request: web.Request) -> dict[str, Any]:
    return read_json_object(await request.read())


def _endpoint(text: Any) -> tuple[str, int]:
    if not isinstance(text, str) or ":" not in text:
        raise Refusal(BAD_REQUEST, "address must be ip:port")
    host, _, port = text.rpartition(":")
    if port.isdigit() and 0 < int(port) < 65536 and not port_allowed(int(port)):
        raise Refusal(TARGET_FORBIDDEN, f"port {int(port)} is refused by the target policy")
    host = host.strip("[]")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise Refusal(BAD_REQUEST, "bad port")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        raise Refusal(BAD_REQUEST, "address must be an IP literal") from None
    return host, int(port)


# ---- throughput -----------------------------------------------------------------------------
async def measure_throughput(
    ip: str,
    port: int,
    host: str,
    path: str,
    *,
    tls: bool,
    ssl_context: ssl.SSLContext,
    policy_socket: socket.socket,
    max_bytes: int,
    max_seconds: float,
    connect_timeout: float,
) -> dict[str, Any]:
    """GET ``path`` from ``ip:port`` and time the body: bytes, seconds from the first byte."""
    loop = asyncio.get_running_loop()
    writer: asyncio.StreamWriter | None = None
    result: dict[str, Any] = {"failure": None, "status_code": None, "bytes": 0, "seconds": 0.0,
                              "rate_bps": None}
    try:
        policy_socket.setblocking(False)
        async with asyncio.timeout(connect_timeout):
            await loop.sock_connect(policy_socket, (ip, port))
        async with asyncio.timeout(connect_timeout * 2):
            reader, writer = await asyncio.open_connection(
                sock=policy_socket, ssl=ssl_context if tls else None,
                server_hostname=host if tls else None,
            )
        writer.write(http1.request(path, host, user_agent="vigil-helper"))
        await writer.drain()
        deadline = loop.time() + max_seconds
        async with asyncio.timeout(max_seconds + connect_timeout):
            head = await reader.readuntil(b"\r\n\r\n")
        result["status_code"], _ = http1.parse_response_head(head)
        got = 0
        first: float | None = None
        last = loop.time()
        while got < max_bytes:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    chunk = await reader.read(min(65536, max_bytes - got))
            except TimeoutError:
                break
            if not chunk:
                break
            now = loop.time()
            if first is None:
                first = now
            got += len(chunk)
            last = now
        result["bytes"] = got
        if first is not None and last > first:
            result["seconds"] = round(last - first, 6)
            result["rate_bps"] = round(got * 8 / (last - first), 1)
    except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError,
            asyncio.LimitOverrunError, ValueError) as exc:
        result["failure"] = classify_quietly(exc)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        else:
            policy_socket.close()
    return result


# ---- reach ----------------------------------------------------------------------------------
class _OneDatagram(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def udp_exchange(ip: str, port: int, payload: bytes, timeout: float) -> tuple[bytes | None,
                                                                                      str | None]:
    """Send one datagram, wait for the first reply: (reply, failure)."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_OneDatagram, remote_addr=(ip, port))
    try:
        transport.sendto(payload)
        async with asyncio.timeout(timeout):
            return await proto.reply, None
    except (OSError, TimeoutError) as exc:
        return None, classify_quietly(exc)
    finally:
        transport.close()


async def tcp_exchange(
    sock: socket.socket, ip: str, port: int, payload: bytes, timeout: float
) -> tuple[bytes | None, str | None, str | None]:
    """Connect, send ``payload`` (already framed), read one length-prefixed OpenVPN packet.
    Returns (reply, tcp_failure, handshake_failure)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    try:
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (ip, port))
        except (OSError, TimeoutError) as exc:
            return None, classify_quietly(exc), None
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_sendall(sock, payload)
                head = await _recv_exact(loop, sock, 2)
                size = int.from_bytes(head, "big")
                return await _recv_exact(loop, sock, min(size, 4096)), None, None
        except (OSError, TimeoutError, EOFError) as exc:
            return None, None, classify_quietly(exc)
    finally:
        sock.close()


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = await loop.sock_recv(sock, n - len(out))
        if not data:
            raise EOFError("closed")
        out += data
    return out


async def tls_check(
    sock: socket.socket, ip: str, port: int, sni: str | None, timeout: float,
    context: ssl.SSLContext,
) -> tuple[str | None, str | None]:
    """(tcp_failure, tls_failure): a TCP connect then, unless ``sni`` is None, a handshake."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    transport: asyncio.Transport | None = None
    try:
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (ip, port))
        except (OSError, TimeoutError) as exc:
            return classify_quietly(exc), None
        if sni is None:
            return None, None
        try:
            transport, _ = await loop.create_connection(
                asyncio.Protocol, sock=sock, ssl=context, server_hostname=sni,
                ssl_handshake_timeout=timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            return None, classify_quietly(exc)
        return None, None
    finally:
        if transport is not None:
            transport.abort()
        else:
            sock.close()


def _payload(check: dict[str, Any], kind: str) -> bytes:
    raw = check.get("payload")
    try:
        payload = base64.b64decode(str(raw), validate=True)
    except (binascii.Error, ValueError):
        raise Refusal(BAD_REQUEST, "payload is not base64") from None
    ok = (wg_looks_like_initiation(payload) if kind == "wireguard"
          else ovpn_looks_like_client_reset(payload))
    if not ok:
        raise Refusal(BAD_REQUEST, f"payload is not a {kind} first handshake packet")
    return payload


# ---- the routes ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ThroughputRequest:
    """A validated ``POST /api/v1/throughput`` body."""

    url: str
    scheme: str
    host: str
    port: int
    target: str  # path and query
    max_bytes: int
    max_seconds: float


def parse_throughput_request(body: dict[str, Any], limits: ExtLimits) -> ThroughputRequest:
    """Validate the body; ``bad_request`` or ``target_forbidden`` (a banned port) otherwise."""
    url = body.get("url")
    if not isinstance(url, str):
        raise Refusal(BAD_REQUEST, "url is required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refusal(BAD_REQUEST, "url must be http(s)://host/...")
    try:
        max_bytes = min(int(body.get("max_bytes", 262_144)), limits.throughput_max_bytes)
        max_seconds = min(float(body.get("max_seconds", 3.0)), limits.throughput_max_seconds)
    except (TypeError, ValueError):
        raise Refusal(BAD_REQUEST, "max_bytes and max_seconds must be numbers") from None
    if max_bytes <= 0 or not max_seconds > 0:
        raise Refusal(BAD_REQUEST, "max_bytes and max_seconds must be positive")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refusal(BAD_REQUEST, "url has an invalid port") from None
    if not port_allowed(port):
        raise Refusal(TARGET_FORBIDDEN, f"port {port} is refused by the target policy")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return ThroughputRequest(url, parts.scheme, parts.hostname, port, target, max_bytes,
                             max_seconds)


def _empty_result(check: dict[str, Any]) -> dict[str, Any]:
    return {"address": "", "check": check.get("check"), "tcp_failure": None,
            "tls_failure": None, "handshake_failure": None, "reply": None}


def _no_store(body: dict[str, Any]) -> web.Response:
    return web.json_response(body, headers={"Cache-Control": "no-store"})


class ReachRoutes:
    """``/api/v1/bulk``, ``/api/v1/throughput`` and ``/api/v1/reach`` for one helper app.

    Every address dialled passes the helper's target policy at the last moment (the socket
    is created by ``guarded_socket``), and every route spends the caller's budget (the
    concurrency gate; reach one rate-limit token per connection).
    """

    def __init__(self, state: HelperState, bulk: BulkServer | None, limits: ExtLimits) -> None:
        self.state = state
        self.bulk = bulk
        self.limits = limits
        self.resolver = make_resolver(state.config.resolver)
        self.verify_ctx = outbound_ssl_context(state.config.ca_file)
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self.insecure = insecure

    def guarded(self, ip: str) -> socket.socket:
        """A TCP socket for ``ip``, created only if the target policy allows it."""
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        try:
            return guarded_socket(self.state.policy, family, ip)
        except ForbiddenAddress:
            raise Refusal(TARGET_FORBIDDEN,
                          "the address is refused by the target policy") from None

    async def handle_bulk(self, request: web.Request) -> web.Response:
        if self.bulk is None:
            return _no_store({"available": False})
        return _no_store({
            "available": True,
            "port": self.bulk.port,
            "certificate_sha256": self.bulk.certificate_sha256,
            "max_bytes": self.bulk.config.max_bytes,
        })

    async def _addresses(self, host: str) -> tuple[str, ...] | str:
        """The host's addresses (an IP literal is its own), or the DNS failure string."""
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            return (host,)
        except OSError:
            pass
        try:
            dns = await helper_resolve(self.resolver, host, self.limits.connect_timeout)
        except ValueError:
            raise Refusal(BAD_REQUEST, "bad host name") from None
        return dns.failure if dns.failure is not None else dns.addrs

    async def handle_throughput(self, request: web.Request) -> web.Response:
        req = parse_throughput_request(await _read_json(request), self.limits)
        out: dict[str, Any] = {"url": req.url}
        addrs = await self._addresses(req.host)
        if isinstance(addrs, str):
            out.update(failure=addrs, bytes=0, seconds=0.0, rate_bps=None)
            return _no_store(out)
        allowed = [a for a in addrs if self.state.policy.allows(a)]
        if not allowed:
            raise Refusal(TARGET_FORBIDDEN, "every address of the host is refused")
        async with self.state.gate.slot(request[CLIENT].key):
            result = await measure_throughput(
                allowed[0], req.port, req.host, req.target, tls=req.scheme == "https",
                ssl_context=self.verify_ctx, policy_socket=self.guarded(allowed[0]),
                max_bytes=req.max_bytes, max_seconds=req.max_seconds,
                connect_timeout=self.limits.connect_timeout,
            )
        out.update(result)
        return _no_store(out)

    async def one_check(self, check: Any) -> dict[str, Any]:
        if not isinstance(check, dict):
            raise Refusal(BAD_REQUEST, "each check is an object")
        kind = check.get("check")
        if kind not in CHECKS:
            raise Refusal(BAD_REQUEST, f"check must be one of {sorted(CHECKS)}")
        ip, port = _endpoint(check.get("address"))
        sni = check.get("sni")
        if sni is not None and not isinstance(sni, str):
            raise Refusal(BAD_REQUEST, "sni must be a string")
        res = _empty_result(check)
        res["address"] = f"{ip}:{port}"
        t0 = time.monotonic()
        if kind in ("tcp", "tls", "https"):
            await self._tls(res, ip, port, None if kind == "tcp" else (sni or ip))
        elif kind == "openvpn-tcp":
            await self._openvpn_tcp(res, check, ip, port)
        else:
            await self._udp(res, check, "wireguard" if kind == "wireguard" else "openvpn",
                            ip, port)
        res["ok"] = all(res[k] is None for k in ("tcp_failure", "tls_failure",
                                                   "handshake_failure"))
        res["t"] = round(time.monotonic() - t0, 4)
        return res

    async def _tls(self, res: dict[str, Any], ip: str, port: int, sni: str | None) -> None:
        tcp_f, tls_f = await tls_check(self.guarded(ip), ip, port, sni,
                                       self.limits.tls_timeout, self.insecure)
        res.update(tcp_failure=tcp_f, tls_failure=tls_f)

    async def _openvpn_tcp(self, res: dict[str, Any], check: dict[str, Any], ip: str,
                           port: int) -> None:
        payload = ovpn_tcp_frame(_payload(check, "openvpn"))
        reply, tcp_f, hs_f = await tcp_exchange(self.guarded(ip), ip, port, payload,
                                                self.limits.connect_timeout)
        res.update(tcp_failure=tcp_f, handshake_failure=hs_f)
        if reply is not None:
            res["reply"] = base64.b64encode(reply).decode("ascii")

    async def _udp(self, res: dict[str, Any], check: dict[str, Any], kind: str, ip: str,
                   port: int) -> None:
        payload = _payload(check, kind)
        if not self.state.policy.allows(ip):  # checked for all before; again, just before
            raise Refusal(TARGET_FORBIDDEN, "the address is refused by the target policy")
        reply, hs_f = await udp_exchange(ip, port, payload, self.limits.udp_timeout)
        res["handshake_failure"] = hs_f
        if reply is not None:
            res["reply"] = base64.b64encode(reply[:512]).decode("ascii")

    async def handle_reach(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        checks = body.get("checks")
        if not isinstance(checks, list) or not checks or len(checks) > MAX_CHECKS:
            raise Refusal(BAD_REQUEST, f"checks must be a list of 1..{MAX_CHECKS}")
        for c in checks:  # validate everything before dialling anything
            if not isinstance(c, dict) or c.get("check") not in CHECKS:
                raise Refusal(BAD_REQUEST, f"check must be one of {sorted(CHECKS)}")
            ip, _ = _endpoint(c.get("address"))
            if not self.state.policy.allows(ip):
                raise Refusal(TARGET_FORBIDDEN, "an address is refused by the target policy")
        # One rate-limit token per connection the request makes the helper open: a list of
        # checks costs what that many single requests would.
        if len(checks) > 1:
            self.state.limiter.take(request[CLIENT].key, cost=len(checks) - 1)
        async with self.state.gate.slot(request[CLIENT].key):
            results = await asyncio.gather(*(self.one_check(c) for c in checks))
        return _no_store({"results": results})


# ---- installation ---------------------------------------------------------------------------
def reach_extension(bulk: BulkServer | None, limits: ExtLimits = ExtLimits()) -> HelperExtension:
    """The extension; ``bulk`` is started and stopped with the helper app when given."""

    def install(app: web.Application) -> None:
        routes = ReachRoutes(app[HELPER_STATE], bulk, limits)
        add_route(app, "GET", "/api/v1/bulk", routes.handle_bulk)
        add_route(app, "POST", "/api/v1/throughput", routes.handle_throughput)
        add_route(app, "POST", "/api/v1/reach", routes.handle_reach)
        if bulk is not None:
            async def bulk_ctx(app: web.Application) -> Any:
                await bulk.start()
                yield
                await bulk.close()

            app.cleanup_ctx.append(bulk_ctx)

    return install
