"""``vigil-collector ipdb update`` against a loopback server: whole files only, old kept."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from collector.cli.main import main
from collector.helper.ipdb import load
from collector.helper.ipdb_update import UpdateError, UpdatePolicy, update


def tsv(n: int) -> bytes:
    """``n`` IPv4 ranges of /24 in iptoasn format, one AS per range."""
    lines = [
        f"10.{i // 256}.{i % 256}.0\t10.{i // 256}.{i % 256}.255\t{64500 + i % 500}\tIR\tNET-{i}"
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, dict[str, bytes | int]]]:
    files: dict[str, bytes | int] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        body = files[request.match_info["name"]]
        if isinstance(body, int):
            return web.Response(status=body)
        resp = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await resp.prepare(request)
        cut = files.get("cut", 0)
        payload = body[: len(body) - int(cut)] if cut else body
        for i in range(0, len(payload), 1000):  # many small chunks
            await resp.write(payload[i : i + 1000])
        if cut:
            request.transport.close()  # type: ignore[union-attr]
            return resp
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", files
    finally:
        await runner.cleanup()


async def test_a_whole_file_replaces_the_database(server, tmp_path: Path) -> None:
    base, files = server
    files["db.tsv.gz"] = gzip.compress(tsv(3000))
    target = tmp_path / "ipdb.tsv.gz"
    result = await update(f"{base}/db.tsv.gz", target)
    assert result.ranges == 3000 and result.previous_ranges is None
    db, _ = load([target])
    assert db.lookup("10.0.5.7").asn == 64505
    assert result.sha256 == hashlib.sha256(files["db.tsv.gz"]).hexdigest()  # type: ignore[arg-type]


@pytest.mark.parametrize("case", ["cut", "http_error", "garbage", "tiny", "shrunk", "sha"])
async def test_a_bad_download_keeps_the_old_database(server, tmp_path: Path, case: str) -> None:
    base, files = server
    target = tmp_path / "ipdb.tsv.gz"
    old = gzip.compress(tsv(3000))
    target.write_bytes(old)
    policy = UpdatePolicy()
    if case == "cut":
        files["new.tsv.gz"] = gzip.compress(tsv(4000))
        files["cut"] = 5000
    elif case == "http_error":
        files["new.tsv.gz"] = 503
    elif case == "garbage":
        files["new.tsv.gz"] = gzip.compress(b"<html>not a database</html>\n" * 2000)
    elif case == "tiny":
        files["new.tsv.gz"] = gzip.compress(tsv(10))
    elif case == "shrunk":
        files["new.tsv.gz"] = gzip.compress(tsv(1200))
    else:
        files["new.tsv.gz"] = gzip.compress(tsv(4000))
        policy = UpdatePolicy(sha256="0" * 64)
    with pytest.raises(UpdateError):
        await update(f"{base}/new.tsv.gz", target, policy)
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["ipdb.tsv.gz"]  # no temp file left


async def test_the_command_reports_a_refusal_and_exits_1(
    server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, files = server
    files["tiny.tsv"] = tsv(5)
    import asyncio

    code = await asyncio.to_thread(
        main, ["ipdb", "update", "--url", f"{base}/tiny.tsv", "--out", str(tmp_path / "db.tsv")])
    assert code == 1
    assert "unchanged" in capsys.readouterr().err
    assert not (tmp_path / "db.tsv").exists()
