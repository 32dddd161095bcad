"""Render Vigil's Mosquitto configuration from ``configs/mosquitto/`` into a directory.

Used by operators (``python -m scripts.mosquitto_conf --help``), by ``make run`` and by the
test fixture (lab/broker.py), so the broker under test runs the shipped config.

The template uses ``${name}`` placeholders (string.Template); rendering fails loudly when a
placeholder has no value, so a half-filled config can never be started.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import string
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.wire.topics import PROBE_MOUNT

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "mosquitto"
TEMPLATE = CONFIG_DIR / "vigil.conf.in"
PROBES_ACL = CONFIG_DIR / "probes.acl"
COLLECTORS_ACL = CONFIG_DIR / "collectors.acl"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"

# Production defaults; see configs/mosquitto/README.md for the sizing.
DEFAULT_MESSAGE_SIZE_LIMIT = 1_048_576  # = agent.wire.envelope.MAX_ENVELOPE_BYTES
DEFAULT_MAX_QUEUED_MESSAGES = 1_000_000
DEFAULT_MAX_QUEUED_BYTES = 2_147_483_648  # 2 GiB per collector session
DEFAULT_MAX_INFLIGHT = 100
DEFAULT_AUTOSAVE_INTERVAL = 60
DEFAULT_CLIENT_EXPIRATION = "30d"


@dataclass(frozen=True)
class BrokerSettings:
    """Every placeholder of vigil.conf.in.  Paths must be absolute."""

    data_dir: Path
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    probe_password_file: Path
    collector_password_file: Path
    probe_acl_file: Path
    collector_acl_file: Path
    log_dest: str  # "file /path/to/log", "stderr" or "syslog"
    probe_port: int = 8883
    probe_cert_port: int = 8884
    collector_port: int = 8885
    probe_bind: str = "0.0.0.0"
    collector_bind: str = "127.0.0.1"
    user: str = "mosquitto"
    autosave_interval: int = DEFAULT_AUTOSAVE_INTERVAL
    persistent_client_expiration: str = DEFAULT_CLIENT_EXPIRATION
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    max_inflight_messages: int = DEFAULT_MAX_INFLIGHT
    message_size_limit: int = DEFAULT_MESSAGE_SIZE_LIMIT
    # The probe listeners' mount_point; the shipped ACL files are written for this value.
    probe_mount: str = PROBE_MOUNT

    def values(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def render(settings: BrokerSettings, template: Path = TEMPLATE) -> str:
    """The config text; raises KeyError naming a placeholder without a value."""
    return string.Template(template.read_text("utf-8")).substitute(settings.values())


def write_password_file(path: Path, users: Mapping[str, str], passwd_bin: str = "") -> None:
    """Write a Mosquitto password file (hashed by ``mosquitto_passwd -U``), mode 0600.

    Usernames cannot contain ':' (the file's separator) nor newlines.
    """
    for name in users:
        if not name or ":" in name or "\n" in name or "\r" in name:
            raise ValueError(f"invalid MQTT username {name!r}")
    binary = passwd_bin or shutil.which("mosquitto_passwd") or MOSQUITTO_PASSWD
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for name, password in users.items():
            fh.write(f"{name}:{password}\n")
    # mosquitto_passwd -U fails on an empty file; an empty password file is valid as it is
    # (nobody can log in on that listener yet).
    try:
        if users:
            subprocess.run([binary, "-U", str(tmp)], check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        tmp.unlink(missing_ok=True)
        why = (exc.stderr or exc.stdout or b"").decode(errors="replace").strip()
        raise RuntimeError(f"mosquitto_passwd -U failed ({exc.returncode}): {why}") from None
    os.replace(tmp, path)


def install_acls(dest: Path) -> tuple[Path, Path]:
    """Copy the shipped ACL files into ``dest``; returns (probes.acl, collectors.acl)."""
    probes = dest / PROBES_ACL.name
    collectors = dest / COLLECTORS_ACL.name
    shutil.copyfile(PROBES_ACL, probes)
    shutil.copyfile(COLLECTORS_ACL, collectors)
    return probes, collectors


def _parse_users(items: Iterable[str]) -> dict[str, str]:
    users: dict[str, str] = {}
    for item in items:
        name, sep, password = item.partition("=")
        if not sep:
            raise SystemExit(f"--user/--collector expects NAME=PASSWORD, got {item!r}")
        users[name] = password
    return users


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--dir", type=Path, required=True, help="output directory (created)")
    p.add_argument("--ca-file", type=Path, required=True)
    p.add_argument("--cert-file", type=Path, required=True, help="server certificate chain")
    p.add_argument("--key-file", type=Path, required=True, help="server private key")
    p.add_argument("--probe-port", type=int, default=8883)
    p.add_argument("--probe-cert-port", type=int, default=8884)
    p.add_argument("--collector-port", type=int, default=8885)
    p.add_argument("--probe-bind", default="0.0.0.0")
    p.add_argument("--collector-bind", default="127.0.0.1")
    p.add_argument("--user", dest="run_as", default=None, help="drop root to this user")
    p.add_argument("--probe", action="append", default=[], metavar="ID=PASSWORD")
    p.add_argument("--collector", action="append", default=[], metavar="NAME=PASSWORD")
    p.add_argument("--message-size-limit", type=int, default=DEFAULT_MESSAGE_SIZE_LIMIT)
    p.add_argument(
        "--data-dir", type=Path, default=None,
        help="persistence directory (default: DIR/data; systemd: /var/lib/vigil-broker)",
    )
    p.add_argument(
        "--log-dest", default=None,
        help="Mosquitto log_dest (default: file DIR/mosquitto.log; systemd: stderr)",
    )
    p.add_argument(
        "--keep-users", action="store_true",
        help="leave existing password files as they are (an upgrade keeps enrolled probes); "
             "only missing ones are written from --probe/--collector",
    )
    p.add_argument(
        "--pid-file", type=Path, default=None,
        help="Mosquitto writes its PID here (what `probes add|revoke` signal to reload it)",
    )
    p.add_argument(
        "--password-group", default=None,
        help="group that may read the password files (the broker's, when it drops root): "
             "mode 0640 root:GROUP",
    )
    args = p.parse_args(argv)

    out: Path = args.dir.resolve()
    data_dir: Path = args.data_dir.resolve() if args.data_dir else out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    probes_acl, collectors_acl = install_acls(out)
    probe_pw, collector_pw = out / "probes.passwd", out / "collectors.passwd"
    for path, users in ((probe_pw, args.probe), (collector_pw, args.collector)):
        if not (args.keep_users and path.exists()):
            write_password_file(path, _parse_users(users))
        if args.password_group:
            shutil.chown(path, group=args.password_group)
            path.chmod(0o640)
    settings = BrokerSettings(
        data_dir=data_dir,
        ca_file=args.ca_file.resolve(),
        server_cert_file=args.cert_file.resolve(),
        server_key_file=args.key_file.resolve(),
        probe_password_file=probe_pw,
        collector_password_file=collector_pw,
        probe_acl_file=probes_acl,
        collector_acl_file=collectors_acl,
        log_dest=args.log_dest or f"file {out / 'mosquitto.log'}",
        probe_port=args.probe_port,
        probe_cert_port=args.probe_cert_port,
        collector_port=args.collector_port,
        probe_bind=args.probe_bind,
        collector_bind=args.collector_bind,
        user=args.run_as or ("mosquitto" if os.geteuid() == 0 else getpass.getuser()),
        message_size_limit=args.message_size_limit,
    )
    conf = out / "mosquitto.conf"
    text = render(settings)
    if args.pid_file is not None:
        text += ("\n# PID for reloads (SIGHUP) after enrolment or revocation\n"
                 f"pid_file {args.pid_file}\n")
    tmp = conf.with_name(conf.name + ".tmp")
    tmp.write_text(text, "utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, conf)
    print(conf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
