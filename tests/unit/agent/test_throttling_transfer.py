"""How long a throttling transfer reads, on real downloads over loopback: it stops at its byte
limit, at the page's end, or at its time cap, and says which."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

from agent.experiments.throttling.transfer import TransferSpec, download

CTX = ssl.create_default_context()


def spec(**kw: object) -> TransferSpec:
    base: dict[str, object] = dict(
        kind="address", round=0, ip="127.0.0.1", port=1, server_name="x.example",
        host_header="x.example", path="/", context=CTX, max_bytes=200_000, max_seconds=2.5,
        tls=False)
    base.update(kw)
    return TransferSpec(**base)  # type: ignore[arg-type]


# ---- real downloads over loopback (plain HTTP) ---------------------------------------------------
@contextlib.asynccontextmanager
async def page_server(size: int, rate_bps: float | None = None,
                      announce: bool = True) -> AsyncIterator[int]:
    """A one-page HTTP server on 127.0.0.1 sending ``size`` bytes (paced to ``rate_bps``)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            head = "HTTP/1.1 200 OK\r\n"
            head += f"Content-Length: {size}\r\n" if announce else "Connection: close\r\n"
            writer.write((head + "\r\n").encode())
            sent, chunk = 0, 8192
            while sent < size:
                n = min(chunk, size - sent)
                writer.write(b"x" * n)
                await writer.drain()
                sent += n
                if rate_bps:
                    await asyncio.sleep(n * 8.0 / rate_bps)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


async def test_a_download_stops_at_its_byte_limit() -> None:
    async with page_server(1_000_000) as port:
        tr, status = await download(spec(port=port, max_bytes=100_000), origin=0.0)
    assert status == 200 and tr.failure is None
    assert tr.stop == "bytes" and tr.body_bytes >= 100_000 and tr.complete


async def test_a_short_page_ends_as_the_whole_page() -> None:
    async with page_server(6_000) as port:
        tr, _ = await download(spec(port=port, max_bytes=100_000), origin=0.0)
    assert tr.stop == "eof" and tr.body_bytes == 6_000 and tr.complete


async def test_a_slow_page_stops_at_its_time_cap() -> None:
    async with page_server(1_000_000, rate_bps=2_000_000) as port:
        tr, _ = await download(spec(port=port, max_bytes=500_000, max_seconds=0.3), origin=0.0)
    assert tr.stop == "time" and not tr.complete and 0 < tr.body_bytes < 500_000


async def test_a_page_without_a_length_ends_where_the_server_closes() -> None:
    async with page_server(20_000, announce=False) as port:
        tr, _ = await download(spec(port=port, max_bytes=100_000), origin=0.0)
    assert tr.stop == "eof" and tr.body_bytes == 20_000 and tr.complete
