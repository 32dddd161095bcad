"""What the event commands (``outages``, ``throttling-events``) share: their common flags, one
detection pass or a watch until SIGTERM on the store the flags name, the stored events, and
printing events as a table or JSON lines.  The detectors' own flags and tables stay with each
command."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agent.errors import UsageError
from collector.cli.storeargs import config_option, open_command_store, store_option
from collector.store import Store

if TYPE_CHECKING:
    from collector.events.table import EventTable
    from collector.events.watch import EventWatcher

F = TypeVar("F", bound=Callable[..., Any])


def options(opts: Sequence[Callable[[F], F]]) -> Callable[[F], F]:
    """Several click options as one decorator, in the order given."""
    def wrap(f: F) -> F:
        for opt in reversed(opts):
            f = opt(f)
        return f
    return wrap


STORE = [store_option, config_option]
WEBHOOKS = [click.option("--webhook", "webhooks", multiple=True, metavar="URL",
                         help="POST each opened/closed event here (repeatable)")]
JSON = [click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table")]
PASSES = [click.option("--passes", type=click.IntRange(1, 10**9), default=10**9,
                       help="stop after this many passes (default: until SIGTERM)")]
LIST = [
    click.option("--since", default=None, help="events still open at or after this (ISO 8601)"),
    click.option("--group", default=None, help="asn:AS1234 or cc:IR"),
    click.option("--ongoing", is_flag=True, help="only events not yet over"),
    *JSON,
]


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "ongoing"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_since(since: str | None) -> float | None:
    if since is None:
        return None
    try:
        return datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise UsageError(f"--since {since!r} is not an ISO 8601 time") from None


def check_webhook_urls(urls: tuple[str, ...]) -> None:
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise UsageError(f"--webhook {u!r} must be an http(s) URL")


def check_once(store_url: str | None, config_path: Path | None,
               make: Callable[[Store], EventWatcher[Any, Any]]) -> list[Any]:
    """One detection pass now with the watcher ``make`` builds on the store: its events."""
    store = open_command_store(store_url, config_path)
    try:
        watcher = make(store)

        async def once() -> list[Any]:
            import aiohttp

            async with aiohttp.ClientSession() as session:
                return await watcher.check(time.time(), session)

        return asyncio.run(once())
    finally:
        store.close()


def watch_until_stopped(store_url: str | None, config_path: Path | None,
                        make: Callable[[Store], EventWatcher[Any, Any]], passes: int) -> None:
    """Passes every ``step`` until SIGTERM or SIGINT, or ``passes`` of them."""
    store = open_command_store(store_url, config_path)
    try:
        watcher = make(store)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await watcher.watch(max_passes=passes, stop=stop)

        asyncio.run(main())
    finally:
        store.close()


def stored_events(store_url: str | None, config_path: Path | None,
                  table: Callable[[Store], EventTable[Any]], since: float | None,
                  group: str | None, ongoing: bool) -> list[Any]:
    """The events kept in ``table``, newest first."""
    store = open_command_store(store_url, config_path)
    try:
        return table(store).events(since=since, group=group, ongoing=ongoing)
    finally:
        store.close()


def print_events(events: Sequence[Any], as_json: bool,
                 render: Callable[[Sequence[Any]], str]) -> None:
    if as_json:
        for e in events:
            click.echo(json.dumps(e.to_json(), sort_keys=True))
    else:
        click.echo(render(events))
