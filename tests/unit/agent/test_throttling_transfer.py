"""How long a throttling transfer reads: the pure read goal, and real downloads on loopback.

A transfer stops at its byte limit or its time cap; one asked for a number of round trips keeps
reading past the byte limit until it has had them, within its stretch bytes and seconds (on a
far path a slow flow needs round trips, not seconds, to settle at what limits it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.experiments.throttling.transfer import ReadGoal, TransferSpec, download

CTX = ssl.create_default_context()


def spec(**kw: object) -> TransferSpec:
    base: dict[str, object] = dict(
        kind="address", round=0, ip="127.0.0.1", port=1, server_name="x.example",
        host_header="x.example", path="/", context=CTX, max_bytes=200_000, max_seconds=2.5,
        tls=False)
    base.update(kw)
    return TransferSpec(**base)  # type: ignore[arg-type]


def test_without_round_trips_the_goal_is_the_byte_limit_and_the_time_cap() -> None:
    g = ReadGoal.of(spec(), None, 10.0, 0.3)
    assert (g.limit, g.hard_limit, g.deadline, g.hard_deadline) == (200_000, 200_000, 12.5, 12.5)
    assert g.stop(199_999, 12.0) is None
    assert g.stop(200_000, 10.1) == "bytes"
    assert g.stop(10, 12.5) == "time"
    # a shorter page announced: its length is the limit
    assert ReadGoal.of(spec(), 6_000, 10.0, 0.3).hard_limit == 6_000


def test_a_far_path_reads_its_round_trips_past_the_byte_limit() -> None:
    s = spec(min_rtts=16, stretch_bytes=400_000, stretch_seconds=6.0)
    g = ReadGoal.of(s, None, 10.0, 0.3)  # 16 round trips of 300 ms: 4.8 s
    assert g.until == pytest.approx(14.8) and g.hard_deadline == pytest.approx(14.8)
    assert g.stop(200_000, 11.0) is None  # the byte limit, too few round trips: go on
    assert g.stop(399_999, 13.0) is None
    assert g.stop(400_000, 11.0) == "bytes"  # the stretch bytes: stop
    assert g.stop(250_000, 14.8) == "bytes"  # enough round trips and the byte limit passed
    assert g.stop(150_000, 14.8) == "time"
    # a near path needs no stretch: 16 round trips of 5 ms are well inside the time cap
    near = ReadGoal.of(s, None, 10.0, 0.005)
    assert near.stop(200_000, 10.1) == "bytes"
    # never longer than the stretch seconds, however far the path
    assert ReadGoal.of(s, None, 10.0, 2.0).hard_deadline == pytest.approx(16.0)
    # a page shorter than the stretch bytes is read to its end at most
    assert ReadGoal.of(s, 300_000, 10.0, 0.3).hard_limit == 300_000
    # no handshake time, no stretch
    assert ReadGoal.of(s, None, 10.0, None).hard_limit == 200_000


@given(
    max_bytes=st.integers(1, 10_000_000), stretch=st.integers(0, 20_000_000),
    page=st.one_of(st.none(), st.integers(0, 20_000_000)),
    rtt=st.one_of(st.none(), st.floats(0.0, 3.0)), rtts=st.floats(0.0, 64.0),
    plain=st.integers(0, 30_000_000), elapsed=st.floats(0.0, 30.0),
)
def test_a_read_goal_never_reads_past_its_caps(max_bytes: int, stretch: int, page: int | None,
                                               rtt: float | None, rtts: float, plain: int,
                                               elapsed: float) -> None:
    s = spec(max_bytes=max_bytes, min_rtts=rtts, stretch_bytes=stretch, stretch_seconds=6.0)
    g = ReadGoal.of(s, page, 100.0, rtt)
    assert g.hard_limit <= max(max_bytes, stretch)
    if page is not None:
        assert g.hard_limit <= max(page, 0) or g.hard_limit == g.limit
        assert g.limit <= page
    assert g.hard_deadline <= 100.0 + max(2.5, 6.0) + 1e-9
    if plain >= g.hard_limit or 100.0 + elapsed >= g.hard_deadline:
        assert g.stop(plain, 100.0 + elapsed) is not None
    if g.stop(plain, 100.0 + elapsed) is None:
        assert g.wait(plain, 100.0 + elapsed) > 0


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


async def test_a_stretched_read_stops_at_its_stretch_bytes() -> None:
    """Loopback delivers far more than the byte limit within 16 of its round trips: the read
    goes on past the limit but stops at the stretch bytes (plus at most the last read)."""
    async with page_server(2_000_000) as port:
        tr, _ = await download(spec(port=port, max_bytes=100_000, min_rtts=16,
                                    stretch_bytes=300_000, stretch_seconds=6.0), origin=0.0)
    assert tr.stop == "bytes" and tr.complete
    assert 100_000 <= tr.body_bytes < 300_000 + 65_536
