"""``vigil-agent lists update`` gets lists whole or keeps the old ones, and says why.

A loopback aiohttp server plays the Citizen Lab repository: it sends a 300 KB list in many
small chunks (the old code kept only the first buffer, 64 KiB, and reported success), cuts a
transfer short, ends a list mid-row, serves a list that lost most of its rows, or one full of
bad rows.  Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from agent.cli.main import main
from agent.inputs import sync
from agent.inputs.testlists import LISTS_SUBDIR, bundled_dir, lists_dir, read_file

HEADER = "url,category_code,category_description,date_added,source,notes\n"
CHUNK = 997  # odd on purpose: chunk edges fall inside rows and inside multi-byte characters


def big_list(rows: int) -> bytes:
    """A valid list of ``rows`` URLs with non-ASCII notes (multi-byte UTF-8 across chunks)."""
    lines = [HEADER] + [
        f"https://site-{i}.example.org/path/{i},NEWS,News Media,2024-01-01,test,"
        f"note {i} \u00e9\u0627\u0644\u062e\u0628\u0631 {'x' * (i % 37)}\n"
        for i in range(rows)
    ]
    return "".join(lines).encode()


@dataclass
class Upstream:
    """What the fake repository serves per file: the body and how to deliver it."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    mode: dict[str, str] = field(default_factory=dict)  # chunked | cut | declared-longer
    chunks_sent: dict[str, int] = field(default_factory=dict)
    url: str = ""


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = state.bodies.get(name)
        if body is None:
            return web.Response(status=404, text="not found")
        mode = state.mode.get(name, "chunked")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        if mode == "declared-longer":
            resp.content_length = len(body) + 5000
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        limit = len(body) // 2 if mode == "cut" else len(body)
        sent = 0
        for start in range(0, limit, CHUNK):
            await resp.write(body[start:min(start + CHUNK, limit)])
            sent += 1
        state.chunks_sent[name] = sent
        if mode in ("cut", "declared-longer"):
            assert request.transport is not None
            request.transport.close()  # the connection dies before the end of the body
            return resp
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/lists/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/lists/"
    yield state
    await runner.cleanup()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("VIGIL_STATE_DIR", str(state))
    monkeypatch.setenv("VIGIL_CONFIG", str(tmp_path / "agent.toml"))
    (tmp_path / "agent.toml").write_text("")
    return state


async def _cli(argv: list[str]) -> int:
    return await asyncio.to_thread(main, argv)


async def test_a_300_kb_list_in_small_chunks_arrives_whole(
    upstream: Upstream, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = big_list(2700)
    assert len(body) > 300_000
    upstream.bodies["global.csv"] = body
    assert await _cli(["lists", "update", "--source-url", upstream.url]) == 0
    assert upstream.chunks_sent["global.csv"] > 300  # many small writes on the wire
    got = (lists_dir(env) / "global.csv").read_bytes()
    assert got == body  # byte for byte
    assert len(read_file(lists_dir(env) / "global.csv").targets) == 2700
    assert "global 2700" in capsys.readouterr().out
    assert not list(lists_dir(env).glob(".*.part"))


@pytest.mark.parametrize(
    ("mode", "why"),
    [("cut", "arrived cut"), ("declared-longer", "arrived cut")],
)
async def test_a_cut_transfer_is_refused_and_the_lists_in_use_are_kept(
    upstream: Upstream, env: Path, capsys: pytest.CaptureFixture[str], mode: str, why: str
) -> None:
    first = big_list(2500)
    upstream.bodies["global.csv"] = first
    assert await _cli(["lists", "update", "--source-url", upstream.url]) == 0
    in_use = os.readlink(env / LISTS_SUBDIR)
    capsys.readouterr()
    upstream.bodies["global.csv"] = big_list(2600)
    upstream.mode["global.csv"] = mode
    assert await _cli(["lists", "update", "--source-url", upstream.url]) == 1
    err = capsys.readouterr().err
    assert "global.csv" in err and why in err, err
    assert os.readlink(env / LISTS_SUBDIR) == in_use
    assert (lists_dir(env) / "global.csv").read_bytes() == first
    assert len(list((env / "testlists.d").iterdir())) == 1  # the attempt left nothing behind


async def test_a_list_ending_mid_row_is_refused(
    upstream: Upstream, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: a clean end of transfer, but the last row is cut
    (``https://www.paypal.com/,COMM,E-comme``): still a parsable row, so only the missing
    final newline shows it."""
    body = big_list(2000) + b"https://www.paypal.com/,COMM,E-comme"
    upstream.bodies["global.csv"] = body
    assert await _cli(["lists", "update", "--source-url", upstream.url]) == 1
    assert "global.csv ends mid-row" in capsys.readouterr().err
    assert lists_dir(env) == bundled_dir()


async def test_a_short_list_is_refused_unless_allowed(
    upstream: Upstream, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundled = len(read_file(bundled_dir() / "global.csv").targets)
    upstream.bodies["global.csv"] = big_list(bundled // 3)
    assert await _cli(["lists", "update", "--source-url", upstream.url]) == 1
    err = capsys.readouterr().err
    assert f"global.csv arrived short: {bundled // 3} URLs where the list in use has {bundled}" \
        in err and "--allow-shrink" in err
    assert lists_dir(env) == bundled_dir()
    assert await _cli(["lists", "update", "--source-url", upstream.url, "--allow-shrink"]) == 0
    assert len(read_file(lists_dir(env) / "global.csv").targets) == bundled // 3


async def test_a_list_with_bad_rows_is_refused(
    upstream: Upstream, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = big_list(2000)
    bad = b"".join(b"ftp://nope.example/%d,NEWS,,,,\n" % i for i in range(100))
    upstream.bodies["global.csv"] = good + bad
    assert await _cli(["lists", "update", "--source-url", upstream.url]) == 1
    err = capsys.readouterr().err
    assert "global.csv: 100 of 2100 rows are bad" in err and "unsupported scheme" in err
    assert lists_dir(env) == bundled_dir()


async def test_a_broken_country_list_keeps_every_list_in_use(
    upstream: Upstream, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """All or nothing: a set of lists is switched only when every one of them passed."""
    upstream.bodies["global.csv"] = big_list(2000)
    upstream.bodies["ir.csv"] = big_list(1000)
    upstream.mode["ir.csv"] = "cut"
    assert await _cli(["lists", "update", "--source-url", upstream.url]) == 1
    assert "ir.csv arrived cut" in capsys.readouterr().err
    assert lists_dir(env) == bundled_dir()


@pytest.mark.parametrize(
    ("data", "current", "words"),
    [
        (HEADER.encode() + b"https://a.example/,NEWS,,,,\n", None, None),
        (HEADER.encode() + b"https://a.example/,NEWS,,,,", None, "ends mid-row"),
        (b"<html>rate limited</html>\n", None, "header lacks"),
        (HEADER.encode(), None, "no measurable URL"),
        (b"\xff\xfe" + HEADER.encode(), None, "not UTF-8"),
        (HEADER.encode() + b"https://a.example/,NEWS,,,,\n", 3, "arrived short"),
        (HEADER.encode() + b"https://a.example/,NEWS,,,,\n", 2, None),
    ],
)
def test_check_list_table(data: bytes, current: int | None, words: str | None) -> None:
    if words is None:
        assert sync.check_list("x", data, current=current) >= 1
        return
    with pytest.raises(sync.UpdateError, match=words):
        sync.check_list("x", data, current=current)
