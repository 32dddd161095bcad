"""The runner: records (schema-valid, scrubbed), concurrency, politeness, budgets, sinks."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web

from agent.config import AgentConfig, ControlConfig, NetConfig, RunConfig
from agent.engine.runner import (
    DataBudget,
    Job,
    JsonlFileSink,
    MeasureContext,
    RunLimits,
    Runner,
    open_context,
)
from agent.engine.scrub import PLACEHOLDER, Scrubber
from agent.errors import OutboxError
from agent.experiments import Outcome
from agent.net.dns import ResolverAddress
from agent.net.tls import make_contexts
from agent.wire.envelope import validate_record
from agent.wire.helper_api import ClientInfo
from agent.wire.record import MeasurementRecord, Status, Target, Verdict

PUBLIC_IP = "203.0.113.7"
LOCAL_IP = "10.9.8.7"
PROBE_ID = "a" * 26


class FakeExperiment:
    name: ClassVar[str] = "fake_test"
    version: ClassVar[str] = "1.2.3"

    def __init__(self, delay: float = 0.01, charge: int = 0,
                 fail_on: str | None = None, verdict: Any = None) -> None:
        self.delay = delay
        self.charge = charge
        self.fail_on = fail_on
        self.verdict = verdict
        self.in_flight = 0
        self.max_in_flight = 0
        self.per_host: Counter[str] = Counter()
        self.max_per_host = 0
        self.runs = 0

    async def run(self, target: Target, ctx: Any) -> Outcome:
        host = (target.input or "").split("/")[2]
        self.in_flight += 1
        self.per_host[host] += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.max_per_host = max(self.max_per_host, self.per_host[host])
        try:
            self.runs += 1
            ctx.note_local_address(LOCAL_IP)
            if self.charge:
                ctx.on_bytes(self.charge)
            await asyncio.sleep(self.delay)
            if target.input == self.fail_on:
                raise RuntimeError("boom")
            keys = {
                "echo": f"your address is {PUBLIC_IP} (via {LOCAL_IP})",
                f"{PUBLIC_IP}:443": {"status": True},
                "headers": {"X-Forwarded-For": f"{PUBLIC_IP}, 198.18.0.1"},
                "fine": "1.2.3.45 and 198.18.0.10 stay",
            }
            verdict = self.verdict if self.verdict is not None else Verdict(Status.OK,
                                                                            reason="ok")
            return Outcome(test_keys=keys, verdict=verdict)
        finally:
            self.in_flight -= 1
            self.per_host[host] -= 1


class MemorySink:
    def __init__(self, fail: bool = False) -> None:
        self.records: list[MeasurementRecord] = []
        self.fail = fail

    async def put(self, record: MeasurementRecord) -> None:
        if self.fail:
            raise OutboxError("disk full")
        self.records.append(record)


def _ctx(budget: int | None = None) -> MeasureContext:
    ctx = MeasureContext(
        net=NetConfig(), tls=make_contexts(None), resolver=ResolverAddress("127.0.0.1", 53),
        control=None, budget=DataBudget(budget), scrubber=Scrubber([PUBLIC_IP]),
    )
    ctx.probe = dataclass_replace(ctx.probe, probe_id=PROBE_ID)
    return ctx


def dataclass_replace(obj: Any, **kw: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **kw)


def _jobs(exp: Any, urls: list[str]) -> list[Job]:
    return [Job(exp, Target(u, "NEWS", source=f"t.csv:{i + 2}")) for i, u in enumerate(urls)]


async def test_records_are_schema_valid_and_scrubbed(tmp_path: Path) -> None:
    exp = FakeExperiment()
    out = tmp_path / "out.jsonl"
    sink = JsonlFileSink(out)
    ctx = _ctx()
    ctx.observe_client(ClientInfo(asn="64500", network_name=f"ISP at {PUBLIC_IP}", cc="ir"))
    try:
        summary = await Runner(ctx, sink).run(_jobs(exp, ["https://a.test/", "http://b.test/x"]))
    finally:
        sink.close()
    assert summary.measured == 2 and summary.errors == 0 and summary.by_status["ok"] == 2
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    ids = set()
    for line in lines:
        assert PUBLIC_IP not in line and LOCAL_IP not in line
        record = json.loads(line)
        validate_record(record)
        ids.add(record["measurement_id"])
        assert record["test_name"] == "fake_test" and record["test_version"] == "1.2.3"
        assert record["probe_id"] == PROBE_ID
        assert (record["probe_asn"], record["probe_cc"]) == ("AS64500", "IR")
        assert record["probe_network_name"] == f"ISP at {PLACEHOLDER}"
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$",
                        record["measurement_start_time"])
        assert record["test_runtime"] > 0
        assert record["category_code"] == "NEWS"
        tk = record["test_keys"]
        assert tk["echo"] == f"your address is {PLACEHOLDER} (via {PLACEHOLDER})"
        assert f"{PLACEHOLDER}:443" in tk
        assert tk["headers"]["X-Forwarded-For"] == f"{PLACEHOLDER}, 198.18.0.1"
        assert tk["fine"] == "1.2.3.45 and 198.18.0.10 stay"
        assert record["annotations"]["engine"].startswith("vigil-agent/")
    assert len(ids) == 2
    assert sorted(json.loads(line)["input"] for line in lines) == [
        "http://b.test/x", "https://a.test/"]


async def test_global_concurrency_is_bounded() -> None:
    exp = FakeExperiment(delay=0.02)
    urls = [f"https://h{i}.test/" for i in range(30)]
    summary = await Runner(_ctx(), MemorySink(), RunLimits(concurrency=4)).run(_jobs(exp, urls))
    assert summary.measured == 30
    assert exp.max_in_flight == 4


class LingeringExperiment(FakeExperiment):
    """Does 0.05 s of 'work', then gives its slot back and waits 0.3 s (a DNS linger)."""

    def __init__(self) -> None:
        super().__init__()
        self.alive = 0
        self.max_alive = 0

    async def run(self, target: Target, ctx: Any) -> Outcome:
        from agent.experiments.slots import release_slot

        self.alive += 1
        self.max_alive = max(self.max_alive, self.alive)
        try:
            outcome = await super().run(target, ctx)
            release_slot()
            release_slot()  # idempotent
            await asyncio.sleep(0.3)
            return outcome
        finally:
            self.alive -= 1


async def test_released_slot_starts_the_next_job_while_one_lingers() -> None:
    exp = LingeringExperiment()
    exp.delay = 0.05
    urls = [f"https://h{i}.test/" for i in range(24)]
    loop = asyncio.get_running_loop()
    begin = loop.time()
    summary = await Runner(_ctx(), MemorySink(), RunLimits(concurrency=2)).run(_jobs(exp, urls))
    elapsed = loop.time() - begin
    assert summary.measured == 24
    assert exp.max_in_flight == 2  # the 'network' part never exceeds the slots
    assert exp.max_alive <= 2 * 4  # lingering jobs are bounded too
    # holding slots through the linger would take 12 x 0.35 s = 4.2 s
    assert elapsed < 2.5


async def test_per_host_politeness_without_stalling_other_hosts() -> None:
    exp = FakeExperiment(delay=0.05)
    urls = [f"https://same.test/{i}" for i in range(6)] + [
        f"https://h{i}.test/" for i in range(12)]
    loop = asyncio.get_running_loop()
    begin = loop.time()
    summary = await Runner(_ctx(), MemorySink(), RunLimits(concurrency=6, per_host=1)).run(
        _jobs(exp, urls))
    elapsed = loop.time() - begin
    assert summary.measured == 18
    assert exp.max_per_host == 1
    # same.test's six URLs are serial (>= 0.3 s) while the other twelve run beside them;
    # a dispatcher stalled behind the busy host would need 18 x 0.05 s = 0.9 s.
    assert 0.3 <= elapsed < 0.8


async def test_runtime_budget_stops_scheduling() -> None:
    exp = FakeExperiment(delay=0.1)
    urls = [f"https://h{i}.test/" for i in range(50)]
    summary = await Runner(
        _ctx(), MemorySink(), RunLimits(concurrency=2, max_runtime=0.25)
    ).run(_jobs(exp, urls))
    assert 2 <= summary.measured <= 8
    assert summary.skipped == 50 - summary.measured
    assert summary.stopped is not None and "runtime budget" in summary.stopped


async def test_data_budget_stops_scheduling() -> None:
    exp = FakeExperiment(delay=0.01, charge=1000)
    urls = [f"https://h{i}.test/" for i in range(20)]
    ctx = _ctx(budget=3000)
    summary = await Runner(ctx, MemorySink(), RunLimits(concurrency=1)).run(_jobs(exp, urls))
    assert summary.measured == 3
    assert summary.stopped is not None and "data budget" in summary.stopped
    assert summary.bytes_used == 3000
    assert ctx.budget.remaining() == 0


async def test_failed_experiment_counted_and_run_goes_on() -> None:
    exp = FakeExperiment(fail_on="https://bad.test/")
    seen: list[tuple[bool, str | None]] = []
    runner = Runner(_ctx(), MemorySink(), RunLimits(concurrency=2),
                    observer=lambda rec, job, err: seen.append((rec is not None, err)))
    summary = await runner.run(_jobs(exp, ["https://a.test/", "https://bad.test/",
                                            "https://c.test/"]))
    assert summary.measured == 2 and summary.errors == 1
    errors = [err for ok, err in seen if not ok]
    assert len(errors) == 1 and errors[0] is not None and "RuntimeError: boom" in errors[0]


async def test_measurement_timeout_is_an_error_not_a_hang() -> None:
    exp = FakeExperiment(delay=5.0)
    summary = await Runner(_ctx(), MemorySink(), RunLimits(measurement_timeout=0.1)).run(
        _jobs(exp, ["https://slow.test/"]))
    assert summary.errors == 1 and summary.measured == 0


class OneAtATimeExperiment(FakeExperiment):
    name: ClassVar[str] = "solo_test"
    one_at_a_time: ClassVar[bool] = True


async def test_one_at_a_time_jobs_never_overlap_and_their_wait_is_not_their_timeout() -> None:
    # six jobs of 0.1 s each, one at a time: the last waits 0.5 s for its turn, five times
    # its own timeout of 0.15 s, and still runs; the slots stay free for other work meanwhile
    exp = OneAtATimeExperiment(delay=0.1)
    other = FakeExperiment(delay=0.01)
    urls = [f"https://h{i}.test/" for i in range(6)]
    sink = MemorySink()
    jobs = _jobs(exp, urls) + _jobs(other, [f"https://o{i}.test/" for i in range(6)])
    summary = await Runner(_ctx(), sink, RunLimits(concurrency=2, measurement_timeout=0.15)
                           ).run(jobs)
    assert summary.measured == 12 and summary.errors == 0
    assert exp.max_in_flight == 1 and exp.runs == 6
    runtimes = [r.test_runtime for r in sink.records if r.test_name == "solo_test"]
    assert len(runtimes) == 6
    assert max(runtimes) < 0.15  # each runtime is its own measurement, not the queue
    # the other experiment's jobs did not wait behind the queue
    order = [r.input for r in sink.records]
    assert max(order.index(f"https://o{i}.test/") for i in range(6)) < order.index(
        "https://h5.test/")


async def test_one_at_a_time_jobs_still_waiting_when_the_runtime_budget_ends_are_skipped(
) -> None:
    exp = OneAtATimeExperiment(delay=0.1)
    summary = await Runner(_ctx(), MemorySink(), RunLimits(concurrency=4, max_runtime=0.25)
                           ).run(_jobs(exp, [f"https://h{i}.test/" for i in range(8)]))
    assert summary.errors == 0
    assert 2 <= summary.measured <= 4 and summary.measured + summary.skipped == 8
    assert summary.stopped is not None and "runtime budget" in summary.stopped


async def test_invalid_verdict_is_never_written() -> None:
    exp = FakeExperiment(verdict={"status": "ok"})
    sink = MemorySink()
    summary = await Runner(_ctx(), sink).run(_jobs(exp, ["https://a.test/"]))
    assert summary.errors == 1 and sink.records == []


async def test_sink_failure_ends_the_run() -> None:
    exp = FakeExperiment()
    with pytest.raises(OutboxError):
        await Runner(_ctx(), MemorySink(fail=True)).run(_jobs(exp, ["https://a.test/"]))


def test_jsonl_sink_appends_and_reports_unwritable(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "o.jsonl"
    out.parent.mkdir()
    out.write_text("previous\n")
    sink = JsonlFileSink(out)
    sink.close()
    assert out.read_text() == "previous\n"
    (tmp_path / "ro").mkdir(mode=0o500)
    import os

    if os.geteuid() != 0:  # root ignores directory permissions
        with pytest.raises(OutboxError):
            JsonlFileSink(tmp_path / "ro" / "x.jsonl")
    with pytest.raises(OutboxError):
        JsonlFileSink(tmp_path)  # a directory


def test_observe_client_normalises_untrusted_values() -> None:
    ctx = _ctx()
    ctx.observe_client(ClientInfo(asn="bogus", network_name="x" * 400, cc="Iran"))
    assert ctx.probe.probe_asn == "AS0" and ctx.probe.probe_cc == "ZZ"
    assert len(ctx.probe.probe_network_name) == 256
    assert ctx.probe.probe_id == PROBE_ID


# ---- open_context ----------------------------------------------------------------------------
@pytest.fixture
async def whoami_server() -> AsyncIterator[int]:
    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"ip": PUBLIC_IP, "asn": "AS64501", "network_name": "Lab",
                                  "cc": "KZ"})

    app = web.Application()
    app.router.add_get("/api/v1/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await runner.cleanup()


async def test_open_context_learns_network_and_public_ip(whoami_server: int,
                                                         tmp_path: Path) -> None:
    config = AgentConfig(
        state_dir=tmp_path,
        net=NetConfig(resolver="127.0.0.1:5353"),
        control=ControlConfig(url=f"http://127.0.0.1:{whoami_server}"),
        run=RunConfig(data_budget_mb=1.5),
    )
    async with open_context(config, None) as ctx:
        assert ctx.probe.probe_cc == "KZ" and ctx.probe.probe_asn == "AS64501"
        assert PUBLIC_IP in ctx.scrubber.addresses
        assert ctx.resolver == ResolverAddress("127.0.0.1", 5353)
        assert ctx.budget.limit == 1_500_000
        assert ctx.control is not None


async def test_open_context_survives_an_unreachable_helper(tmp_path: Path) -> None:
    from tests.support.net import closed_port

    config = AgentConfig(
        state_dir=tmp_path, net=NetConfig(resolver="127.0.0.1"),
        control=ControlConfig(url=f"http://127.0.0.1:{closed_port()}", timeout=1.0),
    )
    async with open_context(config, None) as ctx:
        assert ctx.probe.probe_cc == "ZZ"
        assert ctx.control is not None
