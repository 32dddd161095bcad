"""HTTP(S) fetches pinned to given addresses, against local aiohttp sites with a trustme CA."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from agent.net import failures
from agent.net.http import (
    BODY_HEAD_CHARS,
    BROWSER_HEADERS,
    Fetched,
    FetchLimits,
    charset_of,
    extract_title,
    fetch,
    flatten_headers,
)
from agent.net.tls import make_contexts

PAGE = b"<html><head><title> Hello &amp; welcome </title></head><body>" + b"x" * 2000 + b"</body>"


@pytest.fixture
def verify_ctx(ca: trustme.CA, tmp_path: Path) -> ssl.SSLContext:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return make_contexts(path).verify


class Site:
    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.port = 0
        self.tls_port = 0


Routes = Callable[[web.Application, Site], None]


@pytest.fixture
async def site(ca: trustme.CA) -> AsyncIterator[Callable[[Routes], Awaitable[Site]]]:
    runners: list[web.AppRunner] = []

    async def start(routes: Routes) -> Site:
        state = Site()

        @web.middleware
        async def remember(request: web.Request, handler: Any) -> web.StreamResponse:
            state.requests.append(request)
            return await handler(request)  # type: ignore[no-any-return]

        app = web.Application(middlewares=[remember])
        routes(app, state)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        plain = web.TCPSite(runner, "127.0.0.1", 0)
        await plain.start()
        state.port = plain._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("site.test", "other.test").configure_cert(server_ctx)
        tls = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await tls.start()
        state.tls_port = tls._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return state

    yield start
    for r in runners:
        await r.cleanup()


async def _fetch(url: str, ctx: ssl.SSLContext, *, pins: Mapping[str, Sequence[str]] | None = None,
                 lookup: Any = None, **limits: Any) -> Fetched:
    loop = asyncio.get_running_loop()
    return await fetch(
        url,
        pins=pins if pins is not None else {"site.test": ["127.0.0.1"]},
        lookup=lookup,
        ssl_context=ctx,
        limits=FetchLimits(**({"total_timeout": 5.0} | limits)),
        origin=loop.time(),
    )


def _page(app: web.Application, state: Site) -> None:
    async def index(request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html", charset="utf-8",
                            headers={"X-Test": "1"})

    app.router.add_get("/", index)


async def test_https_fetch_pinned_with_host_and_sni(site, verify_ctx) -> None:
    state = await site(_page)
    got = await _fetch(f"https://site.test:{state.tls_port}/", verify_ctx)
    r = got.request
    assert r.failure is None
    assert r.status_code == 200
    assert r.address == f"127.0.0.1:{state.tls_port}"
    assert r.body_length == len(PAGE)
    assert r.body_sha256 == hashlib.sha256(PAGE).hexdigest()
    assert r.title == "Hello & welcome"
    assert r.body_head.startswith("<html><head><title>")
    assert len(r.body_head) == min(len(PAGE), BODY_HEAD_CHARS)
    assert r.headers["X-Test"] == "1"
    assert r.redirects == ()
    assert not got.body_truncated
    sent = state.requests[0]
    assert sent.host == f"site.test:{state.tls_port}"  # Host header names the site, not the IP
    assert sent.headers["User-Agent"] == BROWSER_HEADERS["User-Agent"]
    assert "text/html" in sent.headers["Accept"]


async def test_certificate_for_another_name_fails_verification(site, verify_ctx) -> None:
    state = await site(_page)
    got = await _fetch(f"https://wrong.test:{state.tls_port}/", verify_ctx,
                       pins={"wrong.test": ["127.0.0.1"]})
    assert got.request.failure == failures.SSL_INVALID_HOSTNAME
    assert got.request.status_code is None and got.request.body_length is None


async def test_redirect_chain_resolved_through_lookup(site, verify_ctx) -> None:
    looked_up: list[str] = []

    def routes(app: web.Application, state: Site) -> None:
        async def start(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"https://other.test:{state.tls_port}/final")

        async def final(request: web.Request) -> web.Response:
            return web.Response(text="<title>Final</title>", content_type="text/html")

        app.router.add_get("/", start)
        app.router.add_get("/final", final)

    async def lookup(host: str) -> tuple[str, ...]:
        looked_up.append(host)
        return ("127.0.0.1",)

    state = await site(routes)
    got = await _fetch(f"http://site.test:{state.port}/", verify_ctx, lookup=lookup)
    r = got.request
    assert r.failure is None
    assert r.status_code == 200 and r.title == "Final"
    assert r.redirects == (f"https://other.test:{state.tls_port}/final",)
    assert looked_up == ["other.test"]


async def test_redirect_target_that_does_not_resolve(site, verify_ctx) -> None:
    def routes(app: web.Application, state: Site) -> None:
        async def start(request: web.Request) -> web.Response:
            raise web.HTTPFound("http://gone.test/")

        app.router.add_get("/", start)

    async def lookup(host: str) -> tuple[str, ...]:
        return ()

    state = await site(routes)
    got = await _fetch(f"http://site.test:{state.port}/", verify_ctx, lookup=lookup)
    assert got.request.failure == failures.DNS_NO_ANSWER


async def test_failed_redirect_hop_is_named_in_the_chain(site, verify_ctx) -> None:
    """A fetch that dies on a redirect target says which one (measure() then opens it)."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    dead_port = dead.getsockname()[1]

    def routes(app: web.Application, state: Site) -> None:
        async def start(request: web.Request) -> web.Response:
            raise web.HTTPFound("/next")

        async def hop(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"http://other.test:{dead_port}/landing")

        app.router.add_get("/", start)
        app.router.add_get("/next", hop)

    async def lookup(host: str) -> tuple[str, ...]:
        return ("127.0.0.1",)

    try:
        state = await site(routes)
        got = await _fetch(f"http://site.test:{state.port}/", verify_ctx, lookup=lookup)
    finally:
        dead.close()
    r = got.request
    assert r.failure == failures.CONNECTION_REFUSED
    assert r.redirects == (f"http://site.test:{state.port}/next",
                           f"http://other.test:{dead_port}/landing")
    assert r.address is None  # the hop never connected: no earlier peer is blamed


@pytest.mark.parametrize("location", ["http://", "https://[bad", "ftp://files.test/"])
async def test_unusable_location_is_the_sites_answer(site, verify_ctx, location: str) -> None:
    def routes(app: web.Application, state: Site) -> None:
        async def start(request: web.Request) -> web.Response:
            return web.Response(status=302, headers={"Location": location})

        app.router.add_get("/", start)

    state = await site(routes)
    got = await _fetch(f"http://site.test:{state.port}/", verify_ctx, max_redirects=3)
    assert got.request.failure in ("unknown_failure: invalid redirect location",
                                   "unknown_failure: too many redirects")


async def test_too_many_redirects(site, verify_ctx) -> None:
    def routes(app: web.Application, state: Site) -> None:
        async def loop_(request: web.Request) -> web.Response:
            n = int(request.query.get("n", "0"))
            raise web.HTTPFound(f"/?n={n + 1}")

        app.router.add_get("/", loop_)

    state = await site(routes)
    got = await _fetch(f"http://site.test:{state.port}/", verify_ctx, max_redirects=3)
    assert got.request.failure == "unknown_failure: too many redirects"
    assert len(got.request.redirects) >= 2


async def test_body_read_is_bounded(site, verify_ctx) -> None:
    state = await site(_page)
    got = await _fetch(f"http://site.test:{state.port}/", verify_ctx, max_body_bytes=100)
    assert got.request.failure is None
    assert got.request.body_length == 100
    assert got.body_truncated
    assert got.request.body_sha256 == hashlib.sha256(PAGE[:100]).hexdigest()


async def test_gzip_body_is_decoded(site, verify_ctx) -> None:
    def routes(app: web.Application, state: Site) -> None:
        async def index(request: web.Request) -> web.Response:
            return web.Response(body=gzip.compress(PAGE), content_type="text/html",
                                headers={"Content-Encoding": "gzip"})

        app.router.add_get("/", index)

    state = await site(routes)
    got = await _fetch(f"http://site.test:{state.port}/", verify_ctx)
    assert got.request.body_length == len(PAGE)
    assert got.request.title == "Hello & welcome"


async def test_reset_after_injected_page_keeps_partial_evidence(verify_ctx) -> None:
    """A censor's injected response followed by a RST: status and body head survive."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(2048)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nContent-Type: text/html\r\n\r\n"
                     b"<title>Blocked</title>")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        got = await _fetch(f"http://site.test:{port}/", verify_ctx)
    finally:
        server.close()
        await server.wait_closed()
    r = got.request
    assert r.failure in (failures.CONNECTION_RESET, failures.EOF_ERROR)
    assert r.status_code == 200
    assert r.title == "Blocked"


async def test_connection_refused_is_a_failure_string(verify_ctx) -> None:
    from tests.support.net import closed_port

    got = await _fetch(f"http://site.test:{closed_port()}/", verify_ctx)
    assert got.request.failure == failures.CONNECTION_REFUSED
    assert got.request.status_code is None


async def test_silent_server_times_out(verify_ctx) -> None:
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(2048)  # then say nothing

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        got = await _fetch(f"http://site.test:{port}/", verify_ctx, read_timeout=0.3,
                           total_timeout=1.0)
    finally:
        server.close()
        for w in writers:
            w.transport.abort()
        await server.wait_closed()
    assert got.request.failure == failures.GENERIC_TIMEOUT


async def test_body_budget_caps_the_read(site, verify_ctx) -> None:
    state = await site(_page)
    loop = asyncio.get_running_loop()
    counted: list[int] = []
    got = await fetch(
        f"http://site.test:{state.port}/", pins={"site.test": ["127.0.0.1"]}, lookup=None,
        ssl_context=verify_ctx, limits=FetchLimits(), origin=loop.time(), body_budget=10,
        on_bytes=counted.append,
    )
    assert got.request.body_length == 10
    assert sum(counted) == 10


def test_title_extraction() -> None:
    assert extract_title(b"<TITLE lang=en>\n  A \n B </TITLE>", "utf-8") == "A B"
    assert extract_title(b"<title>caf\xe9</title>", "latin-1") == "café"
    assert extract_title(b"<title>x</title>", "no-such-charset") == "x"
    assert extract_title(b"<html>no title</html>", "utf-8") == ""
    assert len(extract_title(b"<title>" + b"a" * 1000 + b"</title>", "utf-8")) == 256


def test_charset_and_header_flattening() -> None:
    assert charset_of({"Content-Type": "text/html; charset=ISO-8859-1"}) == "ISO-8859-1"
    assert charset_of({"Content-Type": "text/html"}) == "utf-8"
    headers = CIMultiDictProxy(CIMultiDict([("Set-Cookie", "a=1"), ("set-cookie", "b=2"),
                                            ("Server", "x")]))
    assert flatten_headers(headers) == {"Set-Cookie": "a=1, b=2", "Server": "x"}


def test_title_of_a_page_of_openings_is_found_in_one_pass() -> None:
    # Ten thousand openings and no closing tag: no title (a quadratic scan took seconds here).
    assert extract_title(b"<title>" * 9000, "utf-8") == ""
    page = b"<title>" * 9000 + b"late</title>"
    assert extract_title(page, None) == ("<title>" * 8999 + "late")[:256]
    assert extract_title(b"<titles>x</titles><title a=1>Real</title>", None) == "Real"


async def test_without_a_socket_factory_the_response_gives_both_ends(
    site, verify_ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp before 3.12 (Debian 12 ships 3.8) has no socket_factory: the peer and the local
    address (for scrubbing) come from the response's connection instead."""
    from agent.net import http as http_module

    monkeypatch.setattr(http_module, "SOCKET_FACTORY", False)
    state = await site(_page)
    local: list[str] = []
    loop = asyncio.get_running_loop()
    got = await fetch(
        f"https://site.test:{state.tls_port}/",
        pins={"site.test": ["127.0.0.1"]},
        lookup=None,
        ssl_context=verify_ctx,
        limits=FetchLimits(total_timeout=5.0),
        origin=loop.time(),
        on_local_address=local.append,
    )
    assert got.request.failure is None and got.request.status_code == 200
    assert got.request.address == f"127.0.0.1:{state.tls_port}"
    assert local == ["127.0.0.1"]
