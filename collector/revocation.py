"""Revoking a probe everywhere it can still act: the broker's password file, the control
helper's probes file, and (by the caller) the store.

``vigil-collector probes revoke <id>`` marks the key revoked in the store (the ingest stops
accepting its measurements at its next key refresh, ``[ingest] key_refresh_s``; a helper
reading keys from the store at once), then, for what ``[revocation]`` in collector.toml names:

* ``broker_password_file``: the probe's line is removed (atomic rewrite, same mode), and the
  broker is told to reload (SIGHUP to the PID in ``broker_pid_file``).  Mosquitto re-reads its
  password files on SIGHUP and disconnects connected clients that are no longer in them, so
  the probe is cut off within a second and cannot log in again.
* ``helper_probes_file``: a ``"revoked": true`` line is appended (revocation is sticky in that
  file: a later line cannot undo it); the helper re-reads the file when it changes.

A probe that logs in with a client certificate (the certificate listener) is not in any
password file: revoking its certificate needs the CA's CRL (Mosquitto ``crlfile``), which
the collector does not hold.  See docs/threat-model.md.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConfigError


@dataclass(frozen=True)
class RevocationConfig:
    broker_password_file: str | None = None  # the probe listeners' password file
    broker_pid_file: str | None = None  # Mosquitto's PID file: SIGHUP after an edit
    helper_probes_file: str | None = None  # the control helper's probes.jsonl (file mode)


def remove_password_entry(path: Path, probe_id: str) -> bool:
    """Remove ``probe_id``'s line from a Mosquitto password file; True if it was there.

    Written to a new file (O_EXCL, the old file's mode) and renamed over the old one, so the
    broker never reads a half-written file.
    """
    try:
        st = path.stat()
        lines = path.read_text("utf-8").splitlines(keepends=True)
    except OSError as exc:
        raise ConfigError(f"cannot read broker password file {path}: {exc.strerror}") from None
    kept = [ln for ln in lines if ln.split(":", 1)[0] != probe_id]
    if len(kept) == len(lines):
        return False
    tmp = path.with_name(f".{path.name}.revoke")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 st.st_mode & 0o777)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        if os.geteuid() == 0:  # keep root:mosquitto 0640, readable by the broker
            os.fchown(fh.fileno(), st.st_uid, st.st_gid)
        fh.writelines(kept)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return True


def reload_broker(pid_file: Path) -> int:
    """SIGHUP the broker whose PID ``pid_file`` holds; returns that PID."""
    try:
        text = pid_file.read_text("ascii").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read broker PID file {pid_file}: {exc.strerror}") from None
    if not text.isdigit() or int(text) <= 1:
        raise ConfigError(f"broker PID file {pid_file} does not hold a PID: {text[:32]!r}")
    pid = int(text)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ConfigError(f"no broker process {pid} (from {pid_file})") from None
    return pid


def append_helper_revocation(path: Path, probe_id: str, public_key: bytes) -> None:
    """Append a revoked entry for the probe to the helper's probes file (sticky there)."""
    line = json.dumps({"probe_id": probe_id,
                       "public_key": base64.b64encode(public_key).decode("ascii"),
                       "revoked": True})
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open helper probes file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def revoke_everywhere(cfg: RevocationConfig, probe_id: str, public_key: bytes) -> list[str]:
    """Apply the revocation outside the store; returns one line per step done."""
    done: list[str] = []
    if cfg.broker_password_file:
        removed = remove_password_entry(Path(cfg.broker_password_file), probe_id)
        done.append(f"broker password file {cfg.broker_password_file}: "
                    + ("entry removed" if removed else "no entry"))
        if cfg.broker_pid_file:
            pid = reload_broker(Path(cfg.broker_pid_file))
            done.append(f"broker (pid {pid}) reloaded: the probe is disconnected")
    if cfg.helper_probes_file:
        append_helper_revocation(Path(cfg.helper_probes_file), probe_id, public_key)
        done.append(f"helper probes file {cfg.helper_probes_file}: revoked entry appended")
    return done
