"""The connectivity experiment on loopback: online, an outage opened and closed, state kept
across runs in the state directory, records valid against the schema."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.message
import dns.rrset
import pytest
from aiohttp import web

from agent.config import NetConfig, from_mapping
from agent.engine.helper_client import ControlClient
from agent.engine.runner import Job, MeasureContext, build_record
from agent.experiments.connectivity import STATE_FILE, Connectivity, parse_anchor
from agent.net.dns import parse_resolver
from agent.net.tls import make_contexts
from agent.wire.envelope import validate_record
from agent.wire.record import ProbeInfo, Status, Target


class _DNS(asyncio.DatagramProtocol):
    """Answers every A query with 127.0.0.1 while ``up``; silent otherwise."""

    def __init__(self) -> None:
        self.up = True
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.up or self.transport is None:
            return
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "127.0.0.1"))
        self.transport.sendto(r.to_wire(), addr)


class Env:
    def __init__(self, dns_proto: _DNS, dns_port: int, anchor: socket.socket,
                 helper: web.AppRunner, helper_url: str) -> None:
        self.dns, self.dns_port, self.anchor = dns_proto, dns_port, anchor
        self.anchor_port = int(anchor.getsockname()[1])
        self.helper, self.helper_url = helper, helper_url


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_DNS, local_addr=("127.0.0.1", 0))
    anchor = socket.socket()
    anchor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    anchor.bind(("127.0.0.1", 0))
    anchor.listen(16)
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Env(proto, transport.get_extra_info("sockname")[1], anchor, runner,
                  f"http://127.0.0.1:{port}")
    finally:
        transport.close()
        anchor.close()
        await runner.cleanup()


async def run_once(env: Env, tmp_path: Path, client: ControlClient) -> Any:
    anchor_port = env.anchor_port
    config = from_mapping({
        "agent": {"state_dir": str(tmp_path / "state")},
        "connectivity": {"anchors": [f"127.0.0.1:{anchor_port}@international"],
                         "dns_names": ["anchor.test"], "timeout": 1.0},
    }, tmp_path / "agent.toml")
    ctx = MeasureContext(net=NetConfig(), tls=make_contexts(None),
                         resolver=parse_resolver(f"127.0.0.1:{env.dns_port}"),
                         control=client, config=config, probe=ProbeInfo(probe_id="a" * 26))
    exp = Connectivity()
    outcome = await exp.run(Target(input=None), ctx)
    record = build_record(Job(exp, Target(input=None)), ctx, datetime.now(UTC), 0.1, outcome)
    validate_record(record.to_json())
    return outcome


async def test_outage_opened_and_closed_across_runs(env: Env, tmp_path: Path) -> None:
    client = ControlClient(env.helper_url, ssl_context=ssl.create_default_context(),
                           timeout=2.0, retries=0)
    try:
        first = await run_once(env, tmp_path, client)
        assert first.verdict.status == Status.OK
        assert first.test_keys["state"] == "online"
        assert {c["kind"] for c in first.test_keys["checks"]} == {"control", "anchor", "dns"}
        # the cut: the helper stops, the anchor closes, DNS goes silent
        await env.helper.cleanup()
        env.anchor.close()
        env.dns.up = False
        down = await run_once(env, tmp_path, client)
        assert down.verdict.status == Status.DOWN
        assert down.verdict.reason == "connectivity.offline"
        assert down.test_keys["ongoing_outage"]["checks"] == 1
        assert down.test_keys["outage"] is None
        assert (tmp_path / "state" / STATE_FILE).exists()
        # recovery: DNS and an anchor back (the helper stays down: not an outage any more)
        env.dns.up = True
        back = socket.socket()
        back.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        back.bind(("127.0.0.1", env.anchor_port))
        back.listen(4)
        env.anchor = back
        recovered = await run_once(env, tmp_path, client)
        assert recovered.test_keys["state"] == "control"
        assert recovered.verdict.status == Status.INCONCLUSIVE
        outage = recovered.test_keys["outage"]
        assert outage is not None and outage["end"] is not None
        assert outage["start"] == down.test_keys["ongoing_outage"]["start"]
        assert "offline" in outage["states"]
        back.close()
    finally:
        await client.close()


def test_anchor_parsing() -> None:
    a = parse_anchor("198.51.100.7:443@domestic")
    assert (a.ip, a.port, a.scope) == ("198.51.100.7", 443, "domestic")
    assert parse_anchor("[2001:db8::1]:53").scope == "international"
    from agent.errors import ConfigError

    for bad in ("example.com:443", "1.2.3.4", "1.2.3.4:99999", "1.2.3.4:80@mars"):
        with pytest.raises(ConfigError):
            parse_anchor(bad)
