"""scripts/install-collector.sh into a temporary root (VIGIL_ROOT): PKI, broker config,
collector.toml and units; the installed broker starts and the installed CLI enrols a probe in
one command; a second run upgrades in place keeping CA, keys, logins and config; uninstall
keeps the data, --purge removes it."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.broker import mosquitto_available, mqtt_connect_check
from lab.ports import free_port
from lab.probes import TestProbe
from tests.integration.conftest import require_mosquitto

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-collector.sh"
KEPT = ("etc/vigil/pki/ca.key", "etc/vigil/pki/ca.pem", "etc/vigil/pki/broker.key",
        "etc/vigil/pki/helper.pem", "etc/vigil/collector.toml", "etc/vigil/collector.pass",
        "etc/vigil/mosquitto/probes.passwd")


def run_installer(root: Path, ports: dict[str, int], *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    # System mode with this interpreter (its packages are the dependencies): no pip, so no
    # network; the venv mode differs only in how the code gets to /opt/vigil.
    env.update(VIGIL_ROOT=str(root), VIGIL_NO_SYSTEMD="1", VIGIL_MODE="system",
               VIGIL_PYTHON=sys.executable, VIGIL_HOSTNAME="collector.example.test",
               **{f"VIGIL_{k}_PORT": str(v) for k, v in ports.items()})
    done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def digests(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in KEPT}


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    require_mosquitto()
    root = tmp_path / "root"
    root.mkdir()
    ports = {name: free_port() for name in ("PROBE", "PROBE_CERT", "COLLECTOR", "HELPER", "API")}
    run_installer(root, ports)
    yield root, ports


def start_broker(root: Path) -> subprocess.Popen[bytes]:
    conf = root / "etc/vigil/mosquitto/mosquitto.conf"
    return subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_login(ca: Path, port: int, user: str, password: str) -> int:
    import ssl
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline, rc = time.monotonic() + 15, -1
    while time.monotonic() < deadline:
        try:
            rc = mqtt_connect_check("127.0.0.1", port, ctx, user, password)
            if rc == 0:
                return rc
        except OSError:
            pass
        time.sleep(0.1)
    return rc


def test_install_start_enrol_upgrade_uninstall(
    installed: tuple[Path, dict[str, int]]
) -> None:
    assert mosquitto_available() is None
    root, ports = installed
    pki = root / "etc/vigil/pki"
    # the own CA signs both server certificates, named for the host
    for name in ("broker", "helper"):
        assert f"{name}.pem: OK" in openssl("verify", "-CAfile", str(pki / "ca.pem"),
                                            str(pki / f"{name}.pem"))
        san = openssl("x509", "-in", str(pki / f"{name}.pem"), "-noout", "-ext",
                      "subjectAltName")
        assert "DNS:collector.example.test" in san
    assert (pki / "ca.key").stat().st_mode & 0o777 == 0o600
    conf = (root / "etc/vigil/collector.toml").read_text()
    assert f"port = {ports['COLLECTOR']}" in conf and f"port = {ports['HELPER']}" in conf
    for unit in ("vigil-broker", "vigil-collector", "vigil-helper"):
        text = (root / f"etc/systemd/system/{unit}.service").read_text()
        [start] = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
        assert str(root) in start  # runs in place

    broker = start_broker(root)
    try:
        ca = root / "etc/vigil/ca.pem"
        password = (root / "etc/vigil/collector.pass").read_text().strip()
        assert wait_login(ca, ports["COLLECTOR"], "vigil-collector", password) == 0
        pid_file = root / "run/vigil-broker/mosquitto.pid"
        assert int(pid_file.read_text()) == broker.pid
        # one command enrols the probe with the installed CLI and config
        probe = TestProbe.new()
        done = subprocess.run(
            [str(root / "opt/vigil/bin/vigil-collector"), "probes", "add", probe.probe_id,
             probe.public_b64, "--config", str(root / "etc/vigil/collector.toml")],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        m = re.search(rf"username {probe.probe_id}\s+password (\S+)", done.stdout)
        assert m, done.stdout
        assert wait_login(ca, ports["PROBE"], probe.probe_id, m.group(1)) == 0
        before = digests(root)

        # a second run (an upgrade in place) keeps CA, keys, config, logins
        out = run_installer(root, ports)
        assert "kept existing" in out and "reinstalled" in out
        assert digests(root) == before
        assert wait_login(ca, ports["PROBE"], probe.probe_id, m.group(1)) == 0
    finally:
        os.kill(broker.pid, signal.SIGTERM)
        broker.wait(15)

    run_installer(root, ports, "--uninstall")
    assert not (root / "opt/vigil").exists()
    assert not (root / "etc/systemd/system/vigil-collector.service").exists()
    assert digests(root) == before  # config, PKI and logins kept
    assert (root / "var/lib/vigil-collector/collector.db").exists()
    run_installer(root, ports, "--uninstall", "--purge")
    assert not (root / "etc/vigil").exists() and not (root / "var/lib/vigil-collector").exists()
