"""``vigil-agent doctor``: check this probe's setup and say in plain words what to fix.

Checks, in order (a later check is skipped when it depends on a failed one):

  config       the config file parses, every section is valid
  consent      the consent text (docs/consent.md) is accepted: without it nothing runs
  state dir    exists and is writable by this user
  key          the probe key exists, is private (0600) and loads
  clock        the system clock is plausible and, when the helper answers, agrees with it
  broker       the MQTT broker's TLS endpoint answers and its certificate is trusted
  helper       the control helper answers ``whoami`` (signed with the probe key) over https;
               not enrolled, revoked, unreachable and untrusted say what to do (the enrolment
               line to send to the operator), and a plain-http helper is never "ok"
  agent        the long-running agent's last state (running? connected? errors?)
  disk         room left on the state filesystem (warns well before new records are refused)
  delivery     records awaiting a collector's receipt, records a collector refused

The broker check stops after the TLS handshake on purpose: the broker forces the client id to
the probe id, so a full MQTT login from here would kick the running agent off.  Whether the
login works is what ``agent`` reports (from the agent's own connection).

Exit code 1 when anything FAILed; warnings alone exit 0.  Imports only what the checks need
(no runner, outbox or experiments): it must answer fast on a Raspberry Pi Zero.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import click

from agent import identity
from agent.config import AgentConfig
from agent.config import load as load_config
from agent.engine import preflight
from agent.engine.preflight import MIN_PLAUSIBLE
from agent.errors import IdentityError, VigilError
from agent.state import read_state
from agent.uplink.outbox import OutboxLimits, OutboxStats, disk_free, limits_from_config, read_stats

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
MAX_SKEW = 300.0  # seconds; operator commands tolerate 5 minutes


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    level: str
    message: str
    fix: str = ""


def check_clock(now: datetime, reference: datetime | None) -> Check:
    if now < MIN_PLAUSIBLE:
        return Check(
            "clock",
            FAIL,
            f"the system clock says {now:%Y-%m-%d}",
            "enable time sync: sudo timedatectl set-ntp true (a Pi has no battery clock)",
        )
    if reference is not None:
        skew = (now - reference).total_seconds()
        if abs(skew) > MAX_SKEW:
            return Check(
                "clock",
                FAIL,
                f"the clock is {skew:+.0f}s off the control helper's",
                "enable time sync: sudo timedatectl set-ntp true; check with timedatectl",
            )
        return Check("clock", OK, f"within {abs(skew):.0f}s of the control helper")
    synced = Path("/run/systemd/timesync/synchronized").exists()
    return Check("clock", OK, "plausible" + (" and NTP-synchronised" if synced else ""))


def check_state_dir(state_dir: Path) -> Check:
    if not state_dir.exists():
        return Check(
            "state dir",
            FAIL,
            f"{state_dir} does not exist",
            "run `vigil-agent init` (or the installer) to create it",
        )
    if not os.access(state_dir, os.W_OK | os.X_OK):
        return Check(
            "state dir",
            FAIL,
            f"{state_dir} is not writable by this user",
            "run doctor as the service user: sudo -u vigil vigil-agent doctor",
        )
    return Check("state dir", OK, str(state_dir))


def check_key(state_dir: Path) -> tuple[Check, identity.Identity | None]:
    try:
        ident = identity.load(state_dir)
    except IdentityError as exc:
        text = str(exc)
        fix = "run `vigil-agent init`" if "no probe key" in text else text.split(": ")[-1]
        if "readable by others" in text:
            fix = f"chmod 600 {identity.key_path(state_dir)}"
        return Check("key", FAIL, text, fix), None
    return Check("key", OK, f"probe {ident.probe_id}"), ident


def tls_probe(
    host: str, port: int, ctx: ssl.SSLContext, server_name: str | None, timeout: float
) -> str:
    """TLS handshake only; returns the negotiated version.  Raises OSError/ssl.SSLError."""
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name or host) as tls,
    ):
        return tls.version() or "TLS"


def check_consent(config: AgentConfig) -> Check:
    from agent import consent as agreement

    try:
        current = agreement.status(config)
    except (OSError, ValueError) as exc:
        return Check("consent", FAIL, f"the consent text cannot be read: {exc}",
                     "reinstall the agent")
    if current.accepted:
        return Check("consent", OK, current.message)
    return Check(
        "consent",
        FAIL,
        f"{current.message}: the agent measures nothing until it is accepted",
        "read it and accept: vigil-agent consent (researcher deployments: [agent] "
        f'consent_version = "{current.version}")',
    )


_NO_BROKER = Check(
    "broker",
    FAIL,
    "no broker configured: measurements will pile up in the outbox",
    "set [mqtt] host, port, ca_file and password_file (from your collector's operator)",
)


def check_broker(config: AgentConfig, timeout: float) -> Check:
    if not config.section("mqtt"):
        return _NO_BROKER
    from agent.uplink.publisher import settings_from_config

    try:
        base = None if config.path is None else config.path.parent
        s = settings_from_config(config.section("mqtt"), base)
    except VigilError as exc:
        return Check("broker", FAIL, str(exc), "fix the [mqtt] section of the config")
    if s is None:
        return _NO_BROKER
    try:
        ctx = s.tls_context()
        version = tls_probe(s.host, s.port, ctx, getattr(s, "server_hostname", None), timeout)
    except ssl.SSLCertVerificationError as exc:
        return Check(
            "broker",
            FAIL,
            f"{s.host}:{s.port}: certificate not trusted ({exc.verify_message})",
            "set [mqtt] ca_file to the CA file your operator gave you",
        )
    except (OSError, VigilError) as exc:
        return Check(
            "broker",
            FAIL,
            f"{s.host}:{s.port} unreachable: {exc}",
            "check the host and port in [mqtt], and that this network can reach it",
        )
    return Check("broker", OK, f"{s.host}:{s.port} answers ({version}, certificate trusted)")


async def helper_whoami(
    config: AgentConfig, ident: identity.Identity | None, timeout: float
) -> tuple[Check, datetime | None]:
    url = config.control.url
    if url is None:
        return Check(
            "helper",
            FAIL,
            "no control helper configured: nothing can be measured conclusively",
            "set [control] url (from your collector's operator)",
        ), None
    plain = preflight.plain_http_problem(url)
    if plain is not None:  # never asked: the question itself (signed, in clear) reveals a probe
        return Check("helper", FAIL, plain.message, plain.fix), None
    import aiohttp

    from agent.engine.helper_client import ControlClient
    from agent.errors import ConfigError
    from agent.net.tls import make_contexts
    from agent.wire.helper_auth import sign_request

    try:
        tls = make_contexts(config.net.ca_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load CA file {config.net.ca_file}: {exc}") from None
    # The Date header is the clock reference (a second request, unsigned, cheap).
    reference: datetime | None = None
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                url,
                ssl=tls.verify,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as resp,
        ):
            date = resp.headers.get("Date")
            if date:
                reference = parsedate_to_datetime(date)
    except (aiohttp.ClientError, TimeoutError, ValueError, TypeError):
        reference = None

    def sign(method: str, path: str, body: bytes) -> dict[str, str]:
        assert ident is not None
        return dict(sign_request(ident, method, path, body, time.time()))

    client = ControlClient(
        url,
        ssl_context=tls.verify,
        timeout=timeout,
        authenticator=None if ident is None else sign,
    )
    try:
        who = await asyncio.wait_for(client.whoami(), timeout + 1)
    except (VigilError, TimeoutError) as exc:
        line = None
        if ident is not None:
            from agent.identity import enrolment_command

            line = enrolment_command(ident.probe_id, ident.public_key_b64)
        problem = preflight.helper_problem(exc, url, line)
        return Check("helper", FAIL, problem.message, problem.fix), reference
    finally:
        await client.close()
    c = who.client
    if url.lower().startswith("http://"):
        return Check(
            "helper", WARN,
            f"{url} answers, but over plain http (fine on this machine only: a lab or a test)",
            "use the helper's https:// URL in [control] url",
        ), reference
    return Check("helper", OK, f"{url}: you are on {c.asn} {c.network_name} ({c.cc})"), reference


def check_packets(config: AgentConfig) -> Check:
    """The optional packet process (raw capture, censor_trace): never a failure to lack it."""
    from agent.errors import PacketsUnavailable
    from agent.net.rawprobe import client as rawclient

    try:
        settings = rawclient.PacketSettings.from_section(config.section("packets"))
    except VigilError as exc:
        return Check("packets", FAIL, str(exc), "fix the [packets] section of the config")
    try:
        asyncio.run(rawclient.check(settings))
    except PacketsUnavailable as exc:
        return Check("packets", SKIP, f"packet evidence not available (optional): {exc}")
    return Check("packets", OK, "the packet process answers: packet evidence and censor_trace")


def check_agent(state_dir: Path, now: datetime) -> Check:
    from agent.cli.status import _alive

    state = read_state(state_dir)
    if state is None:
        return Check(
            "agent",
            WARN,
            "the long-running agent has not run yet",
            "start it: sudo systemctl enable --now vigil-agent",
        )
    if not _alive(state, now):
        return Check(
            "agent",
            WARN,
            f"the agent is not running (last seen {state.updated_at})",
            "start it: sudo systemctl start vigil-agent; logs: journalctl -u vigil-agent",
        )
    if not state.broker_connected:
        return Check(
            "agent",
            WARN,
            "the agent runs but is not connected to the broker",
            "check the [mqtt] password; logs: journalctl -u vigil-agent",
        )
    if state.last_error:
        return Check("agent", WARN, f"running; last error: {state.last_error}")
    return Check("agent", OK, f"running, connected, last upload {state.last_upload or 'none yet'}")


DISK_WARN_FACTOR = 4  # warn while less than this many times the refusal threshold is free


def check_disk(free: int | None, limits: OutboxLimits) -> Check:
    if free is None:
        return Check("disk", WARN, "cannot tell how much room the state filesystem has")
    mb, floor = free / 1e6, limits.min_free_bytes / 1e6
    fix = ("free space on the state filesystem (old logs: journalctl --vacuum-size=50M); "
           "records already taken still upload")
    if free < limits.min_free_bytes:
        return Check("disk", FAIL, f"state filesystem full ({mb:.1f} MB free < {floor:.0f} MB):"
                     " new measurements are refused", fix)
    if free < DISK_WARN_FACTOR * limits.min_free_bytes:
        return Check("disk", WARN, f"state filesystem nearly full ({mb:.1f} MB free); new "
                     f"measurements will be refused below {floor:.0f} MB", fix)
    return Check("disk", OK, f"{mb:.0f} MB free on the state filesystem")


def check_delivery(stats: OutboxStats | None) -> Check:
    if stats is None:
        return Check("delivery", OK, "nothing measured yet")
    c = stats.counters
    text = (f"{stats.count} in the outbox, {stats.awaiting_receipt} sent and awaiting a "
            f"collector's receipt, {c.get('receipted', 0)} receipted")
    if stats.refused_kept:
        return Check("delivery", WARN, f"{text}; {stats.refused_kept} refused by a collector",
                     "see the reasons: sqlite3 <state dir>/outbox.sqlite3 'SELECT measurement_id,"
                     " reason FROM refused'; tell the collector's operator")
    if stats.awaiting_receipt and not c.get("receipted", 0) and c.get("resent", 0):
        return Check("delivery", WARN, f"{text}; no receipt ever came",
                     "the collector may be older than receipts (set [mqtt] receipts = false) or"
                     " the broker ACL lacks the receipts topic (configs/mosquitto/)")
    return Check("delivery", OK, text)


def run_checks(
    config_file: Path | None,
    timeout: float,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Check]:
    checks: list[Check] = []
    try:
        config = load_config(config_file)
        from agent.cli.config_check import check_all

        check_all(config)
    except VigilError as exc:
        checks.append(Check("config", FAIL, str(exc), "edit the config file and run doctor again"))
        return checks
    checks.append(Check("config", OK, str(config.path or "defaults (no config file)")))
    checks.append(check_consent(config))
    state = check_state_dir(config.state_dir)
    checks.append(state)
    ident = None
    if state.level == OK:
        key, ident = check_key(config.state_dir)
        checks.append(key)
    checks.append(check_broker(config, timeout))
    helper, reference = asyncio.run(helper_whoami(config, ident, timeout))
    checks.append(check_clock(now(), reference))
    checks.append(helper)
    checks.append(check_packets(config))
    if state.level == OK:
        checks.append(check_agent(config.state_dir, now()))
        try:
            limits = limits_from_config(config.section("outbox"))
            stats = read_stats(config.state_dir)
        except VigilError as exc:
            checks.append(Check("delivery", WARN, str(exc)))
        else:
            checks.append(check_disk(disk_free(config.state_dir), limits))
            checks.append(check_delivery(stats))
    return checks


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--timeout", type=float, default=10.0, show_default=True, help="per network check")
def doctor(config_file: Path | None, timeout: float) -> None:
    """Check config, consent, key, clock, broker and helper; say what to fix."""
    checks = run_checks(config_file, timeout)
    for c in checks:
        click.echo(f"{c.level:>4}  {c.name:<10} {c.message}")
        if c.fix and c.level in (FAIL, WARN):
            click.echo(f"      {'':<10} fix: {c.fix}")
    failed = [c for c in checks if c.level == FAIL]
    if failed:
        raise VigilError(f"{len(failed)} problem(s) to fix (see above)")
    click.echo("\nall essential checks passed.")
