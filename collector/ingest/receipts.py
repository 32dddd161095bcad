"""Delivery receipts from the ingest: what each probe learns after a batch is committed.

Pure: messages, their outcomes and the store's answer in, one receipt per probe out (contract
in agent.wire.receipts).  Only a message that asked for a receipt (``vigil-receipt`` user
property) is answered, so an older agent, which never reads its receipts topic, costs nothing.

Which refusals are final: every rejection reason means the same bytes would be refused again
(bad signature, schema violation, revoked key, ...), so the probe stops sending them; the raw
bytes are in the collector's quarantine.  Two are not: ``unknown_key`` (the probe may be
enrolled in a minute) and ``internal_error`` (a collector bug or a store refusal that a fix
may cure): those are answered "retry", and the probe offers them again later, backed off.
A repeat with different bytes under a stored id (``conflict``) is final.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from agent.wire.receipts import Receipt, Request
from agent.wire.topics import MEASUREMENTS, RECEIPTS, topic_parts
from collector.ingest.verify import Accepted, Outcome, Reason, Rejected

RETRY_REASONS = frozenset({str(Reason.UNKNOWN_KEY), str(Reason.INTERNAL_ERROR)})
CONFLICT = "conflict"


def reply_topic(topic: str) -> str:
    """Where the receipt for a record published on ``topic`` goes: its sibling ``receipts``
    topic, under the same name the record came by (whatever prefix the broker gave the
    probe's topics, e.g. a listener ``mount_point``, the answer carries it back)."""
    return topic.rsplit("/", 1)[0] + "/" + RECEIPTS


@dataclass(frozen=True, slots=True)
class Answered:
    """One message of a committed batch: where it came from and what it asked."""

    topic: str
    request: Request


def build(
    messages: Sequence[Answered],
    outcomes: Sequence[Outcome],
    *,
    conflicts: Collection[str] = (),
    failed: Collection[str] = (),
    by: str = "",
) -> dict[str, Receipt]:
    """Receipts by reply topic (:func:`reply_topic`) for a committed batch (``messages`` and
    ``outcomes`` aligned).

    ``conflicts``: ids whose stored bytes differ from these (refused); ``failed``: accepted
    ids the store nevertheless refused (quarantined as internal_error: retry).
    """
    stored: dict[str, list[str]] = {}
    refused: dict[str, dict[str, str]] = {}
    retry: dict[str, dict[str, str]] = {}
    for msg, outcome in zip(messages, outcomes, strict=True):
        if msg.request.version is None:
            continue
        parts = topic_parts(msg.topic)
        if parts is None or parts[1] != MEASUREMENTS:
            continue
        probe = reply_topic(msg.topic)
        if isinstance(outcome, Accepted):
            mid = outcome.row.measurement_id
            if mid in failed:
                retry.setdefault(probe, {})[mid] = str(Reason.INTERNAL_ERROR)
            elif mid in conflicts:
                refused.setdefault(probe, {})[mid] = CONFLICT
            else:
                stored.setdefault(probe, []).append(mid)
        elif isinstance(outcome, Rejected) and msg.request.measurement_id is not None:
            mid, reason = msg.request.measurement_id, outcome.reason
            (retry if reason in RETRY_REASONS else refused).setdefault(probe, {})[mid] = reason
    out: dict[str, Receipt] = {}
    for probe in sorted({*stored, *refused, *retry}):  # a reply topic names one probe
        out[probe] = Receipt(
            stored=tuple(dict.fromkeys(stored.get(probe, []))),
            refused=refused.get(probe, {}),
            retry=retry.get(probe, {}),
            by=by,
        )
    return out
