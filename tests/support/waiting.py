"""Polling with a bound: the one way tests wait for something to happen.

A test never sleeps for a fixed time hoping the other side is done; it polls a condition until
a deadline and fails with what it was waiting for.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

POLL_INTERVAL = 0.05


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    what: str,
    *,
    timeout: float = 10.0,
    interval: float = POLL_INTERVAL,
    in_thread: bool = False,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout``.

    ``in_thread`` runs a blocking predicate (a database query) off the event loop; ``detail``
    adds context to the failure (a process's log).
    """
    deadline = time.monotonic() + timeout
    while True:
        if in_thread:
            result = await asyncio.to_thread(predicate)
        else:
            result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        await asyncio.sleep(interval)


def wait_until_sync(
    predicate: Callable[[], bool],
    what: str,
    *,
    timeout: float = 10.0,
    interval: float = POLL_INTERVAL,
) -> None:
    """:func:`wait_until` for code without an event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
