"""``vigil-agent status``: what the running agent did recently and what it will do next.

Reads two things the agent leaves in its state directory, without disturbing it: the state
file (agent.state, rewritten atomically by the scheduler) and the outbox statistics
(agent.uplink.outbox.read_stats, read-only).  Works whether the agent runs or not; says which.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import click

from agent.config import load as load_config
from agent.errors import OutboxError
from agent.state import AgentState, read_state
from agent.uplink.outbox import read_stats

STALE_AFTER = 120.0  # seconds without a state update: the agent is probably not running


def _ago(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "never"
    try:
        t = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    secs = (now - t).total_seconds()
    future = secs < 0
    secs = abs(secs)
    if secs < 90:
        text = f"{secs:.0f}s"
    elif secs < 5400:
        text = f"{secs / 60:.0f} min"
    elif secs < 172800:
        text = f"{secs / 3600:.1f} h"
    else:
        text = f"{secs / 86400:.1f} days"
    return f"in {text}" if future else f"{text} ago"


def _alive(state: AgentState, now: datetime) -> bool:
    if state.phase == "stopped":
        return False
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by the service user
    updated = datetime.fromisoformat(state.updated_at.replace("Z", "+00:00"))
    return (now - updated).total_seconds() < STALE_AFTER


def render(state: AgentState | None, outbox: dict[str, object] | None, now: datetime) -> str:
    lines: list[str] = []
    if state is None:
        lines.append("agent:     has not run here yet (no state file)")
    else:
        running = _alive(state, now)
        lines.append(
            f"agent:     {'running' if running else 'NOT running'} (pid {state.pid}, "
            f"version {state.version}, {state.phase}), last update {_ago(state.updated_at, now)}"
        )
        lines.append(f"probe id:  {state.probe_id}")
        lines.append(
            f"broker:    {'connected' if state.broker_connected and running else 'not connected'}"
            f", last upload {_ago(state.last_upload, now)}"
        )
        limit = state.budget_limit_bytes
        used_mb = state.budget_used_bytes / 1e6
        budget = (
            f"{used_mb:.1f} of {limit / 1e6:.0f} MB" if limit else f"{used_mb:.1f} MB (no limit)"
        )
        lines.append(f"data today: {budget} ({state.budget_day})")
        if state.running:
            lines.append(f"running:   {', '.join(state.running)}")
        if state.next_runs:
            lines.append("next runs:")
            for job, when in sorted(state.next_runs.items(), key=lambda kv: kv[1]):
                lines.append(f"  {job:<40} {when} ({_ago(when, now)})")
        if state.campaigns:
            lines.append("campaigns:")
            lines += [f"  {c}" for c in state.campaigns]
        if state.recent:
            lines.append("recent runs:")
            for r in reversed(state.recent[-10:]):
                verdicts = ", ".join(f"{k} {v}" for k, v in sorted(r.verdicts.items()))
                lines.append(
                    f"  {r.finished} {r.job:<32} {r.measurements:>4} measured"
                    f"{' (' + verdicts + ')' if verdicts else ''}: {r.outcome}"
                )
        if state.last_error:
            lines.append(f"last error: {state.last_error}")
    if outbox is None:
        lines.append("outbox:    empty (no outbox yet)")
    else:
        oldest = outbox.get("oldest_created_at")
        age = ""
        if isinstance(oldest, int | float):
            age = ", oldest " + _ago(datetime.fromtimestamp(oldest, UTC).isoformat(), now)
        lines.append(
            f"outbox:    {outbox.get('count', 0)} waiting ({int(outbox.get('bytes', 0)) / 1e6:.1f}"  # type: ignore[call-overload]
            f" MB){age}; dropped when full: {outbox.get('dropped', 0)}"
        )
        lines.append(delivery_line(outbox))
    return "\n".join(lines)


def delivery_line(outbox: dict[str, object]) -> str:
    """Receipts and the state disk, from the outbox's statistics (OutboxStats.to_json)."""

    def n(key: str) -> int:
        value = outbox.get(key, 0)
        return int(value) if isinstance(value, int | float) else 0

    free = outbox.get("disk_free")
    disk = f"{free / 1e6:.1f} MB free" if isinstance(free, int | float) else "free space unknown"
    return (
        f"delivery:  {n('awaiting_receipt')} sent, awaiting a collector's receipt; "
        f"{n('receipted')} receipted, {n('resent')} sent again; "
        f"{n('collector_refused')} refused by a collector ({n('refused_kept')} kept); "
        f"disk {disk}, {n('disk_full_refused')} measurements refused for a full disk"
    )


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(config_file: Path | None, state_dir: Path | None, as_json: bool) -> None:
    """Show what the agent did recently, its outbox, uploads and next runs."""
    directory = state_dir or load_config(config_file).state_dir
    state = read_state(directory)
    try:
        stats = read_stats(directory)
    except OutboxError as exc:
        stats = None
        click.echo(f"warning: {exc}", err=True)
    outbox = stats.to_json() if stats is not None else None
    if as_json:
        click.echo(
            json.dumps(
                {"state": None if state is None else state.to_json(), "outbox": outbox},
                indent=1,
                sort_keys=True,
            )
        )
        return
    click.echo(render(state, outbox, datetime.now(UTC)))
