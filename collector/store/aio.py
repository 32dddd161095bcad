"""Run a blocking Store on dedicated threads, awaitable from the event loop.

Both backends are blocking drivers and neither connection may be used from two threads at
once.  By default one worker thread serialises every call, and the event loop stays free to
read the broker (and verify the next batch) while a batch commits.  The store is opened on
that thread too, so SQLite's and psycopg's per-thread assumptions hold.

The API reads, and its requests come many at once (the dashboard's first paint is a dozen):
``AsyncStore.open(url, threads=N)`` gives it N worker threads, each with a connection of its
own (SQLite in WAL mode lets readers run side by side; PostgreSQL serves each connection in
its own backend), so one slow question no longer holds the others in a queue.  ``store`` is
then a :class:`ThreadStores`: a method called on it runs on the connection of the thread it
is called from.  The ingest keeps one thread, the single writer.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from collector.store import open_store
from collector.store.base import Store

P = ParamSpec("P")
T = TypeVar("T")


class ThreadStores:
    """A store per worker thread, behind one object: ``stores.method(...)`` called on a
    worker thread runs on that thread's connection, opened there at its first call.  Plain
    attributes (``url``) are read from the first store."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self._url = url
        self._options = options
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[Store] = []
        self._first: Store | None = None

    def join(self) -> None:
        """Make the calling thread one of the workers (the executor's initializer)."""
        self._local.worker = True

    def here(self) -> Store:
        """The calling worker thread's store, opened now if it has none yet."""
        store: Store | None = getattr(self._local, "store", None)
        if store is not None:
            return store
        if not getattr(self._local, "worker", False):
            raise RuntimeError("a store of the API's pool used outside its worker threads")
        store = open_store(self._url, **self._options)
        self._local.store = store
        with self._lock:
            self._opened.append(store)
            if self._first is None:
                self._first = store
        return store

    @property
    def first(self) -> Store:
        if self._first is None:
            raise RuntimeError("no store opened yet")
        return self._first

    def opened(self) -> list[Store]:
        with self._lock:
            return list(self._opened)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self.first, name)
        if not callable(value):
            return value

        def on_this_thread(*args: Any, **kwargs: Any) -> Any:
            return getattr(self.here(), name)(*args, **kwargs)

        on_this_thread.__name__ = name
        return on_this_thread


class AsyncStore:
    """``await astore.call(Store.method, args...)``; ``store`` is for the worker threads
    only (a :class:`ThreadStores` when there are several)."""

    def __init__(self, store: Store, executor: ThreadPoolExecutor,
                 pool: ThreadStores | None = None) -> None:
        self.store = store
        self._executor = executor
        self._pool = pool

    @classmethod
    async def open(cls, url: str, threads: int = 1, **options: Any) -> AsyncStore:
        loop = asyncio.get_running_loop()
        if threads > 1:
            pool = ThreadStores(url, options)
            executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vigil-store",
                                          initializer=pool.join)
            try:
                # The first connection migrates the schema before any other opens.
                await loop.run_in_executor(executor, pool.here)
            except BaseException:
                executor.shutdown(wait=False)
                raise
            return cls(pool, executor, pool)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-store")
        try:
            store = await loop.run_in_executor(
                executor, functools.partial(open_store, url, **options)
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor)

    @property
    def threads(self) -> int:
        return self._executor._max_workers

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        if self._pool is None:
            try:
                await self.call(self.store.close)
            finally:
                self._executor.shutdown(wait=True)
            return
        pool = self._pool
        loop = asyncio.get_running_loop()
        # Wait for the calls under way, then close every thread's connection.
        await loop.run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))
        for store in pool.opened():
            await loop.run_in_executor(None, store.close)
