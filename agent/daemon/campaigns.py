"""The agent's side of operator campaigns: the replay store and the decision on each command.

The command format and its verification are the contract (``agent.wire.commands``); this module
keeps what this probe has accepted (``<state>/campaigns.json``, rewritten atomically) and decides,
for each command that arrives, whether to act on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import EnvelopeError, SignatureError
from agent.state import atomic_write
from agent.wire.commands import (
    CLOCK_SKEW,
    REPLAY_FILE,
    Command,
    CommandError,
    Decision,
    Result,
    format_time,
    parse_command,
    verify_command,
)

log = logging.getLogger(__name__)


class CampaignBook:
    """Accepted commands, persisted in ``<state>/campaigns.json`` (atomic rewrite).

    ``seen`` maps each accepted command_id to its not_after; an entry is forgotten only once
    the command has expired, when check 6 refuses it anyway, so a replay is always caught.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / REPLAY_FILE
        self._seen: dict[str, str] = {}
        self._active: dict[str, Command] = {}
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # A corrupt store must not open the door to replays of everything: keep the file
            # aside for inspection and start empty (expired commands are still refused).
            log.error("campaign store %s unreadable (%s); moved aside", self.path, exc)
            self.path.replace(self.path.with_suffix(".corrupt"))
            return
        seen = data.get("seen", {}) if isinstance(data, dict) else {}
        self._seen = {k: v for k, v in seen.items() if isinstance(k, str) and isinstance(v, str)}
        for item in data.get("active", []) if isinstance(data, dict) else []:
            try:
                cmd = parse_command(json.dumps(item).encode())
            except CommandError as exc:
                log.warning("dropping stored campaign: %s", exc)
                continue
            self._active[cmd.command_id] = cmd

    def _save(self) -> None:
        data = {
            "seen": self._seen,
            "active": [c.to_json() for c in self._active.values()],
        }
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode())

    def seen(self, command_id: str) -> bool:
        return command_id in self._seen

    def active(self, now: datetime) -> list[Command]:
        """Campaigns running now, oldest first (uuid7 ids sort by time)."""
        return [c for _, c in sorted(self._active.items()) if c.active(now)]

    def all(self) -> list[Command]:
        return [c for _, c in sorted(self._active.items())]

    def prune(self, now: datetime) -> None:
        """Forget expired campaigns and replay entries; rewrite the file only on change."""
        stamp = format_time(now)
        seen = {k: v for k, v in self._seen.items() if v > stamp}
        active = {k: c for k, c in self._active.items() if c.not_after > now}
        if seen != self._seen or active.keys() != self._active.keys():
            self._seen, self._active = seen, active
            self._save()

    def accept(self, cmd: Command) -> None:
        self._seen[cmd.command_id] = format_time(cmd.not_after)
        if cmd.kind == "campaign":
            self._active[cmd.command_id] = cmd
        elif cmd.campaign_id is not None:
            self._active.pop(cmd.campaign_id, None)
        self._save()


def handle_command(
    data: bytes,
    *,
    operator_keys: Iterable[Ed25519PublicKey],
    book: CampaignBook,
    probe_id: str,
    cc: str | None,
    now: datetime,
) -> Decision:
    """Verify and, if acceptable, record one command.  Pure apart from the book's file.

    Every refusal is a Decision with a machine reason, never an exception: a probe must not be
    stopped by garbage on its commands topic.
    """
    try:
        cmd = verify_command(data, operator_keys)
    except SignatureError:
        return Decision(Result.REJECTED, "signature")
    except EnvelopeError:
        return Decision(Result.REJECTED, "envelope")
    except CommandError as exc:
        log.warning("signed command refused: %s", exc)
        return Decision(Result.REJECTED, "malformed")
    if not cmd.audience.matches(probe_id, cc):
        return Decision(Result.REJECTED, "audience", cmd)
    if cmd.issued_at > now + CLOCK_SKEW:
        return Decision(Result.REJECTED, "not_yet_issued", cmd)
    if cmd.not_after <= now:
        return Decision(Result.REJECTED, "expired", cmd)
    if book.seen(cmd.command_id):
        return Decision(Result.DUPLICATE, "replayed", cmd)
    book.accept(cmd)
    return Decision(Result.ACCEPTED, "ok", cmd)
