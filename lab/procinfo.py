"""Process identity that survives PID reuse: (pid, start time in clock ticks since boot)."""

from __future__ import annotations

import os


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat, or None when the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int, started: int | None) -> bool:
    """True when ``pid`` runs and is the same process that was recorded (not a reused PID)."""
    if pid <= 0:
        return False
    now = start_time(pid)
    if now is None:
        return False
    if _is_zombie(pid):
        return False
    return started is None or now == started


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return True
    rest = raw[raw.rfind(b")") + 2 :].split()
    return bool(rest) and rest[0] in (b"Z", b"X")


def me() -> tuple[int, int | None]:
    pid = os.getpid()
    return pid, start_time(pid)
