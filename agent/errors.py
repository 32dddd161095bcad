"""Exception hierarchy of the Vigil agent.

Censorship is *data*, never an exception: a reset connection is recorded as the failure string
``connection_reset`` in the measurement.  Exceptions are for the cases where Vigil itself could
not do its job, and they say whose fault it was::

    VigilError
    ├── UsageError            the caller's fault: bad flag, bad config file  (exit code 2)
    │   ├── ConfigError
    │   ├── ListError         a test list that cannot be read at all (bad rows are only warnings)
    │   └── ConsentRequired   nobody has accepted the consent text (docs/consent.md) yet
    ├── WireError             bytes from elsewhere that are not what the contract says
    │   ├── EnvelopeError     malformed DSSE envelope
    │   ├── SignatureError    signature does not verify
    │   ├── SchemaError       record does not match the JSON Schema
    │   └── ReceiptError      a delivery receipt that is not what the contract says
    ├── IdentityError         probe key missing, unreadable or with unsafe permissions
    ├── OutboxError           the durable outbox cannot be written (disk full, corrupt db)
    │   └── StateDiskFull     the state filesystem is (nearly) full: new records refused
    ├── ControlError          the control helper could not be asked (measurement → inconclusive)
    ├── PublishError          the broker refused or did not acknowledge a publish
    └── BudgetExceeded        runtime or data budget used up: stop scheduling new work
"""

from __future__ import annotations

import re
from pathlib import Path


class VigilError(Exception):
    """Base of every error Vigil raises on purpose."""


class UsageError(VigilError):
    """The user's input is wrong (exit code 2)."""


class ConfigError(UsageError):
    """The configuration file or flags are invalid."""


class ListError(UsageError):
    """A test list file cannot be read at all."""


class ConsentRequired(UsageError):
    """The volunteer (or the operator's config) has not accepted the current consent text."""


class WireError(VigilError):
    """Received bytes violate the wire contract."""


class EnvelopeError(WireError):
    """Malformed DSSE envelope."""


class SignatureError(WireError):
    """Signature does not verify over the received bytes."""


class SchemaError(WireError):
    """A measurement record does not validate against the JSON Schema."""


class ReceiptError(WireError):
    """A delivery receipt from the collector does not follow the receipt contract."""


class IdentityError(VigilError):
    """The probe's key is missing, unreadable or unsafe."""


class OutboxError(VigilError):
    """The durable outbox cannot be written or read."""


class StateDiskFull(OutboxError):
    """The state filesystem is (nearly) full: new records are refused, old ones still drain."""


class ControlError(VigilError):
    """The control helper could not be asked or answered garbage."""


class PublishError(VigilError):
    """The broker refused a publish or did not acknowledge it."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class BudgetExceeded(VigilError):
    """A runtime or data budget is exhausted."""


def locate(path: Path, message: str) -> str:
    """``path:line`` of the section or key a ConfigError message names (``[name]`` or
    ``unknown key(s) in [section]: key``), else just ``path``."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return str(path)
    section = re.search(r"\[([A-Za-z0-9_.-]+)\]", message)
    key = re.search(r"unknown keys? ?(?:\(s\))? in \[[^\]]+\]:? ([A-Za-z0-9_-]+)", message)
    current = ""
    for number, line in enumerate(lines, 1):
        head = re.match(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
        if head:
            current = head.group(1)
            if section and key is None and current == section.group(1):
                return f"{path}:{number}"
            continue
        if (key and section and current == section.group(1)
                and re.match(rf"\s*{re.escape(key.group(1))}\s*=", line)):
            return f"{path}:{number}"
    return str(path)


class PacketsUnavailable(VigilError):
    """Raw packets cannot be captured or sent here (no packet process, no capability, no scapy);
    recorded as "not available", never a failure of the measurement."""
