"""One timed download over TLS, with cumulative bytes sampled on a memoryless timer (I/O).

The TLS layer is driven through memory BIOs on a raw socket (as ``agent.net.tls`` does for
handshakes) so a censor's FIN, RST and silence stay distinguishable, and so the byte counter
sees every body byte the moment the kernel hands it over.

Sampling: a separate task wakes after exponentially distributed intervals (mean
``sample_mean`` seconds) and records ``(t, cumulative body bytes)``.  Poisson sampling sees
time averages (PASTA), so a shaper's periodic token refills cannot alias with the sampler as
they could with a fixed period; ndt7 (and OONI with it) samples the same way.  One sample is
also taken at the first byte of the answer and one at the end.

Bytes are counted on the wire (TLS records as they arrive from the socket, after the request
was sent), not as decrypted plaintext: a 16 kB TLS record takes a second to arrive at
130 kbit/s, so counting plaintext would see a throttled flow in one-second lumps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.experiments.throttling.model import Sample, Transfer
from agent.net import failures, http1
from agent.net.tcp import Connection, connect

_RECV = 65536


@dataclass(frozen=True, slots=True)
class TransferSpec:
    kind: str
    round: int
    ip: str
    port: int
    server_name: str  # SNI
    host_header: str
    path: str
    context: ssl.SSLContext
    max_bytes: int
    max_seconds: float
    sample_mean: float = 0.01
    connect_timeout: float = 10.0
    tls_timeout: float = 10.0
    tls: bool = True  # False: plain HTTP (a URL listed as http://)


_TRACK_LIMIT = 1 << 20


def record_start(stream: bytes | bytearray, consumed: int) -> int | None:
    """Offset of the TLS record that ends at or just before ``consumed`` bytes of ``stream``
    (the record whose decryption produced the latest application bytes), or None."""
    pos = 0
    start = None
    while pos + 5 <= len(stream) and pos < consumed:
        length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        start = pos
        pos += 5 + length
    return start


class _TLS:
    """A TLS client over a connected non-blocking socket, through memory BIOs."""

    def __init__(
        self,
        sock: socket.socket,
        obj: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        on_bytes: Callable[[int], None] | None,
    ) -> None:
        self.sock = sock
        self.obj = obj
        self.incoming = incoming
        self.outgoing = outgoing
        self.on_bytes = on_bytes
        self.loop = asyncio.get_running_loop()
        self.wire_in = 0  # ciphertext bytes received from the socket
        self.on_wire: Callable[[int], None] | None = None
        # until the first application bytes come out: the raw stream and when each piece
        # arrived, to find when the first byte of the record carrying them arrived (TLS 1.3
        # session tickets come before the answer and must not count as its start)
        self._raw: bytearray | None = bytearray()
        self._arrivals: list[tuple[int, float]] = []
        self.first_data_wire: tuple[int, float] | None = None  # (stream offset, loop time)

    @classmethod
    def wrap(cls, sock: socket.socket, context: ssl.SSLContext, server_name: str,
             on_bytes: Callable[[int], None] | None) -> _TLS:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
        return cls(sock, obj, incoming, outgoing, on_bytes)

    async def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            await self.loop.sock_sendall(self.sock, data)
            if self.on_bytes is not None:
                self.on_bytes(len(data))

    async def _fill(self) -> bool:
        data = await self.loop.sock_recv(self.sock, _RECV)
        if not data:
            return False
        self.wire_in += len(data)
        if self._raw is not None:
            if len(self._raw) + len(data) > _TRACK_LIMIT:
                self._raw = None  # a very long handshake: stop tracking, keep measuring
            else:
                self._raw += data
                self._arrivals.append((self.wire_in, self.loop.time()))
        if self.on_wire is not None:
            self.on_wire(len(data))
        if self.on_bytes is not None:
            self.on_bytes(len(data))
        self.incoming.write(data)
        return True

    def _mark_first_data(self) -> None:
        raw = self._raw
        self._raw = None
        if raw is None:
            return
        consumed = self.wire_in - self.incoming.pending
        start = record_start(raw, consumed)
        if start is None:
            return
        when = next((t for end, t in self._arrivals if end > start), None)
        if when is not None:
            self.first_data_wire = (start, when)
        self._arrivals = []

    async def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise EOFError("peer closed the connection during the handshake") from None
        await self._flush()

    async def send(self, data: bytes) -> None:
        self.obj.write(data)
        await self._flush()

    async def recv(self) -> bytes:
        """Application bytes, b"" at a clean or abrupt end of stream after the handshake."""
        while True:
            try:
                data = self.obj.read(_RECV)
                if data and self._raw is not None:
                    self._mark_first_data()
                return data
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    self.incoming.write_eof()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""


class _Plain:
    """Plain HTTP over the connected socket, with the same counters as ``_TLS``."""

    def __init__(self, sock: socket.socket, on_bytes: Callable[[int], None] | None) -> None:
        self.sock = sock
        self.on_bytes = on_bytes
        self.loop = asyncio.get_running_loop()
        self.wire_in = 0
        self.on_wire: Callable[[int], None] | None = None
        self.first_data_wire: tuple[int, float] | None = None

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))

    async def recv(self) -> bytes:
        data = await self.loop.sock_recv(self.sock, _RECV)
        if data:
            if self.first_data_wire is None:
                self.first_data_wire = (self.wire_in, self.loop.time())
            self.wire_in += len(data)
            if self.on_wire is not None:
                self.on_wire(len(data))
            if self.on_bytes is not None:
                self.on_bytes(len(data))
        return data


@dataclass
class _Progress:
    """What one transfer has seen so far (filled in as it goes, turned into a Transfer)."""

    t0: float
    failure: str | None = None
    stop: str = "failure"
    status: int | None = None
    cert: str | None = None
    echoed: str | None = None
    failed_at: str | None = None
    tls_s: float | None = None
    request_t: float | None = None
    response_t: float | None = None
    plain: int = 0
    head_body: int = 0
    expected: int | None = None
    answer_wire_t: float | None = None
    pre_answer_bytes: int = 0
    first_byte: float | None = None
    wire_bytes: int = 0
    samples: list[Sample] = field(default_factory=list)

    def rel(self) -> float:
        return round(asyncio.get_running_loop().time() - self.t0, 6)

    def fail(self, exc: BaseException, at: str) -> _Done:
        self.failure = failures.classify(exc)
        self.failed_at = at
        return _Done()

    def on_wire(self, n: int) -> None:
        if self.first_byte is None:
            self.first_byte = self.rel()
            self.samples.append(Sample(self.first_byte, n))
        self.wire_bytes += n


async def download(
    spec: TransferSpec,
    *,
    origin: float,
    on_bytes: Callable[[int], None] | None = None,
    note_local: Callable[[str | None], None] | None = None,
    rng: random.Random | None = None,
    start_together: asyncio.Barrier | None = None,
) -> tuple[Transfer, int | None]:
    """Run one transfer; returns the observation and the HTTP status (None if none).

    ``start_together``: transfers sharing it send their requests at the same moment, once
    every one has its connection and handshake (a flow that fails before that breaks the
    barrier and the others go on), so flows meant to run at once really overlap: on a capped
    path the handshake of a late one would otherwise queue behind the data of the first."""
    loop = asyncio.get_running_loop()
    rnd = rng or random.Random()
    p = _Progress(t0=loop.time())
    conn = await connect(spec.ip, spec.port, timeout=spec.connect_timeout, origin=origin)
    if note_local is not None:
        note_local(conn.local_ip)
    sampler: asyncio.Task[None] | None = None

    async def sample() -> None:
        while True:
            await asyncio.sleep(rnd.expovariate(1.0 / spec.sample_mean))
            if p.wire_bytes > 0:
                p.samples.append(Sample(p.rel(), p.wire_bytes))

    try:
        if conn.sock is None:
            p.failure, p.failed_at = conn.failure, "connect"
            raise _Done
        channel = await _open_channel(spec, conn.sock, on_bytes, p)
        channel.on_wire = p.on_wire
        if start_together is not None:
            with contextlib.suppress(asyncio.BrokenBarrierError, TimeoutError):
                async with asyncio.timeout(spec.connect_timeout + spec.tls_timeout):
                    await start_together.wait()
            start_together = None
        deadline = loop.time() + spec.max_seconds
        wire0 = channel.wire_in
        try:
            async with asyncio.timeout(spec.max_seconds + spec.tls_timeout):
                p.request_t = p.rel()
                await channel.send(http1.request(spec.path, spec.host_header))
                sampler = asyncio.create_task(sample())
                head, body = await _response_head(channel)
        except (OSError, EOFError, TimeoutError, ssl.SSLError, ValueError) as exc:
            raise p.fail(exc, "request") from None
        p.response_t = p.rel()
        if channel.first_data_wire is not None:
            p.answer_wire_t = round(channel.first_data_wire[1] - p.t0, 6)
            p.pre_answer_bytes = max(0, channel.first_data_wire[0] - wire0)
        limit = _read_head(spec, head, body, p)
        await _read_body(channel, limit, deadline, spec.max_bytes, p)
    except _Done:
        pass
    finally:
        if start_together is not None:  # ended before its turn: the others need not wait
            await start_together.abort()
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        conn.close()
    end = p.rel()
    if p.wire_bytes > 0 and (not p.samples or p.samples[-1].t < end):
        p.samples.append(Sample(end, p.wire_bytes))
    return _transfer(spec, conn, p, origin, loop.time()), p.status


async def _open_channel(
    spec: TransferSpec, sock: socket.socket, on_bytes: Callable[[int], None] | None,
    p: _Progress,
) -> _TLS | _Plain:
    """TLS with the spec's SNI (the certificate's hash recorded), or plain HTTP."""
    if not spec.tls:
        return _Plain(sock, on_bytes)
    loop = asyncio.get_running_loop()
    secure = _TLS.wrap(sock, spec.context, spec.server_name, on_bytes)
    tls_start = loop.time()
    try:
        async with asyncio.timeout(spec.tls_timeout):
            await secure.handshake()
    except (OSError, EOFError, TimeoutError, ssl.SSLError) as exc:
        raise p.fail(exc, "tls") from None
    p.tls_s = round(loop.time() - tls_start, 6)
    der = secure.obj.getpeercert(binary_form=True)
    p.cert = None if der is None else hashlib.sha256(der).hexdigest()
    return secure


async def _response_head(channel: _TLS | _Plain) -> tuple[bytes, bytes]:
    """Read until the response head is complete: (head, the body bytes after it)."""
    buf = b""
    while (parts := http1.split_head(buf)) is None:
        chunk = await channel.recv()
        if not chunk:
            raise EOFError("connection closed before the response head")
        buf += chunk
    return parts


def _read_head(spec: TransferSpec, head: bytes, body: bytes, p: _Progress) -> int:
    """Status, echoed SNI and how many body bytes to read (the announced length, capped)."""
    p.status, headers = http1.parse_response_head(head)
    p.echoed = headers.get("x-vigil-sni")
    limit = spec.max_bytes
    length = headers.get("content-length", "")
    if length.isdigit():
        limit = min(limit, int(length))
        p.expected = limit
    elif spec.max_bytes <= len(body):
        p.expected = spec.max_bytes
    p.plain = p.head_body = len(body)
    p.stop = "eof"
    return limit


async def _read_body(
    channel: _TLS | _Plain, limit: int, deadline: float, max_bytes: int, p: _Progress
) -> None:
    """Read the body until ``limit`` bytes, the end, the deadline or a failure."""
    loop = asyncio.get_running_loop()
    try:
        while p.plain < limit:
            remaining = deadline - loop.time()
            if remaining <= 0:
                p.stop = "time"
                return
            try:
                async with asyncio.timeout(remaining):
                    chunk = await channel.recv()
            except TimeoutError:
                p.stop = "time"
                return
            if not chunk:
                p.stop = "eof"
                if p.expected is None:  # no Content-Length: a clean end is the end
                    p.expected = p.plain
                return
            p.plain += len(chunk)
        p.stop = "bytes" if limit == max_bytes else "eof"
        p.expected = limit
    except (OSError, EOFError, ssl.SSLError) as exc:
        p.failure = failures.classify(exc)
        p.failed_at = "body"
        p.stop = "failure"


def _transfer(
    spec: TransferSpec, conn: Connection, p: _Progress, origin: float, now: float
) -> Transfer:
    return Transfer(
        kind=spec.kind,
        round=spec.round,
        server_name=spec.server_name,
        address=f"{spec.ip}:{spec.port}",
        failure=p.failure,
        t0=round(p.t0 - origin, 6),
        t=round(now - origin, 6),
        bytes=p.wire_bytes,
        first_byte_t=p.first_byte,
        stop=p.stop,
        samples=tuple(p.samples),
        peer_certificate_sha256=p.cert,
        echoed_server_name=p.echoed,
        connect_s=None if conn.failure else round(conn.t - conn.t0, 6),
        tls_s=p.tls_s,
        request_t=p.request_t,
        response_t=p.response_t,
        first_wire_t=p.first_byte,
        answer_wire_t=p.answer_wire_t,
        pre_answer_bytes=p.pre_answer_bytes,
        status_code=p.status,
        body_bytes=p.plain,
        head_body_bytes=p.head_body,
        expected_bytes=p.expected,
        failed_at=p.failed_at,
    )


class _Done(Exception):
    """Internal: leave the transfer early (the failure is already recorded)."""
