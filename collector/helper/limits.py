"""How much any one client, and everybody together, may make the control helper do.

A control request costs the helper DNS queries, several connections and a page download, so an
unlimited helper is free anonymous traffic.  Two limits:

- per client: a token bucket (``per_minute`` requests of burst, refilled at ``per_minute``/60
  per second) and a cap on requests in flight;
- global: a cap on controls running at once; a request waits up to ``queue_timeout`` seconds for
  a slot, then is refused as ``helper_busy`` (the probe retries later; the control is never
  silently dropped).

The client key is the probe id (signed mode) or the caller's network (open mode: the IPv4
address, or the IPv6 /64 a single subscriber usually holds).  Keys are only ever held as keyed
BLAKE2b hashes under a random per-process secret: the helper never keeps an address, not even
in memory, and the hashes mean nothing after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv6Address, IPv6Network, ip_address

from collector.helper.errors import HELPER_BUSY, TOO_MANY_REQUESTS, Refusal

DEFAULT_MAX_KEYS = 200_000


def client_label(remote: str) -> str:
    """The rate-limit identity of an unauthenticated caller: its IPv4 address or IPv6 /64."""
    try:
        addr = ip_address(remote.split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(addr, IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


class ClientHasher:
    """Keyed hashing of client labels; the secret lives only in this process's memory."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(32)

    def __call__(self, label: str) -> bytes:
        return hashlib.blake2b(label.encode(), key=self._secret, digest_size=16).digest()


class RateLimiter:
    """Per-client token buckets."""

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[bytes, tuple[float, float]] = {}  # key -> (tokens, last update)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: bytes, cost: int = 1) -> None:
        """Spend ``cost`` tokens (one per connection a request makes the helper open) or
        raise ``too_many_requests`` with the wait in ``retry_after``."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        need = float(min(max(cost, 1), self.capacity))
        if tokens < need:
            self._buckets[key] = (tokens, now)
            wait = (need - tokens) / self.rate
            raise Refusal(
                TOO_MANY_REQUESTS,
                f"more than {int(self.capacity)} requests per minute from this client",
                retry_after=wait,
            )
        if key not in self._buckets and len(self._buckets) >= self._max_keys:
            self._prune(now)
            if len(self._buckets) >= self._max_keys:
                raise Refusal(HELPER_BUSY, "too many distinct clients right now", retry_after=60)
        self._buckets[key] = (tokens - need, now)

    def refund(self, key: bytes, cost: int = 1) -> None:
        """Give back tokens taken for a request that turned out to be legitimate."""
        found = self._buckets.get(key)
        if found is not None:
            tokens, last = found
            self._buckets[key] = (min(self.capacity, tokens + cost), last)

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled completely: they hold no information."""
        full_after = self.capacity / self.rate
        stale = [k for k, (_, last) in self._buckets.items() if now - last >= full_after]
        for k in stale:
            del self._buckets[k]


class ConcurrencyGate:
    """Global and per-client caps on requests in flight."""

    def __init__(self, max_concurrent: int, per_client: int, queue_timeout: float) -> None:
        if max_concurrent < 1 or per_client < 1:
            raise ValueError("concurrency limits must be at least 1")
        self._sem = asyncio.Semaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self._per_client = per_client
        self._queue_timeout = queue_timeout
        self._in_flight: dict[bytes, int] = {}

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    @contextlib.asynccontextmanager
    async def slot(self, key: bytes) -> AsyncIterator[None]:
        count = self._in_flight.get(key, 0)
        if count >= self._per_client:
            raise Refusal(
                TOO_MANY_REQUESTS,
                f"more than {self._per_client} requests in flight from this client",
                retry_after=1,
            )
        self._in_flight[key] = count + 1
        try:
            try:
                async with asyncio.timeout(self._queue_timeout):
                    await self._sem.acquire()
            except TimeoutError:
                raise Refusal(
                    HELPER_BUSY, "every control slot is busy; retry shortly", retry_after=2
                ) from None
            try:
                yield
            finally:
                self._sem.release()
        finally:
            remaining = self._in_flight[key] - 1
            if remaining:
                self._in_flight[key] = remaining
            else:
                del self._in_flight[key]
