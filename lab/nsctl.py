"""Namespaces, state directories and teardown: how a lab run owns (and gives back) the machine.

Ownership: every run gets a unique prefix ``vl<8 hex>``.  Its state directory
``/run/vigil-lab/<prefix>/`` is created with ``mkdir`` (atomic: two runs can never get the
same prefix) BEFORE any namespace exists, and records everything the run creates (namespaces,
/etc/netns entries, processes as (pid, start time)).  Nothing is ever created in the root
namespace: the veth pairs are made directly inside the lab's namespaces.

Teardown is idempotent and tolerant: it kills only processes that are inside the run's own
namespaces or that it recorded (and whose start time still matches), deletes the namespaces
(which destroys their links, addresses, nft tables and qdiscs), the /etc/netns entries and
the state directory.  A run whose owner died is "stale" and any later run may reap it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import procinfo

STATE_ROOT = Path(os.environ.get("VIGIL_LAB_STATE_DIR", "/run/vigil-lab"))
ETC_NETNS = Path("/etc/netns")
NETNS_RUN = Path("/run/netns")
PREFIX_RE = re.compile(r"^vl[0-9a-f]{8}$")
# the path lab (pathlab.py) adds hopN, detour and server
NS_RE = re.compile(r"^(vl[0-9a-f]{8})-(probe|isp|inet|hop[0-9]{1,2}|detour|server)$")
ROLES = ("probe", "isp", "inet")
CMD_TIMEOUT_S = 20.0
ORPHAN_MIN_AGE_S = 120.0  # a namespace without state younger than this may be mid-creation


class LabError(RuntimeError):
    """The lab could not be built or torn down; the message says what failed."""


def run(argv: Sequence[str], *, input_text: str | None = None, timeout: float = CMD_TIMEOUT_S,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), input=input_text, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ns_name(prefix: str, role: str) -> str:
    return f"{prefix}-{role}"


def list_netns() -> list[str]:
    proc = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def ns_pids(ns: str) -> list[int]:
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in proc.stdout.split() if x.isdigit()]


@dataclass
class State:
    """What a run owns; saved (atomically) after every change."""

    prefix: str
    directory: Path
    data: dict[str, Any]

    @classmethod
    def create(cls, owner: tuple[int, int | None] | None, deadline: float,
               root: Path = STATE_ROOT, attempts: int = 20) -> State:
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
        existing = set(list_netns())
        for _ in range(attempts):
            prefix = "vl" + secrets.token_hex(4)
            if any(ns_name(prefix, r) in existing for r in ROLES):
                continue
            directory = root / prefix
            try:
                directory.mkdir(mode=0o755)
            except FileExistsError:
                continue
            state = cls(prefix, directory, {
                "prefix": prefix, "created": time.time(), "deadline": deadline,
                "owner": None if owner is None else list(owner),
                "namespaces": [], "etc_netns": [], "processes": {}, "ready": False,
            })
            state.save()
            return state
        raise LabError(f"could not allocate a unique lab prefix in {attempts} attempts")

    @classmethod
    def load(cls, prefix: str, root: Path = STATE_ROOT) -> State:
        if not PREFIX_RE.match(prefix):
            raise LabError(f"not a lab prefix: {prefix!r} (expected vl + 8 hex digits)")
        directory = root / prefix
        try:
            data = json.loads((directory / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {"prefix": prefix, "namespaces": [ns_name(prefix, r) for r in ROLES],
                    "etc_netns": [ns_name(prefix, r) for r in ROLES], "processes": {}}
        return cls(prefix, directory, data)

    def save(self) -> None:
        tmp = self.directory / "state.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.directory / "state.json")

    def record(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def add_process(self, name: str, pid: int) -> None:
        self.data["processes"][name] = [pid, procinfo.start_time(pid)]
        self.save()

    @property
    def owner(self) -> tuple[int, int | None] | None:
        owner = self.data.get("owner")
        return None if not owner else (int(owner[0]), owner[1])

    def is_stale(self) -> bool:
        """Owner gone (attached run), or deadline passed / every process dead (detached)."""
        if self.owner is not None:
            return not procinfo.alive(*self.owner)
        if time.time() > float(self.data.get("deadline", 0)):
            return True
        procs = self.data.get("processes", {})
        if not self.data.get("ready"):
            return time.time() - float(self.data.get("created", 0)) > ORPHAN_MIN_AGE_S
        return not any(procinfo.alive(p[0], p[1]) for p in procs.values())


@contextlib.contextmanager
def locked(directory: Path, blocking: bool = True) -> Iterator[bool]:
    """An flock on the run's directory, so two reapers never tear one run down at once."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def kill_pids(pids: Sequence[tuple[int, int | None]], grace_s: float = 3.0) -> None:
    """SIGTERM, wait (bounded), SIGKILL: only the given processes, identified with start time."""
    targets = [(p, s) for p, s in pids if procinfo.alive(p, s)]
    for pid, _ in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(procinfo.alive(p, s) for p, s in targets):
        time.sleep(0.05)
    for pid, started in targets:
        if procinfo.alive(pid, started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(procinfo.alive(p, s) for p, s in targets):
        time.sleep(0.05)
    for pid, _ in targets:  # reap our own children so no zombie remains
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def teardown(prefix: str, root: Path = STATE_ROOT) -> list[str]:
    """Remove everything of run ``prefix``; safe to call any number of times.  Returns the
    problems met (empty when everything is gone)."""
    if not PREFIX_RE.match(prefix):
        raise LabError(f"not a lab prefix: {prefix!r}")
    state = State.load(prefix, root)
    problems: list[str] = []
    namespaces = sorted(set(state.data.get("namespaces", [])) |
                        {ns_name(prefix, r) for r in ROLES})
    present = set(list_netns())
    # 1. processes: the recorded ones, then anything still inside our namespaces
    recorded = [(int(p[0]), p[1]) for p in state.data.get("processes", {}).values()]
    kill_pids(recorded)
    for _ in range(3):  # bounded: a process could fork while we kill
        inside = [(pid, procinfo.start_time(pid)) for ns in namespaces if ns in present
                  for pid in ns_pids(ns)]
        if not inside:
            break
        kill_pids(inside)
    # 2. namespaces (their veths, addresses, routes, nft tables and qdiscs go with them)
    for ns in namespaces:
        if ns in present:
            proc = run(["ip", "netns", "delete", ns], check=False)
            if proc.returncode != 0 and ns in set(list_netns()):
                problems.append(f"netns {ns}: {proc.stderr.strip()}")
    # 3. files: /etc/netns overlays and the state directory
    for ns in sorted(set(state.data.get("etc_netns", [])) | set(namespaces)):
        d = ETC_NETNS / ns
        if NS_RE.match(ns) and d.exists():
            shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(OSError):
        ETC_NETNS.rmdir()  # only when empty: other runs may be using it
    if state.directory.exists():
        shutil.rmtree(state.directory, ignore_errors=True)
    if state.directory.exists():
        problems.append(f"could not remove {state.directory}")
    return problems


def stale_prefixes(root: Path = STATE_ROOT) -> list[str]:
    """Runs whose owner is gone, plus namespaces/overlays of ours that no state describes."""
    out: set[str] = set()
    known: set[str] = set()
    if root.exists():
        for d in root.iterdir():
            if not PREFIX_RE.match(d.name):
                continue
            known.add(d.name)
            if State.load(d.name, root).is_stale():
                out.add(d.name)
    for name in list_netns() + ([p.name for p in ETC_NETNS.iterdir()] if ETC_NETNS.exists()
                                else []):
        m = NS_RE.match(name)
        if m and m.group(1) not in known:
            path = NETNS_RUN / name if (NETNS_RUN / name).exists() else ETC_NETNS / name
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > ORPHAN_MIN_AGE_S:
                    out.add(m.group(1))
    return sorted(out)


def reap_stale(root: Path = STATE_ROOT) -> list[str]:
    """Tear down every stale run (skipping those another process is reaping right now)."""
    reaped = []
    for prefix in stale_prefixes(root):
        directory = root / prefix
        if directory.exists():
            with locked(directory, blocking=False) as got:
                if not got:
                    continue
                if not State.load(prefix, root).is_stale():
                    continue
                teardown(prefix, root)
        else:
            teardown(prefix, root)
        reaped.append(prefix)
    return reaped
