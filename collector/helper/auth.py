"""Who may use the control helper: verification of probe-signed requests.

The wire format (headers, signed bytes) is defined by ``agent.wire.helper_auth`` and imported from
there, so probe and helper cannot drift apart.  Verification order is chosen so an attacker
learns nothing and costs little: header syntax and clock window first (no key lookup), then the
Ed25519 signature, and only then revocation and replay, which are reported only to someone who
holds the probe's key.

Enrolled keys come from a ``ProbeKeys`` implementation.  ``FileProbeKeys`` reads JSON lines
``{"probe_id": ..., "public_key": base64(raw 32 bytes), "revoked": false}``; the collector's
store will provide another implementation of the same protocol.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.wire.envelope import probe_id_for
from agent.wire.helper_auth import (
    HEADER_NONCE,
    HEADER_PROBE_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    NONCE_RE,
    body_digest,
    signing_message,
)
from collector.helper.errors import (
    CLOCK_SKEW,
    PROBE_REVOKED,
    REPLAYED,
    UNAUTHENTICATED,
    Refusal,
)

log = logging.getLogger("vigil.helper.auth")

PROBE_ID_RE = re.compile(r"[a-z2-7]{26}")
TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
DEFAULT_MAX_SKEW = 300.0  # Raspberry Pis have no RTC; NTP can lag after boot
DEFAULT_REPLAY_CAPACITY = 500_000


class ProbeKeys(Protocol):
    """Source of enrolled probe keys."""

    async def lookup(self, probe_id: str) -> tuple[Ed25519PublicKey, bool] | None:
        """(public key, revoked) of an enrolled probe, or None when the id is unknown."""
        ...


class ProbesFileError(Exception):
    """The probes file cannot be used; the message lists every bad line as file:line."""


@dataclass(frozen=True, slots=True)
class _Entry:
    public_key: Ed25519PublicKey
    revoked: bool


def parse_probes(text: str, source: str) -> dict[str, tuple[Ed25519PublicKey, bool]]:
    """Parse a probes file (JSON lines).  Any bad line rejects the whole file.

    Strict on purpose: skipping a malformed line could silently un-revoke a probe.  Repeated ids
    are allowed (append a line to revoke); a revocation is sticky, and every line of one id must
    carry the same key.
    """
    entries: dict[str, _Entry] = {}
    errors: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{source}:{lineno}"
        try:
            probe_id, key, raw, revoked = _parse_probe_line(line)
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
            continue
        previous = entries.get(probe_id)
        if previous is not None and previous.public_key.public_bytes_raw() != raw:
            errors.append(f"{where}: probe {probe_id} listed again with a different key")
            continue
        sticky = revoked or (previous is not None and previous.revoked)
        entries[probe_id] = _Entry(key, sticky)
    if errors:
        shown = "; ".join(errors[:10])
        more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
        raise ProbesFileError(f"bad probes file: {shown}{more}")
    return {pid: (e.public_key, e.revoked) for pid, e in entries.items()}


def _parse_probe_line(line: str) -> tuple[str, Ed25519PublicKey, bytes, bool]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    probe_id, key_b64, revoked = obj.get("probe_id"), obj.get("public_key"), obj.get("revoked")
    if not isinstance(probe_id, str) or not PROBE_ID_RE.fullmatch(probe_id):
        raise ValueError("probe_id missing or not a probe id")
    if not isinstance(key_b64, str):
        raise ValueError("public_key missing")
    if not isinstance(revoked, bool):
        raise ValueError("revoked must be true or false")
    try:
        raw = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public_key is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"public_key is {len(raw)} bytes, an Ed25519 key is 32")
    if probe_id_for(raw) != probe_id:
        raise ValueError(f"probe_id {probe_id} does not belong to this public_key")
    return probe_id, Ed25519PublicKey.from_public_bytes(raw), raw, revoked


class FileProbeKeys:
    """``ProbeKeys`` from a JSON-lines file, re-read when it changes.

    A lookup checks the file's identity (inode, size, mtime) at most every ``check_interval``
    seconds, so a revocation written to the file takes effect within seconds without a signal.
    A replacement that does not parse is logged and ignored: the previous keys stay in force.
    """

    def __init__(
        self,
        path: Path,
        *,
        check_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._check_interval = check_interval
        self._clock = clock
        self._entries: dict[str, tuple[Ed25519PublicKey, bool]] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = clock()
        self.reload()

    def _file_stamp(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def reload(self) -> int:
        """Read the file now; returns the number of probes.  Raises ProbesFileError."""
        try:
            stamp = self._file_stamp()
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProbesFileError(f"cannot read probes file {self.path}: {exc}") from None
        self._entries = parse_probes(text, str(self.path))
        self._stamp = stamp
        return len(self._entries)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < self._check_interval:
            return
        self._checked = now
        try:
            changed = self._file_stamp() != self._stamp
        except OSError as exc:
            log.error("probes file %s unavailable (%s); keeping the keys loaded", self.path, exc)
            return
        if changed:
            try:
                count = self.reload()
            except ProbesFileError as exc:
                log.error("%s; keeping the previous keys", exc)
            else:
                log.info("probes file reloaded: %d probes", count)

    async def lookup(self, probe_id: str) -> tuple[Ed25519PublicKey, bool] | None:
        self._maybe_reload()
        return self._entries.get(probe_id)

    def __len__(self) -> int:
        return len(self._entries)


class ReplayCache:
    """Signatures seen within the acceptance window, so a captured request cannot be resent.

    Entries expire in insertion order (a deque), so pruning is O(expired).  Only hashes are
    kept.  When full, the oldest entries are evicted (by age, never refusing new requests:
    a full cache must not lock every probe out), and the cache stops accepting any request
    issued at or before the newest evicted one's timestamp (``horizon``): a forgotten
    signature can never be replayed, and honest probes, whose requests carry the current
    time, are not affected unless the flood is as recent as they are.
    """

    def __init__(
        self,
        ttl: float,
        capacity: int = DEFAULT_REPLAY_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._seen: set[bytes] = set()
        self._order: deque[tuple[float, bytes, float]] = deque()  # (expiry, key, issued_at)
        self.horizon = float("-inf")
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, signature: bytes, issued_at: float | None = None) -> bool:
        """True when new (and now remembered); False when seen before (a replay) or issued
        at or before the horizon of evicted entries."""
        now = self._clock()
        while self._order and self._order[0][0] <= now:
            _, old, _ = self._order.popleft()
            self._seen.discard(old)
        if issued_at is not None and issued_at <= self.horizon:
            return False
        key = hashlib.sha256(signature).digest()[:16]
        if key in self._seen:
            return False
        while len(self._seen) >= self._capacity and self._order:
            _, old, old_issued = self._order.popleft()
            self._seen.discard(old)
            self.horizon = max(self.horizon, old_issued)
            self.evicted += 1
        self._seen.add(key)
        self._order.append((now + self._ttl, key, float("-inf") if issued_at is None
                            else issued_at))
        return True


class RequestVerifier:
    """Checks the Vigil-* headers of one request; returns the authenticated probe id."""

    def __init__(
        self,
        keys: ProbeKeys,
        *,
        max_skew: float = DEFAULT_MAX_SKEW,
        clock: Callable[[], float] = time.time,
        replay: ReplayCache | None = None,
    ) -> None:
        self._keys = keys
        self._max_skew = max_skew
        self._clock = clock
        # A timestamp is accepted for 2*max_skew of helper time (from now-skew to now+skew).
        self._replay = replay if replay is not None else ReplayCache(ttl=2 * max_skew + 1)

    async def verify(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> str:
        probe_id = _header(headers, HEADER_PROBE_ID)
        timestamp = _header(headers, HEADER_TIMESTAMP)
        nonce = _header(headers, HEADER_NONCE)
        sig_b64 = _header(headers, HEADER_SIGNATURE)
        if not PROBE_ID_RE.fullmatch(probe_id):
            raise Refusal(UNAUTHENTICATED, f"{HEADER_PROBE_ID} is not a probe id")
        if not TIMESTAMP_RE.fullmatch(timestamp):
            raise Refusal(UNAUTHENTICATED, f"{HEADER_TIMESTAMP} is not Unix seconds")
        if not NONCE_RE.fullmatch(nonce):
            raise Refusal(UNAUTHENTICATED, f"{HEADER_NONCE} must be 22-64 base64url characters")
        try:
            signature = base64.b64decode(sig_b64, validate=True)
        except (binascii.Error, ValueError):
            raise Refusal(UNAUTHENTICATED, f"{HEADER_SIGNATURE} is not base64") from None
        if len(signature) != 64:
            raise Refusal(UNAUTHENTICATED, f"{HEADER_SIGNATURE} is not an Ed25519 signature")
        now = self._clock()
        skew = int(timestamp) - now
        if abs(skew) > self._max_skew:
            raise Refusal(
                CLOCK_SKEW,
                f"request timestamp is {skew:+.0f} s off the helper's clock "
                f"(accepted: ±{self._max_skew:.0f} s); check the probe's time sync",
            )
        found = await self._keys.lookup(probe_id)
        if found is None:
            raise Refusal(UNAUTHENTICATED, "unknown probe: enrol it first")
        public_key, revoked = found
        try:
            message = signing_message(method, path, probe_id, timestamp, nonce, body_digest(body))
        except ValueError:
            raise Refusal(UNAUTHENTICATED, "request cannot be signed unambiguously") from None
        try:
            public_key.verify(signature, message)
        except InvalidSignature:
            raise Refusal(UNAUTHENTICATED, "signature does not verify") from None
        if probe_id_for(public_key) != probe_id:
            raise Refusal(UNAUTHENTICATED, "enrolled key does not match the probe id")
        if revoked:
            raise Refusal(PROBE_REVOKED, "this probe's key has been revoked by the operator")
        if not self._replay.check_and_add(signature, float(timestamp)):
            raise Refusal(REPLAYED, "this signed request was already used")
        return probe_id


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None or not value.strip():
        raise Refusal(UNAUTHENTICATED, f"missing {name} header: this helper requires signed "
                      "requests from enrolled probes")
    return value.strip()
