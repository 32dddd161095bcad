"""``vigil-agent doctor`` names the problem and the fix, and the command line stays light.

A loopback aiohttp helper (in its own thread: doctor runs its own event loop) answers whoami
as a real one would, or refuses it; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent import identity
from agent.cli import doctor
from agent.cli.main import COMMANDS, SUMMARIES
from agent.engine import preflight


@dataclass
class Helper:
    port: int = 0
    refusal: tuple[int, dict[str, Any]] | None = None
    calls: list[str] = field(default_factory=list)


@pytest.fixture
def helper() -> Iterator[Helper]:
    state = Helper()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def whoami(request: web.Request) -> web.Response:
        state.calls.append(request.path)
        if state.refusal is not None:
            return web.json_response(state.refusal[1], status=state.refusal[0])
        return web.json_response({"ip": "203.0.113.9", "asn": "AS64500",
                                  "network_name": "Lab ISP", "cc": "IR"})

    app = web.Application()
    app.router.add_get("/api/v1/whoami", whoami)
    runner = web.AppRunner(app)

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert ready.wait(10)
    try:
        yield state
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _config(tmp_path: Path, url: str, consent: bool = True) -> Path:
    path = tmp_path / "agent.toml"
    accepted = 'consent_version = "1"\n' if consent else ""
    path.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n{accepted}'
                    f'[control]\nurl = "{url}"\n')
    identity.create(tmp_path / "state")
    return path


def _checks(path: Path) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.run_checks(path, timeout=3)}


def test_doctor_gives_an_unenrolled_probe_the_line_to_send(
    tmp_path: Path, helper: Helper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VIGIL_STATE_DIR", raising=False)
    helper.refusal = (401, {"error": "unauthenticated", "detail": "unknown probe: enrol it first"})
    checks = _checks(_config(tmp_path, f"http://127.0.0.1:{helper.port}"))
    ident = identity.load(tmp_path / "state")
    c = checks["helper"]
    assert c.level == doctor.FAIL and "has not enrolled it" in c.message
    assert "send this line to your operator" in c.fix
    assert f"vigil-collector probes add {ident.probe_id} {ident.public_key_b64}" in c.fix
    assert helper.calls == ["/api/v1/whoami"]  # a refusal is not retried


def test_doctor_on_a_loopback_http_helper_warns_never_ok(
    tmp_path: Path, helper: Helper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VIGIL_STATE_DIR", raising=False)
    c = _checks(_config(tmp_path, f"http://127.0.0.1:{helper.port}"))["helper"]
    assert c.level == doctor.WARN and "plain http" in c.message and "https://" in c.fix


def test_doctor_fails_a_plain_http_helper_before_asking_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The question itself (signed, in clear) would tell the path a probe is there: no
    connection is even attempted."""
    import aiohttp

    monkeypatch.delenv("VIGIL_STATE_DIR", raising=False)

    def no_session(*args: object, **kwargs: object) -> None:
        raise AssertionError("doctor tried to connect")

    monkeypatch.setattr(aiohttp.ClientSession, "__init__", no_session)
    c = _checks(_config(tmp_path, "http://helper.example.org"))["helper"]
    assert c.level == doctor.FAIL and "plain http" in c.message
    assert "https://" in c.fix


def test_doctor_on_an_unreachable_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.net import closed_port

    monkeypatch.delenv("VIGIL_STATE_DIR", raising=False)
    c = _checks(_config(tmp_path, f"https://127.0.0.1:{closed_port()}"))["helper"]
    assert c.level == doctor.FAIL and "cannot be reached (connection_refused)" in c.message
    assert "[control] url" in c.fix


def test_doctor_names_a_missing_consent(tmp_path: Path, helper: Helper,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_STATE_DIR", raising=False)
    checks = _checks(_config(tmp_path, f"http://127.0.0.1:{helper.port}", consent=False))
    c = checks["consent"]
    assert c.level == doctor.FAIL and "not accepted yet" in c.message
    assert "vigil-agent consent" in c.fix


@pytest.mark.parametrize(
    ("error", "name", "fix"),
    [
        ({"failure": "generic_timeout_error"}, "helper unreachable", "[control] url"),
        ({"failure": "ssl_unknown_authority"}, "helper certificate", "[net] ca_file"),
        ({"status": 401, "reason": "clock_skew", "detail": "+400 s"}, "clock", "timedatectl"),
        ({"status": 403, "reason": "probe_revoked", "detail": "x"}, "revoked", "new enrolment"),
        ({"status": 401, "reason": "unauthenticated", "detail": "unknown probe: enrol it"},
         "not enrolled", "LINE"),
        ({"status": 401, "reason": "unauthenticated", "detail": "signature does not verify"},
         "helper refused", "LINE"),
        ({"status": 404, "reason": "not_found", "detail": "x"}, "not a helper", "[control] url"),
        ({"status": 503, "reason": "helper_busy", "detail": "x"}, "helper busy", "try again"),
        ({"status": 500, "reason": "internal_error", "detail": "x"}, "helper error", "later"),
    ],
)
def test_helper_problems_table(error: dict[str, Any], name: str, fix: str) -> None:
    exc = Exception(error.get("detail", error.get("failure", "")))
    for key, value in error.items():
        setattr(exc, key, value)
    problem = preflight.helper_problem(exc, "https://helper.example.org", "LINE")
    assert problem.name == name and fix in problem.fix
    assert problem.stops_run is (name not in ("helper unreachable", "helper busy"))


@pytest.mark.parametrize(
    ("url", "problem"),
    [("https://h.example", False), ("http://h.example", True), ("http://127.0.0.1:8", False),
     ("http://[::1]:8/", False), ("http://localhost/", False), ("HTTP://h.example", True)],
)
def test_plain_http_table(url: str, problem: bool) -> None:
    assert (preflight.plain_http_problem(url) is not None) is problem


def test_inconclusive_table() -> None:
    assert preflight.inconclusive_problem({"ok": 1, "inconclusive": 5}, {}) is None
    p = preflight.inconclusive_problem({"inconclusive": 3}, {"control.failed": 3})
    assert p is not None and "all 3 measurement(s)" in p.message
    assert "control.failed x3" in p.message
    empty = preflight.inconclusive_problem({}, {})
    assert empty is not None and empty.name == "nothing measured"


# ---- a light command line ------------------------------------------------------------------
def test_help_summaries_are_the_commands_own() -> None:
    import importlib

    assert set(SUMMARIES) == set(COMMANDS)
    for name, spec in COMMANDS.items():
        module, attr = spec.split(":")
        command = getattr(importlib.import_module(module), attr)
        assert SUMMARIES[name] == command.get_short_help_str(limit=200), name


HEAVY = ("aiohttp", "aiomqtt", "paho", "dns", "cryptography", "tqdm", "fastjsonschema",
         "jsonschema", "agent.engine.runner", "agent.uplink", "agent.daemon.backend",
         "agent.experiments.web_connectivity")


def _imported_after(code: str, *argv: str) -> set[str]:
    probe = (
        "import sys\n"
        f"{code}\n"
        "heavy = " + repr(HEAVY) + "\n"
        "print(' '.join(sorted({m for m in sys.modules for h in heavy "
        "if m == h or m.startswith(h + '.')})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_help_imports_nothing_heavy() -> None:
    loaded = _imported_after(
        "from agent.cli.main import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0\n"
    )
    assert loaded == set(), loaded


def test_doctor_imports_only_what_its_checks_need(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[agent]\nstate_dir = "{tmp_path}"\nconsent_version = "1"\n')
    loaded = _imported_after(
        "from agent.cli.doctor import run_checks\n"
        "from pathlib import Path\n"
        "run_checks(Path(sys.argv[1]), timeout=1)\n",
        str(conf),
    )
    # with no broker and no helper configured there is nothing to connect to: no HTTP or
    # MQTT client, and never the runner, the publisher or the experiments (the key and the
    # config's operator keys need cryptography; the agent check reads the outbox's stats)
    for module in ("aiohttp", "aiomqtt", "agent.engine.runner", "agent.uplink.publisher",
                   "agent.daemon.backend", "agent.experiments.web_connectivity", "tqdm"):
        assert module not in loaded, loaded
