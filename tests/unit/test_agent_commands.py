"""``vigil-agent run --once``, ``lists update``/``show`` and ``export`` against local servers.

The CLI runs in a worker thread (it owns its event loop) while the test's loop serves DNS, the
site, the control helper and the lists repository on 127.0.0.1; nothing touches the internet.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from agent.cli import main
from agent.lists import LISTS_SUBDIR, bundled_dir, lists_dir
from agent.wire import validate_record
from tests.net_support import NanoDNS, closed_port, zone_handler

HEADER = "url,category_code,category_description,date_added,source,notes\n"
PUBLIC_IP = "203.0.113.9"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.runners: list[web.AppRunner] = []
        self.dns: NanoDNS | None = None
        self.site_port = 0
        self.control_port = 0
        self.control_calls: list[dict[str, Any]] = []

    async def serve(self, app: web.Application, ssl_ctx: ssl.SSLContext | None = None) -> int:
        runner = web.AppRunner(app)
        await runner.setup()
        self.runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def close(self) -> None:
        for r in self.runners:
            await r.cleanup()
        if self.dns is not None:
            await self.dns.stop()


@pytest.fixture
async def lab(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[Lab]:
    state = Lab(tmp_path)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f"<title>Site</title>you are {PUBLIC_IP}",
                            content_type="text/html")

    site_app = web.Application()
    site_app.router.add_get("/", page)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("site.test").configure_cert(server_ctx)
    state.site_port = await state.serve(site_app, server_ctx)

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"ip": PUBLIC_IP, "asn": "AS64500", "network_name": "Lab ISP",
                                  "cc": "IR"})

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        state.control_calls.append(body)
        port = state.site_port
        return web.json_response({
            "dns": {"failure": None, "addrs": ["127.0.0.1"]},
            "tcp_connect": {f"127.0.0.1:{port}": {"status": True, "failure": None}},
            "tls_handshake": {f"127.0.0.1:{port}": {"server_name": "site.test", "status": True,
                                                     "failure": None}},
            "http_request": {"failure": None, "status_code": 200, "body_length": 40,
                             "title": "Site", "headers": {"Content-Type": "text/html"}},
            "client": {"asn": "AS64500", "network_name": "Lab ISP", "cc": "IR"},
        })

    helper = web.Application()
    helper.router.add_get("/api/v1/whoami", whoami)
    helper.router.add_post("/api/v1/control", control)
    state.control_port = await state.serve(helper)
    state.dns = await NanoDNS(zone_handler({"site.test": ["127.0.0.1"]})).start()
    yield state
    await state.close()


def _config(lab: Lab, ca: trustme.CA) -> Path:
    ca_file = lab.tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    assert lab.dns is not None
    path = lab.tmp / "agent.toml"
    path.write_text(
        f'[agent]\nstate_dir = "{lab.tmp / "state"}"\n'
        f'[net]\nresolver = "127.0.0.1:{lab.dns.port}"\nca_file = "{ca_file}"\n'
        "dns_linger = 0.1\nconnect_timeout = 2\ntls_timeout = 2\nhttp_timeout = 5\n"
    )
    return path


async def _cli(argv: list[str]) -> int:
    return await asyncio.to_thread(main, argv)


async def test_run_once_writes_valid_scrubbed_records(lab: Lab, ca: trustme.CA,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(lab, ca)
    url = f"https://site.test:{lab.site_port}/"
    listing = lab.tmp / "list.csv"
    listing.write_text(HEADER + f"{url},NEWS,News,2020-01-01,test,\n"
                       f"{url},NEWS,News,2020-01-01,test,duplicate\n"
                       "not a url,NEWS,,,,\n")
    out = lab.tmp / "out.jsonl"
    code = await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--tests", "web_connectivity", "--output", str(out),
                       "--control-url", f"http://127.0.0.1:{lab.control_port}"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = out.read_text().splitlines()
    assert len(lines) == 1  # the duplicate is measured once, the bad row skipped
    record = json.loads(lines[0])
    validate_record(record)
    assert record["input"] == url
    assert (record["probe_asn"], record["probe_cc"]) == ("AS64500", "IR")
    assert record["verdict"]["status"] == "ok", record["verdict"]
    assert PUBLIC_IP not in lines[0]
    assert lab.control_calls == [{"url": url, "tcp_connect": [f"127.0.0.1:{lab.site_port}"]}]
    assert "list.csv:4" in err  # the bad row, reported with file:line
    assert "event=measurement" in err and "status=ok" in err  # structured lines (no TTY)
    assert "measured 1 of 1" in err
    assert (lab.tmp / "state" / "probe.key").is_file()  # identity created on first run


async def test_run_once_usage_errors(lab: Lab, ca: trustme.CA,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(lab, ca)
    listing = lab.tmp / "l.csv"
    listing.write_text(HEADER)
    assert await _cli(["run", "--once", "--config", str(config), "--list", str(listing)]) == 2
    assert "no control helper" in capsys.readouterr().err
    control = ["--control-url", f"http://127.0.0.1:{lab.control_port}"]
    assert await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--tests", "no_such_test", *control]) == 2
    assert "unknown test 'no_such_test'" in capsys.readouterr().err
    assert await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--tests", "web_connectivity", *control]) == 2
    assert "nothing to measure" in capsys.readouterr().err
    assert await _cli(["run", "--once", "--config", str(config), "--list",
                       str(lab.tmp / "missing.csv"), "--tests", "web_connectivity",
                       *control]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    assert await _cli(["run", "--once", "--concurrency", "0"]) == 2
    assert await _cli(["run", "--config", str(lab.tmp / "nope.toml")]) == 2


async def test_run_once_with_unreachable_helper_is_inconclusive(
    lab: Lab, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(lab, ca)
    listing = lab.tmp / "l.csv"
    listing.write_text(HEADER + f"https://site.test:{lab.site_port}/,NEWS,,,,\n")
    out = lab.tmp / "o.jsonl"
    code = await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--tests", "web_connectivity", "--output", str(out),
                       "--control-url", f"http://127.0.0.1:{closed_port()}"])
    assert code == 0, capsys.readouterr().err
    record = json.loads(out.read_text())
    assert record["verdict"]["status"] == "inconclusive"
    assert record["test_keys"]["control_failure"] == "connection_refused"


async def test_export_ooni(lab: Lab, ca: trustme.CA, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(lab, ca)
    listing = lab.tmp / "l.csv"
    listing.write_text(HEADER + f"https://site.test:{lab.site_port}/,NEWS,,,,\n")
    out = lab.tmp / "o.jsonl"
    assert await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--tests", "web_connectivity", "--output", str(out),
                       "--control-url", f"http://127.0.0.1:{lab.control_port}"]) == 0
    capsys.readouterr()
    with out.open("a") as fh:
        fh.write("{not json\n")
    code = await _cli(["export", "--format", "ooni", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{out}:2: not JSON" in captured.err
    [line] = captured.out.splitlines()
    ooni = json.loads(line)
    for key in ("annotations", "data_format_version", "input", "measurement_start_time",
                "probe_asn", "probe_cc", "probe_ip", "probe_network_name", "report_id",
                "resolver_asn", "resolver_ip", "software_name", "software_version",
                "test_keys", "test_name", "test_runtime", "test_start_time", "test_version"):
        assert key in ooni, key
    assert ooni["data_format_version"] == "0.2.0"
    assert ooni["probe_ip"] == "127.0.0.1"
    assert ooni["resolver_ip"] == "127.0.0.1"
    assert len(ooni["measurement_start_time"]) == 19 and "T" not in ooni["measurement_start_time"]
    tk = ooni["test_keys"]
    assert tk["accessible"] is True and tk["blocking"] is False
    assert tk["queries"][0]["answers"][0]["ipv4"] == "127.0.0.1"
    assert tk["requests"][0]["response"]["body"].startswith("<title>Site</title>")
    assert tk["vigil_verdict"]["status"] == "ok"


# ---- lists update ---------------------------------------------------------------------------
@pytest.fixture
async def repo() -> AsyncIterator[dict[str, Any]]:
    """A local stand-in for the Citizen Lab repository's lists/ folder."""
    files: dict[str, tuple[int, str]] = {
        "global.csv": (200, HEADER + "https://new-global.example/,NEWS,,,,\n"),
        "ir.csv": (200, HEADER + "https://new-ir.example/,POLR,,,,\n"),
        "00-LEGEND-category_codes.csv": (200, "CATEGORY_CODE,Category\nNEWS,News\n"),
    }

    async def serve(request: web.Request) -> web.Response:
        status, body = files.get(request.match_info["name"], (404, "not found"))
        return web.Response(status=status, text=body)

    app = web.Application()
    app.router.add_get("/lists/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield {"files": files, "url": f"http://127.0.0.1:{port}/lists/"}
    await runner.cleanup()


async def test_lists_update_switches_atomically_and_keeps_old_on_failure(
    repo: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("VIGIL_STATE_DIR", str(state))
    monkeypatch.setenv("VIGIL_CONFIG", str(tmp_path / "agent.toml"))
    (tmp_path / "agent.toml").write_text("")
    # first update: bundled country lists present (ir, iq, kz, pk) are wanted; only ir exists
    assert await _cli(["lists", "update", "--source-url", repo["url"]]) == 0
    out = capsys.readouterr().out
    assert "global 1" in out and "ir 1" in out and "not available upstream: iq, kz, pk" in out
    current = lists_dir(state)
    assert current == state / LISTS_SUBDIR and (state / LISTS_SUBDIR).is_symlink()
    assert "new-global.example" in (current / "global.csv").read_text()
    assert "Creative Commons" in (current / "SOURCE.txt").read_text()
    assert (current / "README.md").read_bytes() == (bundled_dir() / "README.md").read_bytes()
    first_target = os.readlink(state / LISTS_SUBDIR)

    # a broken upstream (HTML instead of CSV, then a server error): old lists stay in use
    repo["files"]["global.csv"] = (200, "<html>rate limited</html>")
    assert await _cli(["lists", "update", "--source-url", repo["url"]]) == 1
    assert "header lacks" in capsys.readouterr().err
    repo["files"]["global.csv"] = (500, "oops")
    assert await _cli(["lists", "update", "--source-url", repo["url"]]) == 1
    assert "HTTP 500" in capsys.readouterr().err
    assert os.readlink(state / LISTS_SUBDIR) == first_target
    assert "new-global.example" in (lists_dir(state) / "global.csv").read_text()
    assert len(list((state / "testlists.d").iterdir())) == 1  # failed attempts left nothing

    # a good update replaces the previous directory
    repo["files"]["global.csv"] = (200, HEADER + "https://newer.example/,NEWS,,,,\n")
    assert await _cli(["lists", "update", "--source-url", repo["url"]]) == 0
    capsys.readouterr()
    assert os.readlink(state / LISTS_SUBDIR) != first_target
    assert "newer.example" in (lists_dir(state) / "global.csv").read_text()
    assert len(list((state / "testlists.d").iterdir())) == 1

    assert await _cli(["lists", "show"]) == 0
    shown = capsys.readouterr().out
    assert "(updated)" in shown and "global" in shown


async def test_lists_update_unreachable_source(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VIGIL_CONFIG", str(tmp_path / "agent.toml"))
    (tmp_path / "agent.toml").write_text("")
    code = await _cli(["lists", "update", "--source-url", f"http://127.0.0.1:{closed_port()}/"])
    assert code == 1
    assert "global.csv" in capsys.readouterr().err
    assert lists_dir(tmp_path / "state") == bundled_dir()
