"""Self-care of the long-running agent: its config sections, state file, status and doctor."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from agent import identity
from agent.cli import doctor
from agent.cli.main import main as agent_main
from agent.cli.status import render
from agent.config import from_mapping
from agent.daemon.settings import base_policy, campaign_jobs, parse_scheduler, settings
from agent.errors import ConfigError
from agent.state import AgentState, RunSummary, read_state, state_path, write_state
from agent.wire.commands import Audience
from collector.campaigns import CampaignSpec, build_campaign

NOW = datetime(2026, 6, 18, 10, 0, tzinfo=UTC)


# ---- [scheduler] and [campaigns] ---------------------------------------------------------------
def test_scheduler_section_parses_strictly() -> None:
    cfg = from_mapping(
        {
            "scheduler": {
                "quiet_hours": ["23:00-07:00"],
                "daily_budget_mb": 50,
                "timezone": "Asia/Tehran",
                "tests": ["connectivity"],
            }
        }
    )
    s = settings(cfg).scheduler
    assert s.daily_budget_mb == 50 and s.quiet_hours[0].start.hour == 23
    policy = base_policy(s)
    names = {j.name for j in policy.jobs}
    assert names == {"connectivity", "refresh", "housekeeping"}
    assert policy.daily_budget_bytes == 50_000_000
    conn = policy.job("connectivity")
    assert conn is not None and conn.quiet_ok and conn.budget_exempt and conn.interval == 60
    every = base_policy(parse_scheduler({}, "x"))
    assert {"web_connectivity", "apps", "throttling"} <= {j.name for j in every.jobs}
    none = base_policy(parse_scheduler({"tests": []}, "x"))
    assert {j.name for j in none.jobs} == {"refresh", "housekeeping"}  # campaigns only


@pytest.mark.parametrize(
    "table, words",
    [
        ({"quiet_hourz": []}, "unknown key"),
        ({"quiet_hours": ["late"]}, "quiet_hours"),
        ({"timezone": "Mars/Olympus"}, "not a known zone"),
        ({"tests": ["ping"]}, "is not one of"),
        ({"daily_budget_mb": -1}, "within"),
        ({"jitter": 0.9}, "within"),
        ({"web_interval_hours": "often"}, "must be a number"),
        ({"pause_min_seconds": 5, "pause_max_seconds": 1}, "pause_max_seconds"),
    ],
)
def test_scheduler_section_errors_name_the_key(table: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        settings(from_mapping({"scheduler": table}, Path("/etc/vigil/agent.toml")))


def test_campaigns_section() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from collector.campaigns import public_key_b64

    key = Ed25519PrivateKey.generate()
    s = settings(
        from_mapping({"campaigns": {"operator_keys": [public_key_b64(key)], "country": "ir"}})
    )
    assert s.campaigns.country == "IR" and len(s.campaigns.operator_keys) == 1
    bad: dict[str, Any]
    for bad in ({"operator_keys": ["nope"]}, {"country": "IRN"}, {"keys": []}):
        with pytest.raises(ConfigError):
            settings(from_mapping({"campaigns": bad}))


def test_campaign_jobs_carry_the_window() -> None:
    spec = CampaignSpec(
        audience=Audience(cc="IR"),
        urls=[("https://a.example/", None)],
        interval=120,
        start=NOW,
        end=NOW + timedelta(hours=2),
    )
    (job,) = campaign_jobs([build_campaign(spec, NOW)])
    assert job.window == (NOW, NOW + timedelta(hours=2))
    assert job.interval == 120 and job.kind == "web_connectivity" and not job.quiet_ok


# ---- state file and status ---------------------------------------------------------------------
def _state(**kw: object) -> AgentState:
    base: dict[str, object] = dict(
        pid=os.getpid(),
        version="0.1.0",
        probe_id="p" * 26,
        started_at="2026-06-18T09:00:00Z",
        updated_at="2026-06-18T09:59:58Z",
        phase="running",
        budget_day="2026-06-18",
        budget_used_bytes=41_200_000,
        budget_limit_bytes=200_000_000,
        next_runs={"connectivity": "2026-06-18T10:00:41Z"},
        broker_connected=True,
        last_upload="2026-06-18T09:58:00Z",
        recent=[
            RunSummary(
                "web_connectivity",
                "2026-06-18T09:00:00Z",
                "2026-06-18T09:30:00Z",
                150,
                20_000_000,
                "ok",
                {"ok": 141, "blocked": 9},
            )
        ],
    )
    base.update(kw)
    return AgentState(**base)  # type: ignore[arg-type]


def test_state_file_roundtrip_is_atomic_and_readable(tmp_path: Path) -> None:
    s = _state()
    write_state(tmp_path, s)
    assert read_state(tmp_path) == s
    assert state_path(tmp_path).stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["agent-state.json"]  # no temp files left
    state_path(tmp_path).write_text("{torn")
    assert read_state(tmp_path) is None


def test_status_render() -> None:
    text = render(_state(), {"count": 3, "bytes": 12_000, "dropped": 0}, NOW)
    assert "agent:     running" in text
    assert "broker:    connected, last upload 2 min ago" in text
    assert "41.2 of 200 MB" in text
    assert "connectivity" in text and "in 41s" in text
    assert "150 measured (blocked 9, ok 141): ok" in text
    assert "outbox:    3 waiting" in text
    stopped = render(_state(phase="stopped"), None, NOW)
    assert "NOT running" in stopped and "broker:    not connected" in stopped
    assert "has not run here yet" in render(None, None, NOW)


# ---- doctor ------------------------------------------------------------------------------------
def test_clock_checks() -> None:
    assert doctor.check_clock(datetime(1970, 1, 1, tzinfo=UTC), None).level == doctor.FAIL
    assert doctor.check_clock(NOW, NOW + timedelta(minutes=10)).level == doctor.FAIL
    ok = doctor.check_clock(NOW, NOW + timedelta(seconds=3))
    assert ok.level == doctor.OK and "3s" in ok.message


def test_key_checks(tmp_path: Path) -> None:
    c, ident = doctor.check_key(tmp_path)
    assert c.level == doctor.FAIL and "vigil-agent init" in c.fix and ident is None
    identity.create(tmp_path)
    c, ident = doctor.check_key(tmp_path)
    assert c.level == doctor.OK and ident is not None
    identity.key_path(tmp_path).chmod(0o644)
    c, _ = doctor.check_key(tmp_path)
    assert c.level == doctor.FAIL and c.fix.startswith("chmod 600")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A loopback TLS listener that completes handshakes (a stand-in for the broker)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1], ca_file
    finally:
        stop.set()
        t.join(5)
        sock.close()


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n' + body)
    return path


def test_doctor_reports_broker_tls(
    tmp_path: Path, tls_server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VIGIL_STATE_DIR", raising=False)
    port, ca = tls_server
    identity.create(tmp_path / "state")
    good = _config(
        tmp_path, f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nca_file = "{ca}"\npassword = "x"\n'
    )
    checks = {c.name: c for c in doctor.run_checks(good, timeout=2)}
    assert checks["config"].level == doctor.OK
    assert checks["key"].level == doctor.OK
    assert checks["broker"].level == doctor.OK, checks["broker"]
    assert checks["helper"].level == doctor.FAIL  # none configured: nothing conclusive
    assert checks["packets"].level in (doctor.OK, doctor.SKIP)  # optional: never a failure
    untrusted = _config(tmp_path, f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\npassword = "x"\n')
    broker = {c.name: c for c in doctor.run_checks(untrusted, timeout=2)}["broker"]
    assert broker.level == doctor.FAIL and "ca_file" in broker.fix


def test_doctor_says_why_packet_evidence_is_not_available(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VIGIL_STATE_DIR", raising=False)
    absent = _config(tmp_path, f'[packets]\nsocket = "{tmp_path / "absent.sock"}"\n')
    check = {c.name: c for c in doctor.run_checks(absent, timeout=1)}["packets"]
    assert check.level == doctor.SKIP and "vigil-packets service is not running" in check.message
    # a bad [packets] section is found by the config check, with the file and line
    bad = _config(tmp_path, '[packets]\nspawn = "yes"\n')
    check = {c.name: c for c in doctor.run_checks(bad, timeout=1)}["config"]
    assert check.level == doctor.FAIL and "[packets]" in check.message


def test_doctor_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VIGIL_STATE_DIR", raising=False)
    conf = _config(tmp_path, "")
    assert agent_main(["doctor", "--config", str(conf), "--timeout", "1"]) == 1
    out = capsys.readouterr()
    assert "fix:" in out.out and "problem(s) to fix" in out.err
    bad = tmp_path / "bad.toml"
    bad.write_text("[scheduler]\nquiet_hours = 3\n")
    assert agent_main(["doctor", "--config", str(bad)]) == 1
    assert "scheduler.quiet_hours" in capsys.readouterr().out
