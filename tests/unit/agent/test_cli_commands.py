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

from agent.cli.main import main
from agent.consent import load_text as load_consent_text
from agent.inputs.testlists import LISTS_SUBDIR, bundled_dir, lists_dir
from agent.wire.envelope import validate_record
from tests.support.net import NanoDNS, closed_port, zone_handler

HEADER = "url,category_code,category_description,date_added,source,notes\n"
PUBLIC_IP = "203.0.113.9"


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.runners: list[web.AppRunner] = []
        self.dns: NanoDNS | None = None
        self.site_port = 0
        self.control_port = 0
        self.control_calls: list[dict[str, Any]] = []
        # what the helper answers instead of the truth: (HTTP status, JSON body)
        self.whoami_refusal: tuple[int, dict[str, Any]] | None = None
        self.control_refusal: tuple[int, dict[str, Any]] | None = None

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
        if state.whoami_refusal is not None:
            status, body = state.whoami_refusal
            return web.json_response(body, status=status)
        return web.json_response({"ip": PUBLIC_IP, "asn": "AS64500", "network_name": "Lab ISP",
                                  "cc": "IR"})

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        state.control_calls.append(body)
        if state.control_refusal is not None:
            status, answer = state.control_refusal
            return web.json_response(answer, status=status)
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


def _config(lab: Lab, ca: trustme.CA, consent: bool = True) -> Path:
    ca_file = lab.tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    assert lab.dns is not None
    path = lab.tmp / "agent.toml"
    accepted = f'consent_version = "{load_consent_text().version}"\n' if consent else ""
    path.write_text(
        f'[agent]\nstate_dir = "{lab.tmp / "state"}"\n{accepted}'
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
    assert lab.control_calls == [{"url": url, "tcp_connect": [f"127.0.0.1:{lab.site_port}"],
                                  "body_cap": 1_048_576}]  # the probe's read cap
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


async def test_run_once_with_unreachable_helper_says_so_and_exits_1(
    lab: Lab, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    """The records tell the truth (inconclusive, control_failure), and the run says what is
    wrong and exits 1: nothing was learnt (the page did not load, and without the control
    that says nothing)."""
    config = _config(lab, ca)
    listing = lab.tmp / "l.csv"
    # plain HTTP to a TLS-only port: the fetch fails, and without a control it is no evidence
    listing.write_text(HEADER + f"http://site.test:{lab.site_port}/,NEWS,,,,\n")
    out = lab.tmp / "o.jsonl"
    code = await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--tests", "web_connectivity", "--output", str(out),
                       "--control-url", f"http://127.0.0.1:{closed_port()}"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "cannot be reached (connection_refused)" in err and "fix: check [control] url" in err
    assert "nothing could be measured conclusively" in err
    record = json.loads(out.read_text())
    assert record["verdict"]["status"] == "inconclusive"
    assert record["test_keys"]["control_failure"] == "connection_refused"


async def test_run_once_with_unreachable_helper_still_reports_a_page_that_loaded(
    lab: Lab, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    """An HTTPS page that loaded over TLS valid for the site is accessible without any
    reference (blocking would need one): the run learnt something, names the helper problem
    and exits 0."""
    config = _config(lab, ca)
    listing = lab.tmp / "l.csv"
    listing.write_text(HEADER + f"https://site.test:{lab.site_port}/,NEWS,,,,\n")
    out = lab.tmp / "o.jsonl"
    code = await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--tests", "web_connectivity", "--output", str(out),
                       "--control-url", f"http://127.0.0.1:{closed_port()}"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "cannot be reached (connection_refused)" in err
    record = json.loads(out.read_text())
    assert (record["verdict"]["status"], record["verdict"]["reason"]) == ("ok", "ok.https")
    assert record["test_keys"]["control_failure"] == "connection_refused"


async def test_run_once_names_an_unenrolled_probe_and_the_line_to_send(
    lab: Lab, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    """README's first-run order used to measure 1,700 URLs as inconclusive ZZ/AS0 and exit 0."""
    config = _config(lab, ca)
    lab.whoami_refusal = (401, {"error": "unauthenticated",
                                "detail": "unknown probe: enrol it first"})
    listing = lab.tmp / "l.csv"
    listing.write_text(HEADER + f"https://site.test:{lab.site_port}/,NEWS,,,,\n")
    out = lab.tmp / "o.jsonl"
    code = await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--tests", "web_connectivity", "--output", str(out),
                       "--control-url", f"http://127.0.0.1:{lab.control_port}"])
    err = capsys.readouterr().err
    assert code == 1, err
    key = (lab.tmp / "state" / "probe.key").read_bytes()
    from agent.identity import load

    ident = load(lab.tmp / "state")
    assert key and "has not enrolled it" in err and "send this line to your operator" in err
    assert f"vigil-collector probes add {ident.probe_id} {ident.public_key_b64}" in err
    assert not out.exists() and lab.control_calls == []  # nothing measured for nothing


@pytest.mark.parametrize(
    ("refusal", "words"),
    [
        ((401, {"error": "clock_skew", "detail": "request timestamp is +3700 s off"}),
         "timedatectl set-ntp true"),
        ((403, {"error": "probe_revoked", "detail": "revoked"}), "revoked this probe's key"),
        ((404, {"error": "not_found", "detail": "no route"}), "it is not a control helper"),
    ],
)
async def test_run_once_names_other_helper_refusals(
    lab: Lab, ca: trustme.CA, capsys: pytest.CaptureFixture[str],
    refusal: tuple[int, dict[str, Any]], words: str,
) -> None:
    config = _config(lab, ca)
    lab.whoami_refusal = refusal
    listing = lab.tmp / "l.csv"
    listing.write_text(HEADER + f"https://site.test:{lab.site_port}/,NEWS,,,,\n")
    code = await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--tests", "web_connectivity", "--output", str(lab.tmp / "o.jsonl"),
                       "--control-url", f"http://127.0.0.1:{lab.control_port}"])
    err = capsys.readouterr().err
    assert code == 1 and words in err and "fix:" in err, err


async def test_run_once_where_every_verdict_is_inconclusive_exits_1(
    lab: Lab, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(lab, ca)
    lab.control_refusal = (403, {"error": "target_forbidden", "detail": "private address"})
    listing = lab.tmp / "l.csv"
    # plain HTTP to a TLS-only port: nothing loads, and the control was refused
    listing.write_text(HEADER + f"http://site.test:{lab.site_port}/,NEWS,,,,\n")
    out = lab.tmp / "o.jsonl"
    code = await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--tests", "web_connectivity", "--output", str(out),
                       "--control-url", f"http://127.0.0.1:{lab.control_port}"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "nothing could be measured conclusively: all 1 measurement(s) are inconclusive" in err
    assert json.loads(out.read_text())["verdict"]["status"] == "inconclusive"


async def test_run_once_refuses_without_consent(
    lab: Lab, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unattended (no terminal: pytest's stdin) and nobody accepted: exit 2, nothing done."""
    config = _config(lab, ca, consent=False)
    listing = lab.tmp / "l.csv"
    listing.write_text(HEADER + f"https://site.test:{lab.site_port}/,NEWS,,,,\n")
    argv = ["run", "--once", "--config", str(config), "--list", str(listing),
            "--tests", "web_connectivity", "--output", str(lab.tmp / "o.jsonl"),
            "--control-url", f"http://127.0.0.1:{lab.control_port}"]
    assert await _cli(argv) == 2
    err = capsys.readouterr().err
    assert "not accepted yet" in err and "vigil-agent consent --accept" in err
    assert 'consent_version = "1"' in err
    assert not (lab.tmp / "state" / "probe.key").exists() and lab.control_calls == []
    assert await _cli(["consent", "--config", str(config), "--check"]) == 1
    assert await _cli(["consent", "--config", str(config), "--accept"]) == 0
    assert await _cli(["consent", "--config", str(config), "--check"]) == 0
    assert await _cli(argv) == 0
    assert await _cli(["consent", "--config", str(config), "--withdraw"]) == 0
    assert await _cli(argv) == 2


async def test_run_once_leaves_out_excluded_categories(
    lab: Lab, ca: trustme.CA, capsys: pytest.CaptureFixture[str]
) -> None:
    """--exclude-category adds to [lists] exclude_categories; old codes (GAYL) count as their
    current one (LGBT); an unknown code is an error, never a silent no-op."""
    config = _config(lab, ca)
    config.write_text(config.read_text() + '[lists]\nexclude_categories = ["rel"]\n')
    url = f"https://site.test:{lab.site_port}/"
    listing = lab.tmp / "l.csv"
    listing.write_text(HEADER + f"{url},NEWS,,,,\n{url}lgbt,GAYL,,,,\n{url}faith,REL,,,,\n")
    out = lab.tmp / "o.jsonl"
    control = ["--control-url", f"http://127.0.0.1:{lab.control_port}"]
    code = await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--tests", "web_connectivity", "--output", str(out),
                       "--exclude-category", "LGBT", *control])
    err = capsys.readouterr().err
    assert code == 0, err
    assert [json.loads(line)["input"] for line in out.read_text().splitlines()] == [url]
    assert "left out 2 input(s) in excluded categories (LGBT 1, REL 1)" in err
    assert [c["url"] for c in lab.control_calls] == [url]
    code = await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--exclude-category", "LGTB", *control])
    assert code == 2
    assert "--exclude-category: unknown category code(s) LGTB" in capsys.readouterr().err
    code = await _cli(["run", "--once", "--config", str(config), "--list", str(listing),
                       "--tests", "web_connectivity", "--exclude-category", "NEWS,LGBT",
                       *control])
    assert code == 2
    assert "every input is in an excluded category" in capsys.readouterr().err


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
    assert ooni["resolver_ip"] == "127.0.0.2"  # OONI's "unknown": never resolv.conf's address
    assert len(ooni["measurement_start_time"]) == 19 and "T" not in ooni["measurement_start_time"]
    tk = ooni["test_keys"]
    assert tk["accessible"] is True and tk["blocking"] is False
    assert tk["queries"][0]["answers"][0]["ipv4"] == "127.0.0.1"
    assert tk["requests"][0]["response"]["body"].startswith("<title>Site</title>")
    assert tk["x_vigil_verdict"]["status"] == "ok"
    assert isinstance(tk["queries"][0]["rcode"], int)


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
    # first update: bundled country lists present (ir, iq, kz, pk) are wanted; only ir exists;
    # one URL where the bundled lists have hundreds is "short": accepted only when allowed
    assert await _cli(["lists", "update", "--source-url", repo["url"]]) == 1
    assert "global.csv arrived short: 1 URLs where the list in use has" in capsys.readouterr().err
    assert lists_dir(state) == bundled_dir()
    assert await _cli(["lists", "update", "--source-url", repo["url"], "--allow-shrink"]) == 0
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


# ---- presentation and flag plumbing ------------------------------------------------------------
def _record(status: str, blocking: str | None, reason: str) -> Any:
    from agent.engine.runner import Job
    from agent.wire.record import Blocking, MeasurementRecord, Status, Target, Verdict

    verdict = Verdict(Status(status), None if blocking is None else Blocking(blocking), reason)
    record = MeasurementRecord(
        measurement_id="0190a000-0000-7000-8000-000000000000", test_name="web_connectivity",
        test_version="0.1.0", input="https://x.test/", category_code="NEWS", probe_id="a" * 26,
        probe_asn="AS1", probe_cc="IR", probe_network_name="n", resolver_asn="AS0",
        measurement_start_time="2026-01-01T00:00:00.000000Z", test_runtime=0.5,
        software_name="vigil-agent", software_version="0.1.0", test_keys={}, verdict=verdict,
    )
    class _Exp:
        name = "web_connectivity"

    return record, Job(_Exp(), Target("https://x.test/"))  # type: ignore[arg-type]


def test_reporter_structured_lines_and_progress_bar() -> None:
    import io

    from agent.cli.run import Reporter
    from agent.engine.runner import RunSummary

    plain = io.StringIO()
    rep = Reporter(2, plain, tty=False)
    rec, job = _record("blocked", "dns", "dns.nxdomain")
    rep(rec, job, None)
    rep(None, job, "could not run: boom")
    lines = plain.getvalue().splitlines()
    assert lines[0].split()[1:7] == ["level=info", "event=measurement", "test=web_connectivity",
                                     "input=https://x.test/", "status=blocked", "blocking=dns"]
    assert 'error="could not run: boom"' in lines[1]
    summary = RunSummary(planned=2, measured=1, errors=1, elapsed=2.0)
    summary.by_status["blocked"] = 1
    rep.summary(summary, "out.jsonl")
    text = plain.getvalue()
    assert "measured 1 of 2" in text and "blocked 1" in text and "dns.nxdomain" in text

    term = io.StringIO()
    bar = Reporter(3, term, tty=True)
    bar(_record("ok", None, "ok")[0], job, None)
    bar(_record("blocked", "tls", "tls.sni_reset")[0], job, None)
    bar.close()
    assert "ok=1 blocked=1" in term.getvalue()
    assert "event=" not in term.getvalue()


def test_flags_override_config(tmp_path: Path) -> None:
    from agent.cli.run import _with_overrides, parse_tests_flag
    from agent.config import AgentConfig
    from agent.errors import UsageError

    cfg = _with_overrides(AgentConfig(state_dir=tmp_path), ca_file=tmp_path / "ca.pem",
                          control_url="http://h.test", concurrency=4, max_runtime=60.0,
                          data_budget=2.5)
    assert cfg.net.ca_file == tmp_path / "ca.pem" and cfg.control.url == "http://h.test"
    assert (cfg.run.concurrency, cfg.run.max_runtime, cfg.run.data_budget_bytes) == (
        4, 60.0, 2_500_000)
    with pytest.raises(UsageError, match=r"control\.url"):
        _with_overrides(AgentConfig(state_dir=tmp_path), ca_file=None, control_url="h.test",
                        concurrency=None, max_runtime=None, data_budget=None)
    assert parse_tests_flag("web_connectivity, throttling,web_connectivity") == (
        "web_connectivity", "throttling")
    with pytest.raises(UsageError):
        parse_tests_flag(" , ")


def test_default_test_selection_and_planning() -> None:
    from agent.cli.run import plan_jobs, select_tests
    from agent.errors import UsageError
    from agent.wire.record import Target

    chosen = [cls.name for cls in select_tests(())]
    assert "web_connectivity" in chosen
    assert "throttling" not in chosen  # megabytes per host: only when named
    assert "vpn" not in chosen  # needs the operator's endpoints: only when named
    from agent.experiments import InputPolicy, enabled_by_default

    assert select_tests(()) == enabled_by_default()  # the daemon's choice too
    for cls in select_tests(()):
        assert cls.default_enabled
        assert cls.input_policy in (InputPolicy.TEST_LISTS, InputPolicy.OWN)
    listed = [Target("https://a.test/", "NEWS"), Target("https://b.test/", "NEWS")]
    web, throttling = select_tests(("web_connectivity", "throttling"))
    assert [j.target.input for j in plan_jobs([web], listed, explicit_lists=False)] == [
        "https://a.test/", "https://b.test/"]
    assert len(plan_jobs([throttling], listed, explicit_lists=True)) == 2
    with pytest.raises(UsageError, match="pass --list"):
        plan_jobs([throttling], listed, explicit_lists=False)
