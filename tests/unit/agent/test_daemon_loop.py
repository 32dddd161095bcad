"""The async shell (agent.daemon.loop) with a fake backend: reloads, commands, stop, state file."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import AgentConfig, from_mapping
from agent.daemon.interfaces import LinkStatus, Measurer
from agent.daemon.loop import Scheduler
from agent.daemon.settings import Settings
from agent.errors import ConfigError
from agent.state import read_state
from agent.wire.commands import Audience
from agent.wire.record import Blocking, MeasurementRecord, Status, Target, Verdict
from collector.campaigns import CampaignSpec, build_campaign, public_key_b64, sign_command

PROBE = "a" * 26


def record(test: str, target: Target) -> MeasurementRecord:
    return MeasurementRecord(
        measurement_id="0190d6d8-0000-7000-8000-000000000000",
        test_name=test,
        test_version="1.0.0",
        input=target.input,
        category_code=None,
        probe_id=PROBE,
        probe_asn="AS0",
        probe_cc="ZZ",
        probe_network_name="",
        resolver_asn="AS0",
        measurement_start_time="2026-06-18T10:00:00Z",
        test_runtime=0.1,
        software_name="vigil-agent",
        software_version="0.1.0",
        test_keys={},
        verdict=Verdict(Status.OK),
    )


class FakeBackend:
    probe_id = PROBE

    def __init__(self, delay: float = 0.0) -> None:
        self.stored: list[MeasurementRecord] = []
        self.delay = delay
        self.reconfigured = 0
        self.closed = False

    def plan(self, kind: str, inputs: Sequence[Target] | None) -> list[tuple[str, Target]]:
        targets = (
            list(inputs) if inputs else [Target(f"https://{kind}{i}.example/") for i in range(3)]
        )
        return [(kind, t) for t in targets]

    @contextlib.asynccontextmanager
    async def session(self, kind: str) -> AsyncIterator[Measurer]:
        backend = self

        class M:
            async def measure(self, test: str, target: Target) -> MeasurementRecord | None:
                await asyncio.sleep(backend.delay)
                return record(test, target)

        yield M()

    async def store(self, rec: MeasurementRecord) -> None:
        self.stored.append(rec)

    def bytes_used(self) -> int:
        return 1000 * len(self.stored)

    async def refresh(self) -> str:
        return "ok"

    async def housekeeping(self) -> None:
        return None

    def link(self) -> LinkStatus:
        return LinkStatus(True, None, 0)

    async def serve(self, stop: asyncio.Event, on_command: object) -> None:
        await stop.wait()

    def probe_cc(self) -> str | None:
        return "IR"

    def reconfigure(self, config: AgentConfig) -> None:
        self.reconfigured += 1

    async def aclose(self) -> None:
        self.closed = True


def make_config(tmp_path: Path, scheduler: dict[str, object], **extra: object) -> AgentConfig:
    data = {
        "agent": {"state_dir": str(tmp_path)},
        "scheduler": {
            "initial_spread_seconds": 0,
            "pause_min_seconds": 0,
            "pause_max_seconds": 0.01,
            **scheduler,
        },
        **extra,
    }
    return from_mapping(data, tmp_path / "agent.toml")


async def run_for(sched: Scheduler, until: object, timeout: float = 10.0) -> None:
    task = asyncio.create_task(sched.run())
    deadline = asyncio.get_running_loop().time() + timeout
    while not until() and asyncio.get_running_loop().time() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.01)
    sched.request_stop()
    assert await asyncio.wait_for(task, 10) == 0


async def test_runs_jobs_writes_state_and_stops(tmp_path: Path) -> None:
    backend = FakeBackend()
    cfg = make_config(tmp_path, {"tests": ["web_connectivity"], "urls_per_run": 2})
    sched = Scheduler(cfg, lambda c, s: backend)
    await run_for(sched, lambda: len(backend.stored) >= 2)
    assert len(backend.stored) == 2  # urls_per_run caps a run
    state = read_state(tmp_path)
    assert state is not None and state.phase == "stopped" and backend.closed
    assert any(r.job == "web_connectivity" and r.measurements == 2 for r in state.recent)
    assert state.budget_used_bytes >= 2000


async def test_reload_keeps_running_config_on_error(tmp_path: Path) -> None:
    backend = FakeBackend()
    cfg = make_config(tmp_path, {"tests": []})
    good = make_config(tmp_path, {"tests": ["connectivity"]})
    answers: list[object] = [ConfigError("agent.toml: invalid TOML"), good]

    def loader(path: Path | None) -> AgentConfig:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, AgentConfig)
        return answer

    sched = Scheduler(cfg, lambda c, s: backend, loader=loader)
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(0.1)
    sched.request_reload()
    await asyncio.sleep(0.1)
    assert sched.config is cfg and "invalid TOML" in (sched._last_error or "")
    sched.request_reload()
    for _ in range(200):
        if backend.stored:
            break
        await asyncio.sleep(0.01)
    assert sched.config is good and backend.reconfigured == 1
    assert backend.stored and backend.stored[0].test_name == "connectivity"
    sched.request_stop()
    assert await asyncio.wait_for(task, 10) == 0


async def test_signed_command_starts_a_campaign(tmp_path: Path) -> None:
    op = Ed25519PrivateKey.generate()
    backend = FakeBackend()
    cfg = make_config(tmp_path, {"tests": []}, campaigns={"operator_keys": [public_key_b64(op)]})
    sched = Scheduler(cfg, lambda c, s: backend)
    now = datetime.now(UTC)
    spec = CampaignSpec(
        audience=Audience(cc="IR"),
        test_name="web_connectivity",
        urls=[("https://vote.example/", None)],
        interval=60,
        start=now - timedelta(minutes=1),
        end=now + timedelta(hours=1),
    )
    signed = sign_command(build_campaign(spec, now.replace(microsecond=0)), op)
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(0.05)
    sched.on_command("vigil/v1/campaigns/IR", b"garbage")  # ignored, no crash
    sched.on_command("vigil/v1/campaigns/IR", signed)
    for _ in range(300):
        if backend.stored:
            break
        await asyncio.sleep(0.01)
    sched.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert [r.input for r in backend.stored] == ["https://vote.example/"]
    state = read_state(tmp_path)
    assert state is not None and len(state.campaigns) == 1
    assert "web_connectivity x1 every 60s" in state.campaigns[0]


async def test_stop_waits_for_a_short_measurement(tmp_path: Path) -> None:
    backend = FakeBackend(delay=0.3)
    cfg = make_config(tmp_path, {"tests": ["apps"], "stop_grace_seconds": 2})
    sched = Scheduler(cfg, lambda c, s: backend)
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(0.1)  # the first measurement is in flight
    t0 = asyncio.get_running_loop().time()
    sched.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert len(backend.stored) == 1  # it finished into the store; nothing new started
    assert asyncio.get_running_loop().time() - t0 < 1.5


def test_settings_type_is_exposed() -> None:
    assert Settings().scheduler.daily_budget_mb == 200


@pytest.mark.parametrize("bad", [{"tests": "all"}, {"urls_per_run": -1}])
def test_bad_scheduler_config_fails_before_running(tmp_path: Path, bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Scheduler(make_config(tmp_path, bad), lambda c, s: FakeBackend())


async def test_a_withdrawn_consent_stops_the_agent_with_exit_code_2(tmp_path: Path) -> None:
    """`vigil-agent consent --withdraw` while the agent runs: it stops measuring (exit 2: the
    systemd unit does not restart it)."""
    backend = FakeBackend()
    cfg = make_config(tmp_path, {"tests": ["web_connectivity"], "urls_per_run": 1})
    answers = iter([(True, "accepted")])
    seen: list[AgentConfig] = []

    def check(config: AgentConfig) -> tuple[bool, str]:
        seen.append(config)
        return next(answers, (False, "consent withdrawn"))

    sched = Scheduler(cfg, lambda c, s: backend, consent_check=check)
    assert sched._consent_withdrawn() is False  # the first answer: accepted
    task = asyncio.create_task(sched.run())
    assert await asyncio.wait_for(task, 10) == 2
    assert seen and seen[-1] is cfg and backend.closed
    state = read_state(tmp_path)
    assert state is not None and state.phase == "stopped"


class BlockingBackend(FakeBackend):
    """web_connectivity finds every URL blocked at TLS; everything else is fine."""

    @contextlib.asynccontextmanager
    async def session(self, kind: str) -> AsyncIterator[Measurer]:
        class M:
            async def measure(self, test: str, target: Target) -> MeasurementRecord | None:
                rec = record(test, target)
                if test == "web_connectivity":
                    rec = replace(rec, verdict=Verdict(Status.BLOCKED, Blocking.TLS,
                                                       "tls.sni_reset"))
                return rec

        yield M()


@pytest.mark.parametrize(("auto", "traces"), [(True, 2), (False, 0)])
async def test_blocked_urls_are_traced_when_opted_in(tmp_path: Path, auto: bool,
                                                     traces: int) -> None:
    backend = BlockingBackend()
    cfg = make_config(tmp_path, {"tests": ["web_connectivity"], "urls_per_run": 3},
                      censor_trace={"auto": auto, "per_day": 2})
    sched = Scheduler(cfg, lambda c, s: backend)
    await run_for(sched, lambda: len(backend.stored) >= 3 + traces)
    names = [r.test_name for r in backend.stored]
    assert names.count("censor_trace") == traces  # the day's ration, no more
    web = {r.input for r in backend.stored if r.test_name == "web_connectivity"}
    assert {r.input for r in backend.stored if r.test_name == "censor_trace"} <= web
