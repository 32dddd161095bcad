"""The lab's web sites: many names on few addresses, chosen by SNI and Host.

One process serves every site on ports 80 and 443 of the addresses it is given.  Each
connection waits ``accept_delay_ms`` before the TLS handshake and each request waits the
site's delay before the answer: a distant server, whose replies the on-path injector beats.
The TCP handshake itself is the kernel's and stays instant, as on a real server.

Paths: ``/`` the site's page; ``/bytes/N`` N bytes (throughput self-checks).
Modes: ``sites`` (the lab's sites) or ``blockpage`` (every request gets the blockpage).

Sites that misbehave on their own (never censorship): ``redirect-to`` sends everyone to its
``location``; ``redirect-loop`` redirects to itself forever; ``broken-location`` answers the
ISP's clients (``isp_sources``) with an unusable ``Location`` and everyone else with a working
redirect; ``captcha`` gives the ISP's clients a 503 challenge page and everyone else the page;
broken-certificate sites' addresses present their own (expired, misnamed or unknown-issuer)
leaf to any name, as a misconfigured server on its own address does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import ssl
import sys
import time
from email.utils import formatdate
from typing import Any, cast

from lab.blockpages import http_response
from lab.packets import name_matches
from lab.servers.common import Lifetime, load_config, mark_ready

MAX_REQUESTS_PER_CONN = 100
IDLE_TIMEOUT_S = 15.0
HANDSHAKE_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 16384
MAX_BYTES_PATH = 50_000_000
_FILLER = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. "
)


class Sites:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.mode = cfg.get("mode", "sites")
        self.sites: dict[str, dict[str, Any]] = {s["host"]: s for s in cfg.get("sites", [])}
        self.scale_domain = cfg.get("scale_domain", "")
        self.default_delay = float(cfg.get("accept_delay_ms", 40)) / 1000.0
        self.blockpage = cfg.get("page", "iran")
        self.isp_sources = [ipaddress.IPv4Network(n) for n in cfg.get("isp_sources", [])]

    def from_isp(self, client: str) -> bool:
        try:
            addr = ipaddress.IPv4Address(client)
        except ValueError:
            return False
        return any(addr in n for n in self.isp_sources)

    def rate_of(self, host: str) -> int:
        """The site's own sending rate in kbit/s (a server slow by itself), 0: unpaced."""
        site = self.sites.get(host)
        return 0 if site is None else int(site.get("rate_kbit", 0) or 0)

    def lookup(self, host: str) -> dict[str, Any] | None:
        site = self.sites.get(host)
        if site is None and self.scale_domain and name_matches(host, self.scale_domain):
            site = {"host": host, "kind": "normal", "delay_ms": 40,
                    "body_bytes": 4000 + sum(host.encode()) % 4000, "slow_s": 0.0}
        return site

    async def respond(self, method: str, target: str, host: str, tls: bool,
                      client: str = "") -> bytes:
        if self.mode == "blockpage":
            await asyncio.sleep(self.default_delay)
            return http_response(self.blockpage, close=False)
        site = self.lookup(host)
        if site is None:
            await asyncio.sleep(self.default_delay)
            return _response(404, "Not Found", b"<html><title>404</title>no such site</html>")
        await asyncio.sleep(float(site.get("delay_ms", 40)) / 1000.0)
        kind = site["kind"]
        if kind == "slow":
            await asyncio.sleep(float(site.get("slow_s", 2.0)))
        if target.startswith("/bytes/"):
            try:
                n = min(int(target[len("/bytes/"):]), MAX_BYTES_PATH)
            except ValueError:
                return _response(400, "Bad Request", b"bad size")
            return _response(200, "OK", b"x" * n, ctype="application/octet-stream")
        if kind == "redirect" and not tls:
            return _response(301, "Moved Permanently", b"", extra={
                "Location": f"https://{host}{target}"})
        scheme = "https" if tls else "http"
        if kind == "redirect-to":
            return _response(308, "Permanent Redirect", b"", extra={
                "Location": str(site["location"])})
        if kind == "redirect-loop":
            return _response(302, "Found", b"", extra={
                "Location": f"{scheme}://{host}/loop/{random.getrandbits(32):08x}"})
        if kind == "broken-location" and target == "/":
            location = f"{scheme}://" if self.from_isp(client) else f"{scheme}://{host}/home"
            return _response(302, "Found", b"", extra={"Location": location})
        body = _page(host, int(site.get("body_bytes", 6000)), dynamic=kind == "dynamic")
        if kind == "captcha":
            extra = {"X-Edge-Request": "lab-edge-7f3a", "Report-To": '{"group":"edge-nel"}'}
            if self.from_isp(client):
                return _response(503, "Service Unavailable", _CHALLENGE, extra=extra)
            return _response(200, "OK", body, extra=extra, head_only=method == "HEAD")
        return _response(200, "OK", body, head_only=method == "HEAD")


_CHALLENGE = (
    b"<!doctype html><html><head><title>One moment, please...</title></head><body>"
    b"<h1>Checking your browser before you reach the site</h1><noscript>Enable JavaScript and "
    b"cookies to continue.</noscript><form id=challenge method=post action=/verify>"
    b"<input type=hidden name=token value=4f1c2a></form></body></html>\n"
)


def _page(host: str, size: int, dynamic: bool) -> bytes:
    """A deterministic page per host; a dynamic one changes content and length (+-20%)."""
    if dynamic:
        size = int(size * random.uniform(0.8, 1.2))
        stamp = f"<p>generated {time.time():.6f} token {random.getrandbits(64):016x}</p>"
    else:
        stamp = ""
    head = (f"<!doctype html><html><head><title>{host} - lab site</title></head>"
            f"<body><h1>Welcome to {host}</h1>{stamp}<p>")
    tail = "</p></body></html>\n"
    fill = max(0, size - len(head) - len(tail))
    text = (_FILLER * (fill // len(_FILLER) + 1))[:fill]
    return (head + text + tail).encode()


def _response(status: int, phrase: str, body: bytes, ctype: str = "text/html; charset=utf-8",
              extra: dict[str, str] | None = None, head_only: bool = False) -> bytes:
    headers = {
        "Server": "vigil-lab-httpd",
        "Date": formatdate(usegmt=True),
        "Content-Type": ctype,
        "Content-Length": str(len(body)),
        **(extra or {}),
    }
    head = f"HTTP/1.1 {status} {phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in
                                                      headers.items()) + "\r\n"
    return head.encode() + (b"" if head_only else body)


class Conn(asyncio.Protocol):
    """One client connection: delayed TLS, then keep-alive HTTP/1.1 requests."""

    def __init__(self, sites: Sites, tls: ssl.SSLContext | None,
                 tasks: set[asyncio.Task[None]]) -> None:
        self.sites = sites
        self.tls = tls
        self.tasks = tasks
        self.transport: asyncio.BaseTransport | None = None
        self.buffer = bytearray()
        self.more = asyncio.Event()
        self.closed = False
        self.client = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        transport.pause_reading()  # the ClientHello stays in the kernel until we are "ready"
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        task = asyncio.get_running_loop().create_task(self._run(transport))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.more.set()

    def eof_received(self) -> bool | None:
        self.closed = True
        self.more.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.more.set()

    async def _run(self, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        transport: asyncio.Transport = raw
        try:
            await asyncio.sleep(self.sites.default_delay)
            if self.tls is not None:
                new = await loop.start_tls(raw, self, self.tls, server_side=True,
                                           ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
                if new is None:
                    return
                transport = new
                self.transport = new
            else:
                raw.resume_reading()
            await self._serve(transport)
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError):
            pass
        finally:
            transport.close()
            if transport is not raw:
                raw.close()

    async def _serve(self, transport: asyncio.Transport) -> None:
        for _ in range(MAX_REQUESTS_PER_CONN):
            request = await self._read_request()
            if request is None:
                return
            method, target, headers = request
            host = headers.get("host", "").lower()
            host = host.rsplit(":", 1)[0] if ":" in host and not host.startswith("[") else host
            reply = await self.sites.respond(method, target, host, self.tls is not None,
                                             self.client)
            if transport.is_closing():
                return
            rate = self.sites.rate_of(host)
            if rate:
                await _paced_write(transport, reply, rate)
            else:
                transport.write(reply)
            if headers.get("connection", "").lower() == "close":
                return

    async def _read_request(self) -> tuple[str, str, dict[str, str]] | None:
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while b"\r\n\r\n" not in self.buffer:
            if self.closed or len(self.buffer) > MAX_HEADER_BYTES:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.more.clear()
            try:
                await asyncio.wait_for(self.more.wait(), left)
            except TimeoutError:
                return None
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)  # GET/HEAD only: no request bodies to skip
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return None
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return parts[0], parts[1], headers


async def _paced_write(transport: asyncio.Transport, data: bytes, rate_kbit: int) -> None:
    """Send ``data`` no faster than ``rate_kbit``: 20 ms worth at a time, on a clock (so
    scheduling delays do not slow it further), as a server with a slow uplink would."""
    loop = asyncio.get_running_loop()
    chunk = max(1448, rate_kbit * 1000 // 8 // 50)
    start = loop.time()
    for offset in range(0, len(data), chunk):
        if transport.is_closing():
            return
        transport.write(data[offset:offset + chunk])
        due = start + (offset + chunk) * 8 / (rate_kbit * 1000)
        await asyncio.sleep(max(0.0, due - loop.time()))


def tls_context(cfg: dict[str, Any]) -> ssl.SSLContext:
    return _server_context(cfg["cert_file"], cfg["key_file"])


def _server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


async def main(cfg: dict[str, Any]) -> None:
    sites = Sites(cfg)
    life = Lifetime(cfg)
    ctx = tls_context(cfg)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    servers = []
    # A misconfigured site's address presents its own broken certificate, whatever the SNI.
    broken = {addr: _server_context(cert, key)
              for addr, (cert, key) in cfg.get("broken_certs", {}).items()}
    addrs = [a for a in cfg["listen"] if a not in broken]
    if addrs:
        servers.append(await loop.create_server(lambda: Conn(sites, None, tasks), addrs,
                                                int(cfg.get("http_port", 80)), backlog=1024))
        servers.append(await loop.create_server(lambda: Conn(sites, ctx, tasks), addrs,
                                                int(cfg.get("https_port", 443)), backlog=1024))
    for addr, own in broken.items():
        if addr not in cfg["listen"]:
            continue
        servers.append(await loop.create_server(lambda: Conn(sites, None, tasks), addr,
                                                int(cfg.get("http_port", 80)), backlog=64))
        servers.append(await loop.create_server(
            lambda own=own: Conn(sites, own, tasks), addr,  # type: ignore[misc]
            int(cfg.get("https_port", 443)), backlog=64))
    mark_ready(cfg)
    try:
        await life.wait()
    finally:
        for s in servers:
            s.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(load_config(sys.argv)))
