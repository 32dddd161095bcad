"""Throughput and reachability on loopback: the bulk endpoint, the helper's extra routes,
throttling and app tests end to end through the real ControlClient (no namespaces needed)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agent.config import NetConfig, from_mapping
from agent.engine.helper_client import ControlClient, ControlFailed
from agent.engine.runner import MeasureContext
from agent.experiments.apps import VPN
from agent.experiments.throttling.analysis import analyze
from agent.experiments.throttling.measure import ThrottlingSettings, measure
from agent.net.dns import parse_resolver
from agent.net.handshakes import raw_public, wg_initiation
from agent.net.tls import make_contexts
from agent.wire.record import Status, Target
from collector.helper.app import HelperConfig, Limits, create_app
from collector.helper.bulk import BulkConfig, BulkServer, bulk_bytes
from collector.helper.reach import reach_extension
from lab.app_endpoints import _UDP
from lab.vpn_responder import ovpn_server_reset, wg_respond


class Helper:
    def __init__(self, url: str, bulk: BulkServer, client: ControlClient) -> None:
        self.url, self.bulk, self.client = url, bulk, client


@pytest.fixture
def ca(tmp_path: Path) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    path = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


@pytest.fixture
async def helper(ca: tuple[trustme.CA, Path]) -> AsyncIterator[Helper]:
    bulk = BulkServer(BulkConfig("127.0.0.1", 0, rate_limit_bps=40_000_000))
    config = HelperConfig(mode="open", allow_ranges=("127.0.0.0/8",), ca_file=ca[1])
    app = create_app(config, own_addresses=[], extensions=[reach_extension(bulk)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    client = ControlClient(url, ssl_context=ssl.create_default_context())
    try:
        yield Helper(url, bulk, client)
    finally:
        await client.close()
        await runner.cleanup()


def ctx_for(helper: Helper, tmp_path: Path, sections: dict[str, Any] | None = None
            ) -> MeasureContext:
    config = from_mapping({"agent": {"state_dir": str(tmp_path / "state")}, **(sections or {})},
                          tmp_path / "agent.toml")
    return MeasureContext(net=NetConfig(connect_timeout=2.0, tls_timeout=2.0),
                          tls=make_contexts(None), resolver=parse_resolver("127.0.0.1:9"),
                          control=helper.client, config=config)


async def raw_get(port: int, sni: str, path: str) -> tuple[bytes, bytes]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname=sni)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    with contextlib.suppress(ssl.SSLError, OSError):
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


# ---- the bulk endpoint -----------------------------------------------------------------------
async def test_bulk_serves_same_bytes_for_any_sni() -> None:
    async with BulkServer(BulkConfig("127.0.0.1", 0, max_bytes=300_000)) as bulk:
        h1, b1 = await raw_get(bulk.port, "twitter.com", "/bulk?bytes=200000")
        h2, b2 = await raw_get(bulk.port, "abc.example", "/bulk?bytes=200000")
        assert b"200 OK" in h1 and b"X-Vigil-SNI: twitter.com" in h1
        assert b"X-Vigil-SNI: abc.example" in h2
        assert b1 == b2 == bulk_bytes(0, 200_000)
        h3, _ = await raw_get(bulk.port, "x.example", "/bulk?bytes=999999")
        assert b" 400 " in h3  # over the per-request cap
        h4, _ = await raw_get(bulk.port, "x.example", "/nothing")
        assert b" 404 " in h4
        assert bulk.stats["requests"] == 2


async def test_bulk_caps_concurrency_and_clients() -> None:
    async with BulkServer(BulkConfig("127.0.0.1", 0, max_concurrency=0)) as busy:
        head, _ = await raw_get(busy.port, "x.example", "/bulk?bytes=10")
        assert b" 503 " in head
    async with BulkServer(BulkConfig("127.0.0.1", 0, per_client_per_minute=1)) as limited:
        first, _ = await raw_get(limited.port, "x.example", "/bulk?bytes=10")
        second, _ = await raw_get(limited.port, "x.example", "/bulk?bytes=10")
        assert b" 200 " in first and b" 429 " in second


# ---- throttling through the helper -----------------------------------------------------------
async def test_throttling_unthrottled_loopback_is_ok(helper: Helper, tmp_path: Path) -> None:
    ctx = ctx_for(helper, tmp_path)
    obs = await measure("https://twitter.com/", ctx, ThrottlingSettings(address_test=False))
    verdict, details = analyze(obs)
    assert verdict.status == Status.OK, details
    assert obs.bulk_failure is None and obs.bulk_endpoint is not None
    assert len({t.round for t in obs.transfers}) == 2  # stopped early: the answer was clear
    assert obs.bytes_total <= 2_200_000
    assert {t.echoed_server_name for t in obs.transfers} == {"twitter.com", obs.benign_sni}
    assert all(t.peer_certificate_sha256 == helper.bulk.certificate_sha256
               for t in obs.transfers)
    assert 0.5 < details["sni"]["ratio"] < 2.0
    assert (tmp_path / "state" / "throttling-baseline.json").exists()


async def test_throughput_route_measures_the_target(helper: Helper,
                                                    ca: tuple[trustme.CA, Path]) -> None:
    authority, _ = ca
    cert = authority.issue_cert("127.0.0.1")
    with cert.private_key_and_cert_chain_pem.tempfile() as pem:
        target = BulkServer(BulkConfig("127.0.0.1", 0, cert_file=Path(pem), key_file=Path(pem)))
        async with target:
            answer = await helper.client.request_json(
                "POST", "/api/v1/throughput",
                {"url": f"https://127.0.0.1:{target.port}/bulk?bytes=300000",
                 "max_bytes": 200_000, "max_seconds": 2.0})
    assert answer["failure"] is None and answer["status_code"] == 200
    assert answer["bytes"] == 200_000 and answer["rate_bps"] > 0


async def test_throughput_route_refuses_forbidden_targets(helper: Helper) -> None:
    with pytest.raises(ControlFailed, match="target_forbidden"):
        await helper.client.request_json("POST", "/api/v1/throughput",
                                         {"url": "https://10.0.0.1/"})


# ---- reach and the app tests -----------------------------------------------------------------
@pytest.fixture
async def vpn_responder() -> AsyncIterator[tuple[int, int, bytes]]:
    """(wireguard port, openvpn port, server public key) on 127.0.0.1 (UDP)."""
    key = X25519PrivateKey.generate()
    loop = asyncio.get_running_loop()
    wg, _ = await loop.create_datagram_endpoint(lambda: _UDP(lambda d: wg_respond(key, d)),
                                                local_addr=("127.0.0.1", 0))

    def ovpn(d: bytes) -> bytes | None:
        try:
            return ovpn_server_reset(d)
        except ValueError:
            return None

    ov, _ = await loop.create_datagram_endpoint(lambda: _UDP(ovpn), local_addr=("127.0.0.1", 0))
    try:
        yield (wg.get_extra_info("sockname")[1], ov.get_extra_info("sockname")[1],
               raw_public(key))
    finally:
        wg.close()
        ov.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_reach_route(helper: Helper, vpn_responder: tuple[int, int, bytes]) -> None:
    wg_port, _ov_port, key = vpn_responder
    init = wg_initiation(key)
    answer = await helper.client.request_json("POST", "/api/v1/reach", {"checks": [
        {"address": f"127.0.0.1:{helper.bulk.port}", "check": "tls", "sni": "x.example"},
        {"address": f"127.0.0.1:{free_udp_port()}", "check": "tcp"},
        {"address": f"127.0.0.1:{wg_port}", "check": "wireguard",
         "payload": base64.b64encode(init.packet).decode()},
    ]})
    tls, closed, wg = answer["results"]
    assert tls["ok"] and closed["tcp_failure"] == "connection_refused"
    assert wg["ok"] and wg["reply"]
    from agent.net.handshakes import wg_check_response

    assert wg_check_response(init, base64.b64decode(wg["reply"])) is None
    with pytest.raises(ControlFailed, match="bad_request"):
        await helper.client.request_json("POST", "/api/v1/reach", {"checks": [
            {"address": f"127.0.0.1:{wg_port}", "check": "wireguard",
             "payload": base64.b64encode(b"arbitrary datagram").decode()}]})
    with pytest.raises(ControlFailed, match="target_forbidden"):
        await helper.client.request_json("POST", "/api/v1/reach", {"checks": [
            {"address": "192.168.1.1:22", "check": "tcp"}]})


def vpn_list(tmp_path: Path, wg_port: int, ov_port: int, key: bytes) -> Path:
    d = tmp_path / "apps"
    d.mkdir()
    (d / "vpn.toml").write_text(f"""name = "vpn"
[[group]]
name = "wireguard"
[[group.endpoint]]
host = "127.0.0.1"
port = {wg_port}
check = "wireguard"
public_key = "{base64.b64encode(key).decode()}"
[[group]]
name = "openvpn"
[[group.endpoint]]
host = "127.0.0.1"
port = {ov_port}
check = "openvpn-udp"
""", encoding="utf-8")
    return d


async def test_vpn_app_ok_and_down(helper: Helper, tmp_path: Path,
                                   vpn_responder: tuple[int, int, bytes]) -> None:
    wg_port, ov_port, key = vpn_responder
    d = vpn_list(tmp_path, wg_port, ov_port, key)
    ctx = ctx_for(helper, tmp_path, {"apps": {"directories": [str(d)]}})
    outcome = await VPN().run(Target(input=None), ctx)
    assert outcome.verdict.status == Status.OK, outcome.test_keys
    assert outcome.test_keys["groups"]["wireguard"]["working"] == 1
    dead = tmp_path / "dead"
    dead.mkdir()
    (dead / "vpn.toml").write_text((d / "vpn.toml").read_text().replace(
        f"port = {ov_port}", f"port = {free_udp_port()}").replace(
        f"port = {wg_port}", f"port = {free_udp_port()}"), encoding="utf-8")
    ctx = ctx_for(helper, tmp_path, {"apps": {"directories": [str(dead)]}})
    outcome = await VPN().run(Target(input=None), ctx)
    # nobody answers, from here or from the helper: down, not blocked
    assert outcome.verdict.status == Status.DOWN, outcome.test_keys
    assert all(e["control_ok"] is False for e in outcome.test_keys["endpoints"])


async def test_throughput_route_refuses_bad_numbers(helper: Helper) -> None:
    with pytest.raises(ControlFailed, match="bad_request"):
        await helper.client.request_json("POST", "/api/v1/throughput",
                                          {"url": "https://127.0.0.1/", "max_bytes": "lots"})
    with pytest.raises(ControlFailed, match="bad_request"):
        await helper.client.request_json("POST", "/api/v1/throughput", {"url": "ftp://x/"})


# ---- the same target policy and budget on every route ------------------------------------------
async def test_every_route_refuses_banned_and_invalid_ports(helper: Helper) -> None:
    for url in ("http://127.0.0.1:6667/", "http://127.0.0.1:25/", "https://127.0.0.1:22/"):
        with pytest.raises(ControlFailed, match="target_forbidden"):
            await helper.client.request_json("POST", "/api/v1/throughput", {"url": url})
    with pytest.raises(ControlFailed, match="bad_request"):
        await helper.client.request_json("POST", "/api/v1/throughput",
                                         {"url": "http://127.0.0.1:70000/"})
    for check in ("tcp", "tls", "openvpn-tcp"):
        with pytest.raises(ControlFailed, match="target_forbidden"):
            await helper.client.request_json("POST", "/api/v1/reach", {"checks": [
                {"address": f"127.0.0.1:{helper.bulk.port}", "check": "tcp"},
                {"address": "127.0.0.1:25", "check": check}]})


async def test_reach_spends_one_token_per_connection(ca: tuple[trustme.CA, Path]) -> None:
    config = HelperConfig(mode="open", allow_ranges=("127.0.0.0/8",), ca_file=ca[1],
                          limits=Limits(per_client_per_minute=40))
    app = create_app(config, own_addresses=[], extensions=[reach_extension(None)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = ControlClient(f"http://127.0.0.1:{port}", ssl_context=ssl.create_default_context())
    closed = free_udp_port()  # nothing listens on this TCP port either
    checks = {"checks": [{"address": f"127.0.0.1:{closed}", "check": "tcp"}] * 32}
    try:
        first = await client.request_json("POST", "/api/v1/reach", checks)
        assert len(first["results"]) == 32
        with pytest.raises(ControlFailed, match="too_many_requests"):
            await client.request_json("POST", "/api/v1/reach", checks)  # 64 dials > 40/min
    finally:
        await client.close()
        await runner.cleanup()


async def test_deeply_nested_bodies_are_bad_requests_on_every_route(helper: Helper) -> None:
    deep = b"[" * 5_000 + b"]" * 5_000
    async with aiohttp.ClientSession() as session:
        for path in ("/api/v1/control", "/api/v1/throughput", "/api/v1/reach"):
            async with session.post(helper.url + path, data=deep) as resp:
                body = await resp.json()
                assert (resp.status, body["error"]) == (400, "bad_request"), path
