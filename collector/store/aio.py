"""Run a blocking Store on one dedicated thread, awaitable from the event loop.

Both backends are blocking drivers and neither connection may be used from two threads at
once; one worker thread serialises every call, and the event loop stays free to read the
broker (and verify the next batch) while a batch commits.  The store is opened on that thread
too, so SQLite's and psycopg's per-thread assumptions hold.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from collector.store import open_store
from collector.store.base import Store

P = ParamSpec("P")
T = TypeVar("T")


class AsyncStore:
    """``await astore.call(Store.method, args...)``; ``store`` is for the same thread only."""

    def __init__(self, store: Store, executor: ThreadPoolExecutor) -> None:
        self.store = store
        self._executor = executor

    @classmethod
    async def open(cls, url: str, **options: Any) -> AsyncStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-store")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(
                executor, functools.partial(open_store, url, **options)
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        try:
            await self.call(self.store.close)
        finally:
            self._executor.shutdown(wait=True)
