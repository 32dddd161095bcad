"""The control helper end to end on loopback: real sockets, a DNS stub, HTTP and HTTPS targets.

Every test runs behind a tripwire that makes any socket connect or send to a non-loopback
address fail (and the test with it): the refusal tests name private and metadata addresses,
and if the policy ever let one through, the tripwire stops the packet on this machine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AsyncExitStack
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import aiohttp
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from yarl import URL

from agent.identity import Identity
from agent.wire.envelope import probe_id_for, raw_public_key
from agent.wire.helper_api import control_from_json
from agent.wire.helper_auth import sign_request
from collector.helper.app import (
    HELPER_STATE,
    UNAUTH_PER_MINUTE,
    HelperConfig,
    Limits,
    create_app,
    make_runner,
    reload_data,
)
from collector.helper.control import ControlLimits
from collector.helper.errors import Refusal
from collector.helper.fetch import DNSOutcome, Fetcher, FetchLimits
from collector.helper.ipdb import parse_lines
from collector.helper.policy import TargetPolicy

PAGE = b"<html><head><title>Vigil test page</title></head><body>" + b"x" * 1000 + b"</body></html>"
BIG = 256 * 1024
CONTROL = "/api/v1/control"


# ---- network tripwire ---------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse (and remember) any connect/sendto to a non-loopback address, in this process."""
    violations: list[str] = []

    def allowed(address: Any) -> bool:
        host = address[0] if isinstance(address, tuple) else address
        try:
            return ip_address(str(host).split("%", 1)[0]).is_loopback
        except ValueError:
            return isinstance(host, str) and host.startswith("/")  # unix socket

    def guard(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(sock: socket.socket, *args: Any) -> Any:
            address = args[-1] if name == "sendto" else args[0]
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not allowed(address):
                violations.append(f"{name} {address}")
                raise PermissionError(f"test tripwire: {name} to a non-loopback address")
            return original(sock, *args)

        return wrapper

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, guard(name, getattr(socket.socket, name)))
    yield violations
    assert violations == [], f"the helper tried to reach non-loopback addresses: {violations}"


# ---- DNS stub -----------------------------------------------------------------------------------
class ZoneStub(asyncio.DatagramProtocol):
    """A UDP DNS server answering from a dict {name: {"A": [...], "AAAA": [...]}}; NXDOMAIN for
    names it does not know, an empty NOERROR for a known name without that type."""

    def __init__(self, zone: dict[str, dict[str, list[str]]]) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None
        self.queries: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append(f"{name}/{rdtype}")
        if name not in self.zone:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            for value in self.zone[name].get(rdtype, []):
                response.answer.append(dns.rrset.from_text(question.name, 5, "IN", rdtype, value))
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


# ---- target sites -------------------------------------------------------------------------------
def target_app(redirects: dict[str, str]) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"b" * BIG, content_type="application/octet-stream")

    async def big_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await resp.prepare(request)
        for _ in range(BIG // 16384):
            await resp.write(b"s" * 16384)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(body=PAGE, content_type="text/html")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(redirects[request.match_info["name"]])

    async def titles(request: web.Request) -> web.Response:  # 64 KiB of unclosed <title>
        return web.Response(body=(b"<title>" * 10_000)[:65_536], content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/titles", titles)
    app.router.add_get("/big", big)
    app.router.add_get("/big-stream", big_stream)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect/{name}", redirect)
    return app


class Lab:
    """Everything one test needs; ``helper(...)`` starts a helper with a given config."""

    def __init__(self, stack: AsyncExitStack, tmp_path: Path) -> None:
        self.stack = stack
        self.tmp_path = tmp_path
        self.redirects: dict[str, str] = {}
        self.probe = make_identity()
        self.revoked = make_identity()
        self.probes_file = tmp_path / "probes.jsonl"
        self.probes_file.write_text(
            probe_line(self.probe, False) + "\n" + probe_line(self.revoked, True) + "\n"
        )
        self.ipdb = parse_lines(
            ["127.0.0.0\t127.255.255.255\t64500\tIR\tVigil Loopback Net\n"], "test-ipdb.tsv"
        )
        self.ca = trustme.CA()
        self.ca_file = tmp_path / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.http_port = await self._serve(target_app(self.redirects), None)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("site.test").configure_cert(server_ctx)
        self.https_port = await self._serve(target_app(self.redirects), server_ctx)
        self.dns = ZoneStub(
            {
                "site.test": {"A": ["127.0.0.1"]},
                "other.test": {"A": ["127.0.0.1"]},
                "redirector.test": {"A": ["127.0.0.1"]},
                "private.test": {"A": ["10.0.0.5"]},
                "rfc1918.test": {"A": ["192.168.1.10", "172.16.0.3"]},
                "loopback.test": {"A": ["127.0.0.1"]},
                "metadata.test": {"A": ["169.254.169.254"]},
                "mapped.test": {"AAAA": ["::ffff:127.0.0.1"]},
                "linklocal.test": {"AAAA": ["fe80::1"]},
                "internal.test": {"A": ["10.0.0.7"]},
                "empty.test": {},
            }
        )
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self.dns, local_addr=("127.0.0.1", 0)
        )
        self.stack.callback(transport.close)
        self.dns_port = transport.get_extra_info("sockname")[1]
        self.session = aiohttp.ClientSession()
        self.stack.push_async_callback(self.session.close)

    async def _serve(self, app: web.Application, ctx: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self.stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        return int(runner.addresses[0][1])

    async def helper(self, *, allow: tuple[str, ...] = ("127.0.0.0/8",), mode: str = "signed",
                     limits: Limits | None = None) -> str:
        config = HelperConfig(
            mode=mode,  # type: ignore[arg-type]
            allow_ranges=allow,
            ca_file=self.ca_file,
            resolver=("127.0.0.1", self.dns_port),
            probes_file=self.probes_file if mode == "signed" else None,
            limits=limits or Limits(),
        )
        app = create_app(config, ipdb=self.ipdb, own_addresses=())
        runner = make_runner(app)
        await runner.setup()
        self.stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def call(
        self,
        base: str,
        body: dict[str, Any] | None = None,
        *,
        path: str = CONTROL,
        identity: Identity | bool | None = True,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        method = "GET" if body is None and raw is None else "POST"
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        sent = dict(headers or {})
        who = self.probe if identity is True else identity
        if isinstance(who, Identity):
            sent.update(sign_request(who, method, path, data, time.time()))
        assert self.session is not None
        async with self.session.request(method, base + path, data=data or None,
                                        headers=sent) as resp:
            return resp.status, await resp.json(), resp.headers


def make_identity() -> Identity:
    key = Ed25519PrivateKey.generate()
    return Identity(key, probe_id_for(key.public_key()))


def probe_line(identity: Identity, revoked: bool) -> str:
    return json.dumps({
        "probe_id": identity.probe_id,
        "public_key": base64.b64encode(raw_public_key(identity.public_key)).decode(),
        "revoked": revoked,
    })


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    async with AsyncExitStack() as stack:
        env = Lab(stack, tmp_path)
        await env.start()
        yield env


async def refusal(lab: Lab, base: str, url: str, **kw: Any) -> tuple[int, str]:
    status, body, _ = await lab.call(base, {"url": url, **kw})
    assert set(body) == {"error", "detail"}, body
    return status, body["error"]


# ---- happy paths --------------------------------------------------------------------------------
async def test_happy_path_https_parses_with_control_from_json(lab: Lab) -> None:
    base = await lab.helper()
    port = lab.https_port
    status, body, headers = await lab.call(base, {
        "url": f"https://site.test:{port}/",
        # the probe's own resolver gave a censor's bogon too: skipped, never contacted
        "tcp_connect": [f"127.0.0.1:{port}", f"10.10.34.34:{port}"],
    })
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    control = control_from_json(body)
    key = f"127.0.0.1:{port}"
    assert control.dns.failure is None
    assert control.dns.addrs == ("127.0.0.1",)
    assert control.tcp_connect[key].status is True
    assert control.tls_handshake[key].status is True
    assert control.tls_handshake[key].server_name == "site.test"
    assert control.http_request.failure is None
    assert control.http_request.status_code == 200
    assert control.http_request.body_length == len(PAGE)
    assert control.http_request.title == "Vigil test page"
    assert control.http_request.headers["Content-Type"].startswith("text/html")
    assert control.client.asn == "AS64500"
    assert control.client.cc == "IR"
    assert control.client.network_name == "Vigil Loopback Net"
    assert body["skipped"] == {f"10.10.34.34:{port}": "target_forbidden"}
    assert "127.0.0.1" not in json.dumps(body["client"])  # the caller's address is not echoed


async def test_redirect_to_another_allowed_name_is_followed(lab: Lab) -> None:
    base = await lab.helper()
    lab.redirects["tls"] = f"https://site.test:{lab.https_port}/"
    status, body, _ = await lab.call(
        base, {"url": f"http://redirector.test:{lab.http_port}/redirect/tls"}
    )
    assert status == 200, body
    control = control_from_json(body)
    assert control.http_request.status_code == 200
    assert control.http_request.title == "Vigil test page"
    assert body["http_request"]["redirects"] == [f"https://site.test:{lab.https_port}/"]
    assert control.tls_handshake == {}  # the URL asked about is plain http


async def test_failures_are_data_not_refusals(lab: Lab) -> None:
    base = await lab.helper()
    # Wrong name for the certificate: TLS and HTTP fail with OONI strings, the answer is 200.
    status, body, _ = await lab.call(base, {"url": f"https://other.test:{lab.https_port}/"})
    assert status == 200, body
    control = control_from_json(body)
    assert control.tls_handshake[f"127.0.0.1:{lab.https_port}"].failure == "ssl_invalid_hostname"
    assert control.http_request.failure == "ssl_invalid_hostname"
    # A name that does not exist anywhere: the site is down, not blocked.
    status, body, _ = await lab.call(base, {"url": "https://nx.test/"})
    assert status == 200
    control = control_from_json(body)
    assert control.dns.failure == "dns_nxdomain_error"
    assert control.http_request.failure == "dns_nxdomain_error"
    status, body, _ = await lab.call(base, {"url": "https://empty.test/"})
    assert control_from_json(body).dns.failure == "dns_no_answer"
    # A closed port on an allowed address.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    status, body, _ = await lab.call(base, {"url": f"http://site.test:{closed}/"})
    control = control_from_json(body)
    assert control.tcp_connect[f"127.0.0.1:{closed}"].failure == "connection_refused"
    assert control.http_request.failure == "connection_refused"


async def test_whoami_answers_the_caller_only_and_nothing_logs_the_address(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base = await lab.helper()
    status, body, headers = await lab.call(base, path="/api/v1/whoami")
    assert status == 200
    assert body == {"ip": "127.0.0.1", "asn": "AS64500", "network_name": "Vigil Loopback Net",
                    "cc": "IR", "registration_cc": "IR"}
    assert "no-store" in headers["Cache-Control"]
    await lab.call(base, {"url": f"https://site.test:{lab.https_port}/"})
    await lab.call(base, {"url": "http://10.0.0.1/"}, identity=None)
    access = [r for r in caplog.records if r.name == "aiohttp.access"]
    assert len(access) == 3  # the access log is on ...
    assert "127.0.0.1" not in caplog.text  # ... and never names the caller


async def test_networks_names_the_hops_of_a_trace_from_the_ipdb_only(lab: Lab) -> None:
    base = await lab.helper()
    status, body, _ = await lab.call(base, {"addresses": ["127.0.0.1", "::1"]},
                                     path="/api/v1/networks")
    assert status == 200
    assert body["networks"]["127.0.0.1"]["asn"] == "AS64500"
    assert body["client"]["asn"] == "AS64500"
    for bad in ({"addresses": ["not-an-ip"]}, {"addresses": ["127.0.0.1"] * 65}, {"x": 1}):
        status, _, _ = await lab.call(base, bad, path="/api/v1/networks")
        assert status == 400
    status, _, _ = await lab.call(base, {"addresses": []}, path="/api/v1/networks",
                                  identity=None)
    assert status in (401, 403)


async def test_healthz_is_public(lab: Lab) -> None:
    base = await lab.helper()
    status, body, _ = await lab.call(base, path="/healthz", identity=None)
    assert status == 200
    assert body["status"] == "ok"


# ---- the target policy --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.1.2.3/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
    ],
)
async def test_forbidden_literal_addresses(lab: Lab, url: str) -> None:
    base = await lab.helper(allow=())
    assert await refusal(lab, base, url) == (403, "target_forbidden")


@pytest.mark.parametrize(
    "name", ["private.test", "rfc1918.test", "loopback.test", "metadata.test", "mapped.test",
             "linklocal.test"],
)
async def test_names_resolving_to_forbidden_addresses(lab: Lab, name: str) -> None:
    base = await lab.helper(allow=())
    assert await refusal(lab, base, f"http://{name}:{lab.http_port}/") == (403, "target_forbidden")


@pytest.mark.parametrize(
    "location",
    [
        "http://internal.test/",  # a name resolving to 10.0.0.7
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/",
        "http://127.0.0.2:{port}/",  # loopback, but outside the one allowed address
        "http://[::ffff:10.0.0.1]/",
        "http://site.test:25/",  # an allowed address, but SMTP's port
    ],
)
async def test_redirect_into_forbidden_space(lab: Lab, location: str) -> None:
    base = await lab.helper(allow=("127.0.0.1/32",))
    lab.redirects["away"] = location.format(port=lab.http_port)
    status, reason = await refusal(lab, base, f"http://redirector.test:{lab.http_port}/redirect/away")
    assert (status, reason) == (403, "target_forbidden")


@pytest.mark.parametrize("port", [22, 25, 6667])
async def test_non_web_ports_are_refused(lab: Lab, port: int) -> None:
    base = await lab.helper()
    assert await refusal(lab, base, f"http://site.test:{port}/") == (403, "target_forbidden")


async def test_detail_never_names_the_refused_address(lab: Lab) -> None:
    base = await lab.helper(allow=())
    _, body, _ = await lab.call(base, {"url": "http://private.test/"})
    assert "10.0.0.5" not in body["detail"]


# ---- caps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/big", "/big-stream"])
async def test_large_response_is_read_up_to_the_cap(lab: Lab, path: str) -> None:
    """A page over the cap is a large page, not a failed control: both sides compare a prefix."""
    base = await lab.helper(limits=Limits(control=ControlLimits(max_body_bytes=64 * 1024)))
    status, body, _ = await lab.call(base, {"url": f"http://site.test:{lab.http_port}{path}"})
    assert status == 200, body
    http = body["http_request"]
    assert (http["failure"], http["status_code"]) == (None, 200)
    assert (http["body_length"], http["body_truncated"]) == (64 * 1024, True)


async def test_probe_body_cap_lowers_the_helpers(lab: Lab) -> None:
    base = await lab.helper()
    status, body, _ = await lab.call(
        base, {"url": f"http://site.test:{lab.http_port}/big", "body_cap": 4096})
    assert status == 200, body
    assert (body["http_request"]["body_length"], body["http_request"]["body_truncated"]) == (
        4096, True)


@pytest.mark.parametrize("cap", [0, 1023, "4096", True, 1.5])
async def test_bad_body_cap(lab: Lab, cap: Any) -> None:
    base = await lab.helper()
    url = f"http://site.test:{lab.http_port}/"
    assert (await refusal(lab, base, url, body_cap=cap))[0] == 400


async def test_forbidden_answer_the_probe_also_got_is_confirmed_without_connecting(
    lab: Lab,
) -> None:
    """127.0.0.1 for everyone is the site's own DNS mistake: the helper says so, connects to
    nothing, and names only the address the probe itself reported."""
    base = await lab.helper(allow=())
    url = f"http://loopback.test:{lab.http_port}/"
    status, body, _ = await lab.call(
        base, {"url": url, "tcp_connect": [f"127.0.0.1:{lab.http_port}"]})
    assert status == 200, body
    assert body["dns"] == {"failure": None, "addrs": ["127.0.0.1"]}
    assert body["tcp_connect"] == {} and body["tls_handshake"] == {}
    assert body["http_request"]["failure"] == "unknown_failure: target_forbidden"
    assert body["skipped"] == {f"127.0.0.1:{lab.http_port}": "target_forbidden"}


async def test_request_flood_from_one_client(lab: Lab) -> None:
    base = await lab.helper(limits=Limits(per_client_per_minute=5))
    statuses = []
    for _ in range(8):
        status, body, headers = await lab.call(base, {"url": f"http://site.test:{lab.http_port}/"})
        statuses.append(status)
    assert statuses == [200] * 5 + [429] * 3
    assert body["error"] == "too_many_requests"
    assert int(headers["Retry-After"]) >= 1
    other = make_identity()  # another enrolled probe is not throttled by the first one
    lab.probes_file.write_text(lab.probes_file.read_text() + probe_line(other, False) + "\n")
    base2 = await lab.helper(limits=Limits(per_client_per_minute=5))
    status, _, _ = await lab.call(base2, path="/api/v1/whoami", identity=other)
    assert status == 200


async def test_flood_in_open_mode_is_limited_per_address(lab: Lab) -> None:
    base = await lab.helper(mode="open", limits=Limits(per_client_per_minute=3))
    statuses = [(await lab.call(base, path="/api/v1/whoami", identity=None))[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


async def test_concurrency_cap(lab: Lab) -> None:
    limits = Limits(max_concurrent=1, queue_timeout=0.2)
    base = await lab.helper(limits=limits)
    url = f"http://site.test:{lab.http_port}/slow"
    results = await asyncio.gather(*(lab.call(base, {"url": url}) for _ in range(2)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [200, 503]
    assert [r[1]["error"] for r in results if r[0] == 503] == ["helper_busy"]


async def test_overall_deadline(lab: Lab) -> None:
    base = await lab.helper(limits=Limits(total_timeout=0.3))
    status, reason = await refusal(lab, base, f"http://site.test:{lab.http_port}/slow")
    assert (status, reason) == (504, "control_timeout")


# ---- authentication -----------------------------------------------------------------------------
async def test_unsigned_request_in_signed_mode(lab: Lab) -> None:
    base = await lab.helper()
    status, body, _ = await lab.call(base, {"url": "https://site.test/"}, identity=None)
    assert (status, body["error"]) == (401, "unauthenticated")


async def test_revoked_probe(lab: Lab) -> None:
    base = await lab.helper()
    status, body, _ = await lab.call(base, {"url": "https://site.test/"}, identity=lab.revoked)
    assert (status, body["error"]) == (403, "probe_revoked")


async def test_unknown_probe_and_forged_signature(lab: Lab) -> None:
    base = await lab.helper()
    status, body, _ = await lab.call(base, {"url": "https://site.test/"}, identity=make_identity())
    assert (status, body["error"]) == (401, "unauthenticated")
    impostor = Identity(Ed25519PrivateKey.generate(), lab.probe.probe_id)
    status, body, _ = await lab.call(base, {"url": "https://site.test/"}, identity=impostor)
    assert (status, body["error"]) == (401, "unauthenticated")


async def test_replayed_and_stale_requests(lab: Lab) -> None:
    base = await lab.helper()
    data = json.dumps({"url": f"http://site.test:{lab.http_port}/"}).encode()
    headers = sign_request(lab.probe, "POST", CONTROL, data, time.time())
    status, _, _ = await lab.call(base, raw=data, headers=headers, identity=None)
    assert status == 200
    status, body, _ = await lab.call(base, raw=data, headers=headers, identity=None)
    assert (status, body["error"]) == (401, "replayed")
    stale = sign_request(lab.probe, "POST", CONTROL, data, time.time() - 3600)
    status, body, _ = await lab.call(base, raw=data, headers=stale, identity=None)
    assert (status, body["error"]) == (401, "clock_skew")


async def test_open_mode_needs_no_signature(lab: Lab) -> None:
    base = await lab.helper(mode="open")
    status, body, _ = await lab.call(base, {"url": f"http://site.test:{lab.http_port}/"},
                                     identity=None)
    assert status == 200
    assert control_from_json(body).http_request.status_code == 200


# ---- malformed requests -------------------------------------------------------------------------
async def test_bad_requests(lab: Lab) -> None:
    base = await lab.helper()
    status, body, _ = await lab.call(base, raw=b"{not json")
    assert (status, body["error"]) == (400, "bad_request")
    status, body, _ = await lab.call(base, {"url": "ftp://site.test/"})
    assert (status, body["error"]) == (400, "bad_request")
    status, body, _ = await lab.call(base, raw=b"x" * 20_000)
    assert (status, body["error"]) == (413, "request_too_large")
    status, body, _ = await lab.call(base, path="/api/v1/nothing")
    assert status == 404
    assert body["error"] == "not_found"


# ---- the safety nets themselves -----------------------------------------------------------------
def test_tripwire_stops_non_loopback_connects(loopback_only: list[str]) -> None:
    with socket.socket() as s, pytest.raises(PermissionError):
        s.connect(("10.0.0.5", 80))
    assert loopback_only == ["connect ('10.0.0.5', 80)"]
    loopback_only.clear()


async def test_socket_factory_refuses_even_a_wrongly_pinned_address(lab: Lab) -> None:
    """Defense in depth: if an unvetted address ever reached aiohttp's resolver, the socket
    factory (the last check before connect) still refuses it."""
    policy = TargetPolicy(allow=["127.0.0.0/8"])
    fetcher = Fetcher(policy, _no_dns, ssl.create_default_context(),
                      FetchLimits(max_redirects=0, max_body_bytes=1024, connect_timeout=1,
                                  total_timeout=2))
    fetcher._resolver.pin("sneaky.test", ["10.0.0.5"])  # bypasses Fetcher.pin's vetting
    with pytest.raises(Refusal) as info:
        await fetcher.fetch(URL("http://sneaky.test/"))
    assert info.value.reason == "target_forbidden"
    assert fetcher.forbidden_attempts == 1


async def _no_dns(host: str) -> DNSOutcome:
    raise AssertionError("no resolution expected")


# ---- operator updates ---------------------------------------------------------------------------
async def test_reload_swaps_the_ip_database_and_keeps_it_on_bad_input(lab: Lab) -> None:
    db_file = lab.tmp_path / "ip2asn-v4.tsv"
    db_file.write_text("127.0.0.0\t127.255.255.255\t64500\tIR\tFirst Net\n")
    config = HelperConfig(mode="open", ipdb_files=(db_file,), resolver=("127.0.0.1", 9))
    app = create_app(config, own_addresses=())
    state = app[HELPER_STATE]
    assert state.ipdb.lookup("127.0.0.1").name == "First Net"
    db_file.write_text("127.0.0.0\t127.255.255.255\t64511\tKZ\tSecond Net\n")
    await reload_data(app)
    assert state.ipdb.lookup("127.0.0.1").client_json() == {
        "asn": "AS64511", "network_name": "Second Net", "cc": "KZ"}
    db_file.write_text("garbage only\n")
    await reload_data(app)
    assert state.ipdb.lookup("127.0.0.1").name == "Second Net"


async def test_revocation_in_the_probes_file_takes_effect_on_reload(lab: Lab) -> None:
    config = HelperConfig(probes_file=lab.probes_file, resolver=("127.0.0.1", lab.dns_port),
                          allow_ranges=("127.0.0.0/8",))
    app = create_app(config, ipdb=lab.ipdb, own_addresses=())
    runner = make_runner(app)
    await runner.setup()
    lab.stack.push_async_callback(runner.cleanup)
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    assert (await lab.call(base, path="/api/v1/whoami"))[0] == 200
    lab.probes_file.write_text(lab.probes_file.read_text() + probe_line(lab.probe, True) + "\n")
    await reload_data(app)  # what SIGHUP does (the file is also re-read by itself within 5 s)
    status, body, _ = await lab.call(base, path="/api/v1/whoami")
    assert (status, body["error"]) == (403, "probe_revoked")


async def test_unauthenticated_requests_are_rate_limited_before_verifying(lab: Lab) -> None:
    base = await lab.helper()
    answers = [(await lab.call(base, {"url": "https://site.test/"}, identity=make_identity()))[0]
               for _ in range(UNAUTH_PER_MINUTE + 30)]
    assert answers[:UNAUTH_PER_MINUTE] == [401] * UNAUTH_PER_MINUTE
    assert set(answers[UNAUTH_PER_MINUTE:]) == {429}


async def test_a_full_replay_cache_evicts_by_age_and_locks_nobody_out(lab: Lab) -> None:
    base = await lab.helper(limits=Limits(replay_capacity=3))
    data = json.dumps({"url": f"http://site.test:{lab.http_port}/"}).encode()
    now = time.time()
    first = sign_request(lab.probe, "POST", CONTROL, data, now - 10)
    assert (await lab.call(base, raw=data, headers=first, identity=None))[0] == 200
    for i in range(5):  # more than the cache holds: the oldest are evicted, nobody refused
        fresh = sign_request(lab.probe, "POST", CONTROL, data, now + i)
        status, body, _ = await lab.call(base, raw=data, headers=fresh, identity=None)
        assert status == 200, body
    # The first request was forgotten: replaying it is still refused (issued before the
    # evicted entries' horizon), never accepted twice.
    status, body, _ = await lab.call(base, raw=data, headers=first, identity=None)
    assert (status, body["error"]) == (401, "replayed")


async def test_a_page_of_unclosed_titles_keeps_the_helper_responsive(lab: Lab) -> None:
    """The page that cost 2.4 s of event-loop CPU per fetch with a backtracking title regex
    (0.06 ms with the linear scan, measured by hand): controls of it answer with an empty
    title, and /healthz answers alongside them."""
    base = await lab.helper()
    url = f"http://site.test:{lab.http_port}/titles"
    order: list[str] = []

    async def control() -> None:
        status, body, _ = await lab.call(base, {"url": url})
        assert status == 200 and control_from_json(body).http_request.title == "", body
        order.append("control")

    async def health() -> None:
        assert lab.session is not None
        async with lab.session.get(base + "/healthz") as resp:
            assert resp.status == 200
        order.append("healthz")

    await asyncio.gather(*(control() for _ in range(4)), health())
    assert order.count("control") == 4 and "healthz" in order
