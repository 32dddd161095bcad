"""Resolver attribution and location country, end to end on loopback.

The real helper app (open mode) with its DNS whoami zone served on 127.0.0.1, and the agent's
own context setup (``open_context``) using that DNS server as its "resolver": the helper sees
the query come from 127.0.0.1, names its network from its IP and location databases, and the
agent's records carry ``resolver_ip``/``resolver_asn`` and both countries.  Nothing leaves
loopback.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.config import from_mapping
from agent.engine.helper_client import ControlClient
from agent.engine.runner import Job, build_record, identify_resolver, open_context
from agent.experiments import Outcome
from agent.net.dns import ResolverAddress
from agent.wire.envelope import validate_record
from agent.wire.record import Status, Target, Verdict
from collector.helper import geodb, ipdb
from collector.helper.app import HELPER_STATE, HelperConfig, create_app, make_runner
from collector.helper.dns_whoami import WhoamiServer

ZONE = "whoami.helper.test"
IPDB_LINES = ["127.0.0.0\t127.255.255.255\t64500\tUS\tLoopback Satellite Co"]
GEO_ROWS = [["127.0.0.0", "127.255.255.255", "IR"]]


class Helper:
    def __init__(self, url: str, dns_port: int, app: web.Application) -> None:
        self.url, self.dns_port, self.app = url, dns_port, app


@pytest.fixture
async def helper() -> AsyncIterator[Helper]:
    config = HelperConfig(mode="open", allow_ranges=("127.0.0.0/8",), whoami_zone=ZONE)
    app = create_app(config, own_addresses=[], ipdb=ipdb.parse_lines(IPDB_LINES, "ipdb.tsv"))
    state = app[HELPER_STATE]
    state.geo = geodb.parse_rows(GEO_ROWS, "geo.csv", ipdb.LoadReport())
    assert state.whoami is not None
    dns_server = WhoamiServer(state.whoami, [("127.0.0.1", 0)])
    await dns_server.start()
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Helper(f"http://127.0.0.1:{port}", dns_server.bound[0][1], app)
    finally:
        await runner.cleanup()
        await dns_server.close()


def _config(helper: Helper, tmp_path: Path, resolver: str) -> Any:
    return from_mapping(
        {
            "agent": {"state_dir": str(tmp_path / "state")},
            "net": {"resolver": resolver, "dns_timeout": 2.0, "ipv6": False},
            "control": {"url": helper.url, "timeout": 5.0},
        },
        tmp_path / "agent.toml",
    )


class _Nothing:
    name = "web_connectivity"
    version = "0.1.0"


async def test_records_carry_resolver_egress_and_both_countries(
    helper: Helper, tmp_path: Path
) -> None:
    config = _config(helper, tmp_path, f"127.0.0.1:{helper.dns_port}")
    async with open_context(config, None) as ctx:
        probe = ctx.probe
    assert (probe.probe_asn, probe.probe_cc, probe.probe_registration_cc) == ("AS64500", "IR", "US")
    assert (probe.resolver_ip, probe.resolver_asn) == ("127.0.0.1", "AS64500")
    assert probe.resolver_network_name == "Loopback Satellite Co"
    job = Job(_Nothing(), Target("https://example.test/"))  # type: ignore[arg-type]
    ctx.probe = dataclasses.replace(probe, probe_id="abcdefghijklmnopqrstuvwxyz")
    record = build_record(job, ctx, datetime.now(UTC), 0.1,
                          Outcome(test_keys={}, verdict=Verdict(Status.OK)))
    data = record.to_json()
    validate_record(data)
    assert data["resolver_ip"] == "127.0.0.1"
    assert data["probe_cc"] == "IR" and data["probe_registration_cc"] == "US"


async def test_unseen_nonce_and_a_resolver_that_never_asks_the_helper(
    helper: Helper, tmp_path: Path
) -> None:
    client = ControlClient(helper.url, ssl_context=ssl.create_default_context())
    try:
        unseen = await client.resolver("0123456789abcdef01234567")
        assert unseen.seen is False and unseen.ip == ""
        # a "resolver" that does not exist: the query never reaches the zone
        sighting = await identify_resolver(client, ZONE, ResolverAddress("127.0.0.1", 9), 0.5)
        assert sighting is not None and sighting.seen is False
        seen = await identify_resolver(
            client, ZONE, ResolverAddress("127.0.0.1", helper.dns_port), 2.0
        )
        assert seen is not None and seen.seen and seen.ip == "127.0.0.1"
        assert seen.client is not None and seen.client.registration_cc == "US"
    finally:
        await client.close()


async def test_whoami_advertises_the_zone_and_refuses_bad_nonces(helper: Helper) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(helper.url + "/api/v1/whoami") as resp:
            who = await resp.json()
        assert who["dns_whoami"] == ZONE
        assert (who["cc"], who["registration_cc"]) == ("IR", "US")
        async with session.post(helper.url + "/api/v1/resolver",
                                json={"nonce": "../etc"}) as resp:
            assert resp.status == 400 and (await resp.json())["error"] == "bad_request"


async def test_without_a_zone_the_agent_records_no_resolver(tmp_path: Path) -> None:
    config = HelperConfig(mode="open", allow_ranges=("127.0.0.0/8",))
    app = create_app(config, own_addresses=[], ipdb=ipdb.parse_lines(IPDB_LINES, "ipdb.tsv"))
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        helper = Helper(f"http://127.0.0.1:{port}", 0, app)
        async with open_context(_config(helper, tmp_path, "127.0.0.1:9"), None) as ctx:
            probe = ctx.probe
        assert (probe.resolver_ip, probe.resolver_asn) == ("", "AS0")
        assert (probe.probe_cc, probe.probe_registration_cc) == ("US", "US")
    finally:
        await runner.cleanup()
