"""Enrolled probe keys from the store, for the control helper (collector.helper.auth.ProbeKeys).

The helper checks a key per request; asking the database each time would make it the helper's
bottleneck and its single point of failure.  Answers are cached for ``ttl_s`` seconds (so a
revocation takes effect within that), the whole probe table is reloaded at once (a few
thousand rows), and when the store is unreachable the last good table keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from collector.ingest.verify import KeyTable
from collector.store.aio import AsyncStore
from collector.store.base import StoreError

log = logging.getLogger("vigil.collector.keys")


class StoreProbeKeys:
    """``await lookup(probe_id)`` -> (public key, revoked) | None, backed by the store."""

    def __init__(self, store: AsyncStore, ttl_s: float = 5.0) -> None:
        self._store = store
        self._ttl = ttl_s
        self._table = KeyTable()
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._loaded_at is not None and now - self._loaded_at < self._ttl:
                return  # another caller refreshed while we waited for the lock
            try:
                probes = await self._store.call(self._store.store.list_probes)
            except StoreError as exc:
                if self._loaded_at is None:
                    raise
                log.warning("probe keys: store unavailable (%s); serving the cached table", exc)
                self._loaded_at = now  # do not hammer a failing database on every request
                return
            self._table.load(probes)
            self._loaded_at = now

    async def lookup(self, probe_id: str) -> tuple[Ed25519PublicKey, bool] | None:
        if self._loaded_at is None or time.monotonic() - self._loaded_at >= self._ttl:
            await self._refresh()
        key = self._table.get(probe_id)
        if key is None:
            return None
        return key.public_key, key.revoked
