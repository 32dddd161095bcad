"""A real Mosquitto for tests, running the project's own config (configs/mosquitto/).

Fixture API (stable; the collector tests use it too)::

    from lab.broker import MosquittoBroker, BrokerInfo, Credentials, ClientCert

    with MosquittoBroker(tmp_path, probe_ids=[pid1, pid2]) as broker:   # started, ready
        info: BrokerInfo = broker.info
        info.host                 # "127.0.0.1"
        info.probe_port           # TLS + password listener for probes (username = probe id)
        info.probe_cert_port      # TLS + client-certificate listener (CN = probe id)
        info.collector_port       # TLS + password listener for collectors only
        info.ca_file              # PEM of the test CA (trust it on the client side)
        info.collector            # Credentials(username="vigil-collector", password=...)
        info.probes[pid1]         # Credentials(username=pid1, password=...)
        info.tls_context()        # ssl.SSLContext trusting the CA (optionally with a client cert)
        broker.add_probe(pid3)    # new probe user, live (SIGHUP reload, waits until it works)
        broker.add_collector("vigil-collector-2")  # another collector user
        broker.client_cert(pid1)  # ClientCert(cert_file, key_file) with CN = pid1
        broker.restart()          # graceful stop + start, same persistence dir and ports
        broker.kill()             # SIGKILL (crash); start() again afterwards
        broker.log_text()         # the broker's log so far (attach it to assertion messages)

pytest fixtures (tests/integration/conftest.py): ``broker`` (started, no probes yet) and
``broker_factory(**kwargs)`` for brokers with non-default limits (e.g. message_size_limit).

Topics and ACL (configs/mosquitto/*.acl): the probe listeners mount every probe topic under
``edge/`` (agent.wire.topics.PROBE_MOUNT); probes write only
``vigil/v1/probes/<own id>/measurements`` and ``.../status`` and read only
``.../<own id>/commands``; collectors read ``edge/vigil/v1/probes/#`` (also as
``$share/collectors/edge/vigil/v1/probes/+/measurements``) and write ``.../+/commands``.

Stops the broker by PID (never by name); waits for readiness with a real MQTT CONNECT, bounded.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

import trustme

from lab.ports import free_port
from scripts.mosquitto_conf import (
    BrokerSettings,
    install_acls,
    render,
    write_password_file,
)

MOSQUITTO_BIN = os.environ.get("VIGIL_MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD_BIN = os.environ.get("VIGIL_MOSQUITTO_PASSWD", "/usr/bin/mosquitto_passwd")
COLLECTOR_USER = "vigil-collector"
HOST = "127.0.0.1"
READY_TIMEOUT = 15.0  # seconds to wait for a started broker to accept an MQTT CONNECT


def mosquitto_available() -> str | None:
    """None when the broker binaries are usable, else the reason they are not."""
    for binary in (MOSQUITTO_BIN, MOSQUITTO_PASSWD_BIN):
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            return f"{binary} not installed (apt-get install mosquitto mosquitto-clients)"
    return None


_PORT_ATTEMPTS = 5  # first starts that found a chosen port taken by then


class _PortTaken(RuntimeError):
    """Mosquitto could not bind a port chosen as free: someone took it in between."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class ClientCert:
    cert_file: Path  # PEM: certificate (+ chain)
    key_file: Path  # PEM: private key


@dataclass(frozen=True)
class BrokerInfo:
    """Everything a client needs to connect.  Valid across restart() (same ports)."""

    host: str
    probe_port: int
    probe_cert_port: int
    collector_port: int
    ca_file: Path
    collector: Credentials
    probes: dict[str, Credentials] = field(default_factory=dict)
    message_size_limit: int = 0

    def tls_context(self, client_cert: ClientCert | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client_cert is not None:
            ctx.load_cert_chain(str(client_cert.cert_file), str(client_cert.key_file))
        return ctx


def _mqtt_str(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_connect_check(
    host: str,
    port: int,
    ctx: ssl.SSLContext,
    username: str | None,
    password: str | None,
    timeout: float = 5.0,
) -> int:
    """One MQTT 3.1.1 CONNECT over TLS; returns the CONNACK return code (0 = accepted).

    Deliberately independent of paho/aiomqtt: the fixture must not depend on the code under test.
    Raises OSError/ssl.SSLError when the TLS connection itself fails.
    """
    flags = 0x02  # clean session
    payload = _mqtt_str(f"vigil-fixture-{secrets.token_hex(4)}")
    if username is not None:
        flags |= 0x80
        payload += _mqtt_str(username)
        if password is not None:
            flags |= 0x40
            payload += _mqtt_str(password)
    variable = _mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", 10)
    body = variable + payload
    packet = b"\x10" + _remaining_length(len(body)) + body
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as s,
    ):
        s.sendall(packet)
        head = b""
        while len(head) < 4:
            chunk = s.recv(4 - len(head))
            if not chunk:
                raise ConnectionError("broker closed the connection before CONNACK")
            head += chunk
        if head[0] != 0x20:
            raise ConnectionError(f"unexpected packet {head!r} instead of CONNACK")
        rc = head[3]
        if rc == 0:
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT
        return rc


class MosquittoBroker:
    """One Mosquitto process in ``workdir`` with Vigil's config; context manager."""

    def __init__(
        self,
        workdir: Path,
        *,
        probe_ids: Iterable[str] = (),
        message_size_limit: int = 262_144,
        max_queued_messages: int = 100_000,
        max_queued_bytes: int = 0,
        max_inflight_messages: int = 100,
        autosave_interval: int = 60,
    ) -> None:
        if reason := mosquitto_available():
            raise RuntimeError(reason)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_file = workdir / "mosquitto.log"
        self.conf_file = workdir / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        self._ca = trustme.CA(organization_name="Vigil test CA")
        self._pki = workdir / "pki"
        self._pki.mkdir(exist_ok=True)
        ca_file = self._pki / "ca.pem"
        self._ca.cert_pem.write_to_path(str(ca_file))
        server = self._ca.issue_cert(HOST, "localhost")
        self._server_cert = self._pki / "server.pem"
        self._server_key = self._pki / "server.key"
        server.private_key_pem.write_to_path(str(self._server_key))
        with self._server_cert.open("wb") as fh:
            for blob in server.cert_chain_pems:
                fh.write(blob.bytes())
        os.chmod(self._server_key, 0o600)
        self._collectors: dict[str, str] = {COLLECTOR_USER: secrets.token_urlsafe(18)}
        self._probes: dict[str, str] = {pid: secrets.token_urlsafe(18) for pid in probe_ids}
        probes_acl, collectors_acl = install_acls(workdir)
        self._settings = BrokerSettings(
            data_dir=self.data_dir,
            ca_file=ca_file,
            server_cert_file=self._server_cert,
            server_key_file=self._server_key,
            probe_password_file=workdir / "probes.passwd",
            collector_password_file=workdir / "collectors.passwd",
            probe_acl_file=probes_acl,
            collector_acl_file=collectors_acl,
            log_dest=f"file {self.log_file}",
            probe_port=free_port(),
            probe_cert_port=free_port(),
            collector_port=free_port(),
            probe_bind=HOST,
            collector_bind=HOST,
            user=getpass.getuser(),
            autosave_interval=autosave_interval,
            max_queued_messages=max_queued_messages,
            max_queued_bytes=max_queued_bytes,
            max_inflight_messages=max_inflight_messages,
            message_size_limit=message_size_limit,
        )
        self._started_once = False
        self._write_passwords()
        self.conf_file.write_text(render(self._settings), "utf-8")

    # ---- connection info ------------------------------------------------------------------
    @property
    def info(self) -> BrokerInfo:
        s = self._settings
        return BrokerInfo(
            host=HOST,
            probe_port=s.probe_port,
            probe_cert_port=s.probe_cert_port,
            collector_port=s.collector_port,
            ca_file=s.ca_file,
            collector=Credentials(COLLECTOR_USER, self._collectors[COLLECTOR_USER]),
            probes={pid: Credentials(pid, pw) for pid, pw in self._probes.items()},
            message_size_limit=s.message_size_limit,
        )

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def probe(self, probe_id: str) -> Credentials:
        return Credentials(probe_id, self._probes[probe_id])

    def collector(self, username: str = COLLECTOR_USER) -> Credentials:
        return Credentials(username, self._collectors[username])

    def client_cert(self, common_name: str) -> ClientCert:
        """A client certificate signed by the broker's CA with CN = ``common_name``."""
        leaf = self._ca.issue_cert(common_name=common_name)
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in common_name)
        cert, key = self._pki / f"client-{safe}.pem", self._pki / f"client-{safe}.key"
        with cert.open("wb") as fh:
            for blob in leaf.cert_chain_pems:
                fh.write(blob.bytes())
        leaf.private_key_pem.write_to_path(str(key))
        os.chmod(key, 0o600)
        return ClientCert(cert, key)

    def log_text(self) -> str:
        try:
            return self.log_file.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # ---- users ----------------------------------------------------------------------------
    def _write_passwords(self) -> None:
        write_password_file(self._settings.probe_password_file, self._probes, MOSQUITTO_PASSWD_BIN)
        write_password_file(
            self._settings.collector_password_file, self._collectors, MOSQUITTO_PASSWD_BIN
        )

    def add_probe(self, probe_id: str, password: str | None = None) -> Credentials:
        """Enrol a probe user (username = probe id); live when the broker runs."""
        self._probes[probe_id] = password or secrets.token_urlsafe(18)
        self._reload_users(self._settings.probe_port, self.probe(probe_id))
        return self.probe(probe_id)

    def add_collector(self, username: str, password: str | None = None) -> Credentials:
        self._collectors[username] = password or secrets.token_urlsafe(18)
        self._reload_users(self._settings.collector_port, self.collector(username))
        return self.collector(username)

    def remove_probe(self, probe_id: str) -> None:
        """Delete a probe user; takes effect for new connections after the reload."""
        del self._probes[probe_id]
        self._write_passwords()
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGHUP)

    def _reload_users(self, port: int, creds: Credentials) -> None:
        self._write_passwords()
        if not self.running:
            return
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)  # Mosquitto re-reads password and ACL files
        ctx = self.info.tls_context()
        deadline = time.monotonic() + READY_TIMEOUT
        rc = -1
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                rc = mqtt_connect_check(HOST, port, ctx, creds.username, creds.password)
                if rc == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"broker did not accept {creds.username} after reload (rc={rc})")

    # ---- process --------------------------------------------------------------------------
    def start(self) -> BrokerInfo:
        """Start the broker.  Its ports were free when chosen, but another process (a parallel
        test worker) may bind one first: the first start then takes new free ports, a bounded
        number of times; a restart keeps the ports clients already know."""
        if self.running:
            return self.info
        for attempt in range(_PORT_ATTEMPTS):
            self._spawn()
            try:
                self._wait_ready()
            except _PortTaken:
                if self._started_once or attempt == _PORT_ATTEMPTS - 1:
                    raise
                self.with_settings(probe_port=free_port(), probe_cert_port=free_port(),
                                   collector_port=free_port())
                continue
            break
        self._started_once = True
        return self.info

    def _spawn(self) -> None:
        log = (self.workdir / "mosquitto.stdout").open("ab")
        try:
            self._proc = subprocess.Popen(
                [MOSQUITTO_BIN, "-c", str(self.conf_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in pytest does not hit the broker first
            )
        finally:
            log.close()

    def _wait_ready(self) -> None:
        ctx = self.info.tls_context()
        creds = self.collector()
        deadline = time.monotonic() + READY_TIMEOUT
        last: object = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                out = (self.workdir / "mosquitto.stdout").read_text("utf-8", errors="replace")
                said = out + self.log_text()
                error = _PortTaken if "Address already in use" in said else RuntimeError
                raise error(
                    f"mosquitto exited with {self._proc.returncode}:\n{out}\n{self.log_text()}"
                )
            try:
                last = mqtt_connect_check(
                    HOST, self._settings.collector_port, ctx, creds.username, creds.password
                )
                if last == 0:
                    return
            except OSError as exc:  # not listening yet (ssl.SSLError is an OSError)
                last = exc
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"mosquitto not ready after {READY_TIMEOUT}s ({last!r}):\n{self.log_text()}"
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (Mosquitto saves its persistence file), SIGKILL after ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def kill(self) -> None:
        """Crash the broker (SIGKILL): what was not autosaved is lost."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self) -> BrokerInfo:
        self.stop()
        return self.start()

    def with_settings(self, **changes: object) -> None:
        """Change config values (takes effect at the next start)."""
        self._settings = replace(self._settings, **changes)  # type: ignore[arg-type]
        self.conf_file.write_text(render(self._settings), "utf-8")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
