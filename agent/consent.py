"""Informed consent: nothing is measured until someone accepted the current consent text.

The text (docs/consent.md, packaged as ``agent/data/consent.md``) says what the probe measures,
what is published and what never is, the known risks and the data policy.  Its first lines
carry a version (``Consent text version: N``); changing what the text promises means a new
version, and everyone is asked again.

Who accepts:

* the volunteer, on a terminal (the first ``vigil-agent run`` or ``vigil-agent consent`` shows
  the text and asks for ``yes``) or by ``vigil-agent consent --accept`` (scripted installs).
  The acceptance is written to ``<state dir>/consent.json`` with the version, the text's
  SHA-256, the time and how it was given;
* for researcher deployments, the operator: ``[agent] consent_version = "N"`` in the config.

A run that is not attended (no terminal: systemd, cron, scripts) and finds no acceptance of
the current version refuses with :class:`ConsentRequired` (exit code 2, which the systemd unit
does not restart) and says how to accept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ConsentRequired

if TYPE_CHECKING:
    from agent.config import AgentConfig

RECORD_FILE = "consent.json"
_VERSION_RE = re.compile(r"^Consent text version: (\S+)", re.MULTILINE)
HOW_TO_ACCEPT = (
    "read it with `vigil-agent consent` (on a terminal it asks), or accept it with "
    "`vigil-agent consent --accept`; researcher deployments set [agent] consent_version = "
    '"{version}" in the config'
)


@dataclass(frozen=True, slots=True)
class ConsentText:
    version: str
    text: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Acceptance:
    version: str
    sha256: str
    accepted_at: str  # UTC, ISO 8601
    how: str  # "prompt" (typed yes on a terminal) or "command" (consent --accept)


@dataclass(frozen=True, slots=True)
class ConsentStatus:
    accepted: bool
    version: str  # the current text's version
    message: str  # one line: who accepted which version, or what is missing


def parse_text(text: str) -> ConsentText:
    match = _VERSION_RE.search(text)
    if match is None:
        raise ValueError("the consent text has no 'Consent text version:' line")
    return ConsentText(
        version=match.group(1),
        text=text,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def load_text() -> ConsentText:
    """The packaged consent text (docs/consent.md)."""
    text = resources.files("agent").joinpath("data", "consent.md").read_text("utf-8")
    return parse_text(text)


def record_path(state_dir: Path) -> Path:
    return state_dir / RECORD_FILE


def read_acceptance(state_dir: Path) -> Acceptance | None:
    """The recorded acceptance; None when there is none or it cannot be read as one."""
    try:
        data = json.loads(record_path(state_dir).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    fields = ("version", "sha256", "accepted_at", "how")
    if not all(isinstance(data.get(k), str) for k in fields):
        return None
    return Acceptance(*(str(data[k]) for k in fields))


def accept(state_dir: Path, text: ConsentText, how: str,
           now: datetime | None = None) -> Acceptance:
    """Record that ``text`` was accepted (written atomically, readable by the service user)."""
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    acceptance = Acceptance(version=text.version, sha256=text.sha256, accepted_at=when, how=how)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = record_path(state_dir)
    tmp = path.with_name(f".{RECORD_FILE}.{secrets.token_hex(4)}")
    body = json.dumps(
        {"version": acceptance.version, "sha256": acceptance.sha256,
         "accepted_at": acceptance.accepted_at, "how": acceptance.how},
        indent=1,
    ) + "\n"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return acceptance


def withdraw(state_dir: Path) -> bool:
    """Remove the recorded acceptance; True when there was one."""
    try:
        record_path(state_dir).unlink()
    except FileNotFoundError:
        return False
    return True


def status(config: AgentConfig, text: ConsentText | None = None) -> ConsentStatus:
    """Whether the current text is accepted, by the operator's config or the volunteer."""
    text = text or load_text()
    if config.consent_version is not None:
        if config.consent_version == text.version:
            return ConsentStatus(True, text.version,
                                 f"version {text.version} accepted by the operator's config")
        return ConsentStatus(
            False, text.version,
            f"the config accepts consent version {config.consent_version}, but the text is now "
            f"version {text.version}: read it (`vigil-agent consent`) and update "
            "[agent] consent_version",
        )
    found = read_acceptance(config.state_dir)
    if found is None:
        where = record_path(config.state_dir)
        what = "unreadable" if where.exists() else "not accepted yet"
        return ConsentStatus(False, text.version, f"consent text version {text.version} {what}")
    if found.version != text.version:
        return ConsentStatus(
            False, text.version,
            f"you accepted consent version {found.version}; the text is now version "
            f"{text.version} and must be read again",
        )
    return ConsentStatus(True, text.version,
                         f"version {found.version} accepted on {found.accepted_at}")


def ask(text: ConsentText, echo: Callable[[str], None], prompt: Callable[[str], str]) -> bool:
    """Show the text and ask; True only for an explicit yes."""
    echo(text.text)
    answer = prompt('Type "yes" to accept and start measuring, anything else to stop')
    return answer.strip().lower() == "yes"


def require(
    config: AgentConfig,
    *,
    interactive: bool,
    echo: Callable[[str], None],
    prompt: Callable[[str], str],
) -> ConsentStatus:
    """Return when the current text is accepted; ask on a terminal; else ConsentRequired."""
    text = load_text()
    current = status(config, text)
    if current.accepted:
        return current
    if interactive and config.consent_version is None:
        if ask(text, echo, prompt):
            found = accept(config.state_dir, text, "prompt")
            return ConsentStatus(True, text.version,
                                 f"version {found.version} accepted on {found.accepted_at}")
        raise ConsentRequired("consent not given: nothing was measured")
    raise ConsentRequired(
        f"{current.message}: the probe measures nothing until the consent text is accepted; "
        + HOW_TO_ACCEPT.format(version=text.version)
    )
