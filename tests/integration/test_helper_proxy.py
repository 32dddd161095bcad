"""The real control helper (its CLI, on loopback) behind nginx running the shipped example
configs/nginx/vigil-helper.conf: under a path prefix, probes sign the path they send and are
accepted; X-Forwarded-For is believed only from the trusted proxy (the right-most untrusted
address), never from a probe talking to the helper directly.

nginx comes from $VIGIL_NGINX or PATH (.ci/run unpacks Debian's package); skipped without it,
failed under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme

from agent.engine.helper_client import ControlClient, ControlFailed
from agent.identity import Identity
from agent.wire.helper_auth import sign_request
from lab.ports import free_port
from lab.probes import TestProbe

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "nginx" / "vigil-helper.conf"
PREFIX = "/vigil-helper"
PROBE_SOURCE = "127.0.0.2"  # the probe's own loopback address: not a trusted proxy


def nginx_binary() -> str:
    found = os.environ.get("VIGIL_NGINX") or shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but nginx is not installed (.ci/run unpacks it)")
        pytest.skip("nginx not installed (VIGIL_NGINX=/path/to/nginx)")
    return found


@dataclass(frozen=True)
class Deployment:
    proxy_url: str  # https://127.0.0.1:PORT/vigil-helper
    helper_url: str  # http://127.0.0.1:PORT/vigil-helper (direct, bypassing nginx)
    ca: trustme.CA
    probe: TestProbe
    revoked: TestProbe


def wait_http(url: str, ctx: ssl.SSLContext | None, procs: list[subprocess.Popen[bytes]],
              logs: list[Path]) -> None:
    import http.client
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    deadline = time.monotonic() + 20
    last: object = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"exited {p.returncode}: "
                                   + "\n".join(f.read_text(errors="replace") for f in logs))
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=2,
                                           context=ctx)
        try:
            conn.request("GET", parts.path)
            last = conn.getresponse().status
            if last == 200:
                return
        except OSError as exc:
            last = exc
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"{url} not up ({last!r}): "
                       + "\n".join(f.read_text(errors="replace") for f in logs))


def nginx_conf(work: Path, helper_port: int, proxy_port: int, cert: Path, key: Path) -> Path:
    site = EXAMPLE.read_text()
    for old, new in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{proxy_port} ssl;"),
        ("listen [::]:443 ssl;", ""),
        ("server 127.0.0.1:8443;", f"server 127.0.0.1:{helper_port};"),
        ("/etc/vigil/pki/helper.pem", str(cert)),
        ("/etc/vigil/pki/helper.key", str(key)),
    ):
        assert old in site, old  # the example still says what the test replaces
        site = site.replace(old, new)
    (work / "vigil-helper.conf").write_text(site)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"{k}_temp_path {work / k};\n" for k in
                   ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = work / "nginx.conf"
    main.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {work / 'nginx.pid'};\n"
        f"error_log {work / 'error.log'} info;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n{temp}access_log off;\ninclude {work / 'vigil-helper.conf'};\n}}\n")
    return main


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    nginx = nginx_binary()
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "helper.example.org")
    cert, key = tmp_path / "helper.pem", tmp_path / "helper.key"
    leaf.private_key_pem.write_to_path(str(key))
    with cert.open("wb") as fh:
        for blob in leaf.cert_chain_pems:
            fh.write(blob.bytes())
    probe, revoked = TestProbe.new(), TestProbe.new()
    probes_file = tmp_path / "probes.jsonl"
    probes_file.write_text("".join(json.dumps({"probe_id": p.probe_id, "public_key":
                                               p.public_b64, "revoked": p is revoked}) + "\n"
                                   for p in (probe, revoked)))
    helper_port, proxy_port = free_port(), free_port()
    config = tmp_path / "collector.toml"
    config.write_text(
        f'[helper]\nhost = "127.0.0.1"\nport = {helper_port}\nmode = "signed"\n'
        f'probes_file = "{probes_file}"\npath_prefix = "{PREFIX}"\n'
        'trusted_proxies = ["127.0.0.1/32"]\n')
    helper_log, nginx_log = tmp_path / "helper.log", tmp_path / "error.log"
    procs: list[subprocess.Popen[bytes]] = []
    with helper_log.open("wb") as out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "collector", "helper", "--config", str(config)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True))
    nginx_log.touch()
    procs.append(subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(nginx_conf(tmp_path, helper_port, proxy_port,
                                                          cert, key))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        start_new_session=True))
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        wait_http(f"https://127.0.0.1:{proxy_port}{PREFIX}/healthz", ctx, procs,
                  [helper_log, nginx_log])
        yield Deployment(f"https://127.0.0.1:{proxy_port}{PREFIX}",
                         f"http://127.0.0.1:{helper_port}{PREFIX}", ca, probe, revoked)
    finally:
        for p in procs:  # by PID, ours only
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def identity(probe: TestProbe) -> Identity:
    return Identity(private_key=probe.key, probe_id=probe.probe_id)


def signer(probe: TestProbe) -> Callable[[str, str, bytes], Mapping[str, str]]:
    def sign(method: str, path: str, body: bytes) -> Mapping[str, str]:
        return sign_request(identity(probe), method, path, body, time.time())
    return sign


def signer_without_prefix(probe: TestProbe) -> Callable[[str, str, bytes], Mapping[str, str]]:
    """What a proxy that strips the prefix would need: a signature over another path."""
    def sign(method: str, path: str, body: bytes) -> Mapping[str, str]:
        return sign_request(identity(probe), method, path.removeprefix(PREFIX), body,
                            time.time())
    return sign


async def whoami_from(url: str, probe: TestProbe, ctx: ssl.SSLContext | None,
                      forwarded_for: str | None) -> tuple[int, dict[str, object]]:
    """GET whoami, signed for the path sent, from PROBE_SOURCE, with a header the probe
    chose (what a probe trying to pass for someone else would send)."""
    path = url.split("://", 1)[1].split("/", 1)[1]
    path = "/" + path + "/api/v1/whoami"
    headers = dict(sign_request(identity(probe), "GET", path, b"", time.time()))
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else False,
                                     local_addr=(PROBE_SOURCE, 0))
    async with aiohttp.ClientSession(connector=connector) as session, session.get(
        url + "/api/v1/whoami", headers=headers
    ) as resp:
        return resp.status, await resp.json()


async def test_signed_requests_through_nginx_under_a_prefix(deployment: Deployment) -> None:
    ctx = ssl.create_default_context()
    deployment.ca.configure_trust(ctx)
    # the agent's own client, configured with the prefixed URL as a probe would be
    async with ControlClient(deployment.proxy_url, ssl_context=ctx,
                             authenticator=signer(deployment.probe)) as client:
        me = await client.whoami()
    assert me.ip == "127.0.0.1"  # the agent connects from 127.0.0.1 here
    async with ControlClient(deployment.proxy_url, ssl_context=ctx,
                             authenticator=signer(deployment.revoked)) as client:
        with pytest.raises(ControlFailed) as refused:
            await client.whoami()
    assert refused.value.reason == "probe_revoked"
    # a signature over the path without the prefix does not verify behind the prefix
    async with ControlClient(deployment.proxy_url, ssl_context=ctx,
                             authenticator=signer_without_prefix(deployment.probe)) as client:
        with pytest.raises(ControlFailed) as bad:
            await client.whoami()
    assert bad.value.status == 401


async def test_forwarded_for_is_believed_only_from_the_trusted_proxy(
    deployment: Deployment
) -> None:
    ctx = ssl.create_default_context()
    deployment.ca.configure_trust(ctx)
    # through nginx: the probe's own header is kept to the left and ignored; the helper sees
    # the address nginx received the request from
    status, body = await whoami_from(deployment.proxy_url, deployment.probe, ctx,
                                     "203.0.113.9")
    assert status == 200 and body["ip"] == PROBE_SOURCE
    status, body = await whoami_from(deployment.proxy_url, deployment.probe, ctx, None)
    assert status == 200 and body["ip"] == PROBE_SOURCE
    # straight to the helper from an untrusted address: the header is ignored
    status, body = await whoami_from(deployment.helper_url, deployment.probe, None,
                                     "203.0.113.9, 127.0.0.1")
    assert status == 200 and body["ip"] == PROBE_SOURCE


async def test_nothing_outside_the_prefix(deployment: Deployment) -> None:
    ctx = ssl.create_default_context()
    deployment.ca.configure_trust(ctx)
    base = deployment.proxy_url.removesuffix(PREFIX)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        for path in ("/api/v1/whoami", "/healthz", PREFIX + "/nope"):
            async with session.get(base + path) as resp:
                assert resp.status == 404, path
        async with session.get(deployment.helper_url.removesuffix(PREFIX) + "/healthz") as resp:
            assert resp.status == 404  # the helper itself serves only under the prefix
    await asyncio.sleep(0)
