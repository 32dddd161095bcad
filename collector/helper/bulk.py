"""The control helper's bulk-transfer endpoint: the far end of the throttling test.

A TLS server on its own port that accepts **any** SNI and always presents the operator's one
certificate, then streams the same deterministic bytes to every request.  The agent downloads
from it twice per round, once with SNI = the target (say ``abs.twimg.com``) and once with a
random benign name; a censor that throttles by SNI slows only the first, whatever the
destination address, so the comparison isolates the SNI as the cause.

The bytes are a fixed pseudo-random block (SHA-256 in counter mode), identical for every
request: incompressible, so a compressing middlebox cannot flatter one side, and the same for
both SNIs, so nothing but the name differs.  The agent authenticates the endpoint by pinning the
certificate's SHA-256, learnt over the control URL (the names it sends never match the
certificate by design).

Protocol (HTTP/1.1 subset, one request per connection)::

    GET /bulk?bytes=N HTTP/1.1      ->  200, Content-Length: N, X-Vigil-SNI: <SNI seen>
    GET /                           ->  200, a one-line description

Caps protect the operator's bandwidth: at most ``max_bytes`` per request, ``max_concurrency``
streams at once (``503`` beyond), ``per_client_per_minute`` requests per source address
(``429`` beyond) and an optional aggregate rate (token bucket over all streams).  The source
address is used only for the rate limit, in memory, and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import ssl
import tempfile
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from agent.net import http1

log = logging.getLogger(__name__)

BLOCK_SIZE = 65_536
SEED = b"vigil-bulk-v1"
MAX_REQUEST_HEAD = 8192
CHUNK = 16_384


def bulk_block(seed: bytes = SEED, size: int = BLOCK_SIZE) -> bytes:
    """The deterministic, incompressible block the endpoint repeats (also used by tests)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def bulk_bytes(offset: int, length: int, block: bytes | None = None) -> bytes:
    """``length`` bytes of the stream starting at ``offset`` (the stream repeats the block)."""
    blk = bulk_block() if block is None else block
    out = bytearray()
    pos = offset % len(blk)
    while len(out) < length:
        take = min(len(blk) - pos, length - len(out))
        out += blk[pos : pos + take]
        pos = 0
    return bytes(out)


@dataclass(frozen=True, slots=True)
class BulkConfig:
    """``cert_file``/``key_file`` None: a throw-away self-signed certificate is made at start
    (the agent pins whatever certificate the helper announces, so no CA is needed)."""

    host: str
    port: int
    cert_file: Path | None = None
    key_file: Path | None = None
    max_bytes: int = 4 * 1024 * 1024
    max_concurrency: int = 32
    per_client_per_minute: int = 240
    rate_limit_bps: int = 0  # aggregate cap in bit/s, 0 = none
    idle_timeout: float = 10.0
    max_seconds: float = 60.0  # a stream longer than this is cut (a throttled client at 1 kB/s)
    jitter_ms: float = 0.0  # benchmarks only: a random pause of up to this before each chunk


class _TokenBucket:
    """Aggregate byte budget shared by every stream (monotonic clock, bounded burst)."""

    def __init__(self, rate_bytes: float) -> None:
        self.rate = rate_bytes
        self.capacity = max(rate_bytes * 0.02, CHUNK)  # a 20 ms burst at most
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    async def take(self, n: int) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= n:
                self.tokens -= n
                return
            await asyncio.sleep((n - self.tokens) / self.rate)


class _ClientLimiter:
    """Requests per minute per source address, with a bounded table (oldest evicted)."""

    def __init__(self, per_minute: int, max_clients: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_clients = max_clients
        self.table: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        if self.per_minute <= 0:
            return True
        now = time.monotonic()
        tokens, stamp = self.table.pop(client, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - stamp) * self.per_minute / 60.0)
        ok = tokens >= 1.0
        self.table[client] = (tokens - 1.0 if ok else tokens, now)
        while len(self.table) > self.max_clients:
            self.table.popitem(last=False)
        return ok


def self_signed_pem(name: str = "vigil-bulk.invalid") -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a fresh EC P-256 self-signed certificate, valid 30 days."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def certificate_sha256(cert_file: Path) -> str:
    """SHA-256 of the leaf certificate's DER: what the agent pins."""
    pem = cert_file.read_text("ascii")
    start = pem.index("-----BEGIN CERTIFICATE-----")
    end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    der = ssl.PEM_cert_to_DER_cert(pem[start:end])
    return hashlib.sha256(der).hexdigest()


class BulkServer:
    """The endpoint; ``await start()``, then ``await close()`` (also an async context manager)."""

    def __init__(self, config: BulkConfig) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        cert_file, key_file = config.cert_file, config.key_file
        if cert_file is None or key_file is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vigil-bulk-")
            cert_pem, key_pem = self_signed_pem()
            cert_file = Path(self._tmp.name) / "bulk.crt"
            key_file = Path(self._tmp.name) / "bulk.key"
            cert_file.write_bytes(cert_pem)
            key_file.touch(mode=0o600)
            key_file.write_bytes(key_pem)
            config = replace(config, cert_file=cert_file, key_file=key_file)
        self._cert_file: Path = cert_file
        self._key_file: Path = key_file
        self.config = config
        self.block = bulk_block()
        self._names: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
        self._ctx = self._make_context()
        self._server: asyncio.Server | None = None
        self._active = 0
        self._limiter = _ClientLimiter(config.per_client_per_minute)
        self._bucket = _TokenBucket(config.rate_limit_bps / 8.0) if config.rate_limit_bps else None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = {"requests": 0, "bytes": 0, "refused_busy": 0, "refused_rate": 0}
        self.certificate_sha256 = certificate_sha256(self._cert_file)

    def _make_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self._cert_file), str(self._key_file))
        ctx.set_alpn_protocols(["http/1.1"])

        def on_sni(obj: object, name: str | None, _ctx: ssl.SSLContext) -> int | None:
            # Any name is accepted: remember it to echo it back, keep the one certificate.
            self._names[obj] = (name or "")[:255]
            return None

        ctx.sni_callback = on_sni
        return ctx

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("bulk server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.config.host, self.config.port, ssl=self._ctx,
            ssl_handshake_timeout=self.config.idle_timeout, backlog=256,
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> BulkServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- one connection --------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass  # the client went away or was cut by a censor: nothing to report
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), self.config.idle_timeout
            )
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, b"request head too large\n")
            return
        if len(head) > MAX_REQUEST_HEAD:
            await _respond(writer, 431, b"request head too large\n")
            return
        obj = writer.get_extra_info("ssl_object")
        sni = self._names.get(obj, "") if obj is not None else ""
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        try:
            line = http1.request_line(head)
        except http1.HeadError:
            await _respond(writer, 400, b"bad request line\n")
            return
        method, target = line.method, line.target
        if method not in ("GET", "HEAD"):
            await _respond(writer, 405, b"GET only\n")
            return
        url = urlsplit(target)
        if url.path == "/":
            await _respond(writer, 200, b"vigil bulk endpoint: GET /bulk?bytes=N\n", sni=sni)
            return
        if url.path != "/bulk":
            await _respond(writer, 404, b"not found\n", sni=sni)
            return
        try:
            want = int(parse_qs(url.query).get("bytes", ["0"])[0])
        except ValueError:
            await _respond(writer, 400, b"bytes must be an integer\n", sni=sni)
            return
        if want < 0 or want > self.config.max_bytes:
            await _respond(
                writer, 400, f"bytes must be in 0..{self.config.max_bytes}\n".encode(), sni=sni
            )
            return
        if not self._limiter.allow(client):
            self.stats["refused_rate"] += 1
            await _respond(writer, 429, b"too many requests\n", sni=sni)
            return
        if self._active >= self.config.max_concurrency:
            self.stats["refused_busy"] += 1
            await _respond(writer, 503, b"busy\n", sni=sni)
            return
        self._active += 1
        self.stats["requests"] += 1
        try:
            await self._stream(writer, want, sni, head_only=method == "HEAD")
        finally:
            self._active -= 1

    async def _stream(
        self, writer: asyncio.StreamWriter, length: int, sni: str, *, head_only: bool
    ) -> None:
        writer.write(http1.response_head(200, {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
            "Cache-Control": "no-store",
            "X-Vigil-SNI": sni,
        }))
        if head_only:
            await writer.drain()
            return
        deadline = time.monotonic() + self.config.max_seconds
        sent = 0
        block = self.block
        while sent < length:
            n = min(CHUNK, length - sent)
            if self._bucket is not None:
                await self._bucket.take(n)
            if self.config.jitter_ms > 0:
                await asyncio.sleep(random.uniform(0.0, self.config.jitter_ms) / 1000.0)
            pos = sent % len(block)
            chunk = block[pos : pos + n]
            if len(chunk) < n:
                chunk += block[: n - len(chunk)]
            writer.write(chunk)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.wait_for(writer.drain(), remaining)
            sent += n
            self.stats["bytes"] += n


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, *, sni: str | None = None
) -> None:
    headers = {"Content-Type": "text/plain", "Content-Length": str(len(body))}
    if sni is not None:
        headers["X-Vigil-SNI"] = sni
    writer.write(http1.response_head(status, headers) + body)
    await writer.drain()
