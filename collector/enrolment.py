"""Enrolling a probe everywhere it must be known: the broker's password file and the control
helper's probes file (the store is the caller's), the mirror of collector.revocation.

``vigil-collector probes add <id> <key>`` with ``[revocation]`` in collector.toml naming the
files (the same keys revocation uses):

* ``broker_password_file``: the probe's login (username = probe id, a fresh random password)
  is set with ``mosquitto_passwd -b`` on a copy that replaces the file atomically, with the
  old file's mode and owner; the broker is told to reload (SIGHUP to ``broker_pid_file``) and
  accepts the probe at once.  The password is printed once, for the probe's operator.
* ``helper_probes_file``: a ``"revoked": false`` line is appended (unless the probe is already
  there), so the helper accepts the probe's signed requests; it re-reads the file on change.

Each step is idempotent, so a command interrupted half-way can be run again.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from agent.errors import ConfigError
from collector.helper.auth import parse_probes
from collector.revocation import RevocationConfig, reload_broker

MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"


def mosquitto_passwd_binary() -> str:
    """``$VIGIL_MOSQUITTO_PASSWD``, else ``mosquitto_passwd`` on PATH, else Debian's path."""
    return (os.environ.get("VIGIL_MOSQUITTO_PASSWD") or shutil.which("mosquitto_passwd")
            or MOSQUITTO_PASSWD)


def set_password_entry(path: Path, username: str, password: str, passwd_bin: str = "") -> None:
    """Add or replace ``username``'s login in a Mosquitto password file (hashed).

    Works on a copy (same mode and, when allowed, owner) renamed over the original, so the
    broker never reads a half-written file; a failed ``mosquitto_passwd`` leaves it untouched.
    """
    if not username or any(c in username for c in ":\r\n"):
        raise ConfigError(f"invalid broker username {username!r}")
    try:
        st = path.stat()
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read broker password file {path}: {exc.strerror}") from None
    tmp = path.with_name(f".{path.name}.enrol")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 st.st_mode & 0o777)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            if os.geteuid() == 0:
                os.fchown(fh.fileno(), st.st_uid, st.st_gid)
        binary = passwd_bin or mosquitto_passwd_binary()
        try:
            done = subprocess.run([binary, "-b", str(tmp), username, password],
                                  capture_output=True, timeout=60, check=False)
        except OSError as exc:
            raise ConfigError(f"cannot run {binary}: {exc.strerror} "
                              "(apt-get install mosquitto)") from None
        if done.returncode != 0:
            why = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise ConfigError(f"{binary} failed ({done.returncode}): {why}")
        os.chmod(tmp, st.st_mode & 0o777)  # mosquitto_passwd may rewrite the file
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def append_helper_enrolment(path: Path, probe_id: str, public_key: bytes) -> bool:
    """Append an active entry for the probe to the helper's probes file; False if it was
    already there (with this key, or revoked: revocation is sticky in that file)."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read helper probes file {path}: {exc.strerror}") from None
    known = parse_probes(text, str(path))
    if probe_id in known:
        return False
    line = json.dumps({"probe_id": probe_id,
                       "public_key": base64.b64encode(public_key).decode("ascii"),
                       "revoked": False})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        if text and not text.endswith("\n"):
            fh.write("\n")
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return True


def new_broker_password() -> str:
    return secrets.token_urlsafe(24)


def enrol_everywhere(cfg: RevocationConfig, probe_id: str, public_key: bytes,
                     password: str) -> list[str]:
    """Give the probe its broker login and helper entry; one line per step done."""
    done: list[str] = []
    if cfg.broker_password_file:
        set_password_entry(Path(cfg.broker_password_file), probe_id, password)
        done.append(f"broker password file {cfg.broker_password_file}: login set")
        if cfg.broker_pid_file:
            pid = reload_broker(Path(cfg.broker_pid_file))
            done.append(f"broker (pid {pid}) reloaded: the probe can log in")
    if cfg.helper_probes_file:
        added = append_helper_enrolment(Path(cfg.helper_probes_file), probe_id, public_key)
        done.append(f"helper probes file {cfg.helper_probes_file}: "
                    + ("entry appended" if added else "already there"))
    return done
