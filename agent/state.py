"""The scheduler's small state file, written atomically, read by ``vigil-agent status``.

The long-running agent and the ``status`` command are separate processes; they share nothing
but this JSON file in the state directory.  The writer replaces it whole (write, fsync, rename),
so a reader sees the previous state or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "agent-state.json"
MAX_RECENT = 20  # recent runs kept in the file: bounded, whatever the uptime


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write, fsync, rename: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One finished job, as shown by ``status``."""

    job: str
    started: str  # RFC 3339 UTC
    finished: str
    measurements: int
    bytes: int
    outcome: str  # "ok", "stopped", "error: <text>"
    verdicts: dict[str, int] = field(default_factory=dict)  # status -> count


@dataclass(frozen=True, slots=True)
class AgentState:
    pid: int
    version: str
    probe_id: str
    started_at: str
    updated_at: str
    phase: str  # "running", "quiet-hours", "over-budget", "stopping", "stopped"
    budget_day: str = ""
    budget_used_bytes: int = 0
    budget_limit_bytes: int = 0
    next_runs: dict[str, str] = field(default_factory=dict)  # job -> RFC 3339 UTC
    running: list[str] = field(default_factory=list)
    recent: list[RunSummary] = field(default_factory=list)
    broker_connected: bool = False
    last_upload: str | None = None
    outbox_pending: int | None = None
    campaigns: list[str] = field(default_factory=list)  # "id (note, until ...)"
    config_loaded_at: str = ""
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentState:
        recent = [RunSummary(**r) for r in data.get("recent", []) if isinstance(r, dict)]
        known = {f for f in cls.__dataclass_fields__}
        fields = {k: v for k, v in data.items() if k in known and k != "recent"}
        return cls(recent=recent, **fields)


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def write_state(state_dir: Path, state: AgentState) -> None:
    # 0644: status may be run by an operator in the vigil group without access to the key.
    data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
    atomic_write(state_path(state_dir), data, mode=0o644)


def read_state(state_dir: Path) -> AgentState | None:
    """The last state written, or None when the agent never ran here (or the file is bad)."""
    try:
        data = json.loads(state_path(state_dir).read_text("utf-8"))
        return AgentState.from_json(data)
    except (OSError, ValueError, TypeError):
        return None
