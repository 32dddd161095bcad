"""Delivery receipts: the collector tells a probe which of its records it has committed.

A PUBACK only says "the broker has it in memory": Mosquitto saves its queues every
``autosave_interval`` and drops acknowledged messages beyond ``max_queued_messages``.  So a
record leaves a probe's outbox only when a collector says it committed it.  Contract,
version :data:`VERSION`:

**Probe -> collector** (MQTT v5 user properties on each ``.../measurements`` PUBLISH; the
signed envelope is unchanged, so collectors that know nothing of receipts store it as before):

    ``vigil-receipt``  the receipt version the probe understands ("1"); its presence asks for
                       receipts.  A message without it (an older agent) gets none.
    ``vigil-id``       the record's ``measurement_id``: names the record in the receipt even
                       when its envelope cannot be parsed.
    ``vigil-age``      optional: seconds since the record was taken, by the probe's monotonic
                       clock (same boot only).  Lets the collector place a record whose wall
                       clock time was wrong (a Pi before NTP sync); see collector.ingest.verify.

**Collector -> probe** (QoS 1 to ``vigil/v1/probes/{probe_id}/receipts``, published after the
batch is committed, by whichever collector of the shared subscription stored the records)::

    {"v": 1, "by": "<collector client id>",
     "stored":  ["<measurement_id>", ...],          committed now or before (a duplicate)
     "refused": {"<measurement_id>": "<reason>"},   never will be: leaves the outbox
     "retry":   {"<measurement_id>": "<reason>"}}   not now (e.g. probe not enrolled yet)

Every list/map may be empty or absent.  Ids the probe does not hold are ignored (another
copy's receipt came first).  The probe's broker ACL lets it read exactly its receipts topic
and the collectors' write it (configs/mosquitto/).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from agent.errors import ReceiptError

VERSION: Final = 1
PROP_RECEIPT: Final = "vigil-receipt"
PROP_ID: Final = "vigil-id"
PROP_AGE: Final = "vigil-age"

MAX_RECEIPT_BYTES: Final = 256 * 1024
MAX_IDS_PER_RECEIPT: Final = 1000  # a collector splits bigger answers into several receipts
MAX_REASON_CHARS: Final = 200
_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


@dataclass(frozen=True, slots=True)
class Receipt:
    """What one collector committed (or will not) of one probe's records."""

    stored: tuple[str, ...] = ()
    refused: Mapping[str, str] = field(default_factory=dict)
    retry: Mapping[str, str] = field(default_factory=dict)
    by: str = ""

    def __len__(self) -> int:
        return len(self.stored) + len(self.refused) + len(self.retry)


def encode(receipt: Receipt) -> bytes:
    doc: dict[str, Any] = {"v": VERSION, "by": receipt.by, "stored": list(receipt.stored)}
    if receipt.refused:
        doc["refused"] = dict(receipt.refused)
    if receipt.retry:
        doc["retry"] = dict(receipt.retry)
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def split(receipt: Receipt, limit: int = MAX_IDS_PER_RECEIPT) -> list[Receipt]:
    """``receipt`` as receipts of at most ``limit`` ids each (empty in, nothing out)."""
    items = [("s", mid, "") for mid in receipt.stored]
    items += [("f", mid, why) for mid, why in receipt.refused.items()]
    items += [("r", mid, why) for mid, why in receipt.retry.items()]
    out: list[Receipt] = []
    for i in range(0, len(items), limit):
        chunk = items[i : i + limit]
        out.append(Receipt(
            stored=tuple(m for k, m, _ in chunk if k == "s"),
            refused={m: w for k, m, w in chunk if k == "f"},
            retry={m: w for k, m, w in chunk if k == "r"},
            by=receipt.by,
        ))
    return out


def parse(raw: bytes) -> Receipt:
    """A receipt's bytes -> :class:`Receipt`; ReceiptError when it breaks the contract.

    A receipt of a newer version is refused as a whole (its meaning may differ); the sender
    then holds the records and sends them again, which a collector always answers.
    """
    if len(raw) > MAX_RECEIPT_BYTES:
        raise ReceiptError(f"receipt of {len(raw)} bytes > {MAX_RECEIPT_BYTES}")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ReceiptError(f"receipt is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ReceiptError("receipt is not a JSON object")
    version = doc.get("v")
    if version != VERSION or isinstance(version, bool):
        raise ReceiptError(f"receipt version {version!r} is not {VERSION}")
    by = doc.get("by", "")
    if not isinstance(by, str):
        raise ReceiptError("receipt 'by' is not a string")
    stored = doc.get("stored", [])
    if not isinstance(stored, list):
        raise ReceiptError("receipt 'stored' is not a list")
    return Receipt(
        stored=tuple(_ids(stored)),
        refused=_reasons(doc.get("refused", {}), "refused"),
        retry=_reasons(doc.get("retry", {}), "retry"),
        by=by[:MAX_REASON_CHARS],
    )


def _ids(values: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for v in values:
        if not isinstance(v, str) or not _ID.fullmatch(v):
            raise ReceiptError(f"receipt names an invalid measurement id {str(v)[:80]!r}")
        out.append(v)
    return out


def _reasons(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ReceiptError(f"receipt {name!r} is not an object")
    _ids(value)
    if not all(isinstance(w, str) for w in value.values()):
        raise ReceiptError(f"receipt {name!r} reasons must be strings")
    return {k: w[:MAX_REASON_CHARS] for k, w in value.items()}


def user_properties(measurement_id: str, age_s: float | None) -> list[tuple[str, str]]:
    """The user properties a receipt-aware probe puts on a measurement PUBLISH."""
    props = [(PROP_RECEIPT, str(VERSION)), (PROP_ID, measurement_id)]
    if age_s is not None and age_s >= 0:
        props.append((PROP_AGE, f"{age_s:.3f}"))
    return props


@dataclass(frozen=True, slots=True)
class Request:
    """What a measurement PUBLISH asked of the collector (from its user properties)."""

    version: int | None  # receipt version asked for, None: no receipt (an older agent)
    measurement_id: str | None
    age_s: float | None


def request_from(props: Iterable[tuple[str, str]]) -> Request:
    """Read the user properties of a PUBLISH; anything malformed counts as absent."""
    version: int | None = None
    mid: str | None = None
    age: float | None = None
    for key, value in props:
        if key == PROP_RECEIPT and value.isdigit() and len(value) < 6:
            version = min(int(value), VERSION)
        elif key == PROP_ID and _ID.fullmatch(value):
            mid = value
        elif key == PROP_AGE:
            try:
                parsed = float(value)
            except ValueError:
                continue
            if 0 <= parsed < 10 * 365 * 86400:
                age = parsed
    return Request(version if version else None, mid, age)
