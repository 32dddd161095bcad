"""Exception hierarchy of the Vigil agent.

Censorship is *data*, never an exception: a reset connection is recorded as the failure string
``connection_reset`` in the measurement.  Exceptions are for the cases where Vigil itself could
not do its job, and they say whose fault it was::

    VigilError
    ├── UsageError            the caller's fault: bad flag, bad config file  (exit code 2)
    │   ├── ConfigError
    │   └── ListError         a test list that cannot be read at all (bad rows are only warnings)
    ├── WireError             bytes from elsewhere that are not what the contract says
    │   ├── EnvelopeError     malformed DSSE envelope
    │   ├── SignatureError    signature does not verify
    │   └── SchemaError       record does not match the JSON Schema
    ├── IdentityError         probe key missing, unreadable or with unsafe permissions
    ├── OutboxError           the durable outbox cannot be written (disk full, corrupt db)
    ├── ControlError          the control helper could not be asked (measurement → inconclusive)
    ├── PublishError          the broker refused or did not acknowledge a publish
    └── BudgetExceeded        runtime or data budget used up: stop scheduling new work
"""

from __future__ import annotations


class VigilError(Exception):
    """Base of every error Vigil raises on purpose."""


class UsageError(VigilError):
    """The user's input is wrong (exit code 2)."""


class ConfigError(UsageError):
    """The configuration file or flags are invalid."""


class ListError(UsageError):
    """A test list file cannot be read at all."""


class WireError(VigilError):
    """Received bytes violate the wire contract."""


class EnvelopeError(WireError):
    """Malformed DSSE envelope."""


class SignatureError(WireError):
    """Signature does not verify over the received bytes."""


class SchemaError(WireError):
    """A measurement record does not validate against the JSON Schema."""


class IdentityError(VigilError):
    """The probe's key is missing, unreadable or unsafe."""


class OutboxError(VigilError):
    """The durable outbox cannot be written or read."""


class ControlError(VigilError):
    """The control helper could not be asked or answered garbage."""


class PublishError(VigilError):
    """The broker refused a publish or did not acknowledge it."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class BudgetExceeded(VigilError):
    """A runtime or data budget is exhausted."""


class PacketsUnavailable(VigilError):
    """Raw packets cannot be captured or sent here (no packet process, no capability, no scapy);
    recorded as "not available", never a failure of the measurement."""
