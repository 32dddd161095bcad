"""``vigil-collector outages``: shutdown detection per network and country.

    vigil-collector outages check --store URL [--heartbeat 60] [--webhook URL]... [--json]
    vigil-collector outages watch --store URL [--heartbeat 60] [--webhook URL]... [--passes N]
    vigil-collector outages list  --store URL [--since ISO] [--group asn:AS1234] [--ongoing]

``check`` runs one detection pass now (events are saved in the store and new ones notified),
``watch`` repeats it every quarter heartbeat interval until SIGTERM (or ``--passes``), ``list``
prints the stored events.  The heartbeat interval must match the agents' status interval.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agent.errors import UsageError
from collector.cli.storeargs import config_option, open_command_store, store_option
from collector.outages.detector import DetectorConfig, OutageEvent
from collector.store import Store

if TYPE_CHECKING:
    from collector.outages.watch import Watcher


def _fmt(ts: float | None) -> str:
    if ts is None:
        return "ongoing"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(events: list[OutageEvent]) -> str:
    if not events:
        return "no outages"
    lines = [f"{'group':<16} {'start':<21} {'end':<21} {'probes':>6}  share  confirmed  id"]
    for e in events:
        lines.append(
            f"{e.group:<16} {_fmt(e.start):<21} {_fmt(e.end):<21} {len(e.affected):>6}  "
            f"{e.min_share:.2f}/{e.baseline_share:.2f}  {len(e.confirmed_by):>9}  {e.event_id}"
        )
    return "\n".join(lines)


def _detector(heartbeat: float, window: float, alert: float, min_probes: float
              ) -> DetectorConfig:
    if not 0 < alert < 1:
        raise UsageError("--alert-fraction must be between 0 and 1")
    return DetectorConfig(heartbeat_interval=heartbeat, baseline_window=window,
                          alert_fraction=alert, min_expected_probes=min_probes)


def _watcher(store: Store, heartbeat: float, window: float, alert: float, min_probes: float,
             webhooks: tuple[str, ...]) -> Watcher:
    """The detector both ``check`` and ``watch`` run (imported late: the CLI starts fast)."""
    from collector.outages.watch import WatchConfig, Watcher

    return Watcher(store, WatchConfig(_detector(heartbeat, window, alert, min_probes), webhooks))


_COMMON = [store_option, config_option]
_DETECT = [
    click.option("--heartbeat", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
                 help="the agents' status (heartbeat) interval, seconds"),
    click.option("--window", type=click.FloatRange(60, 30 * 86400), default=86400.0,
                 show_default=True, help="baseline window, seconds (the recent median)"),
    click.option("--alert-fraction", type=float, default=0.5, show_default=True,
                 help="alert when the share online drops under this fraction of its median"),
    click.option("--min-probes", type=click.FloatRange(0.5, 1e6), default=1.0,
                 show_default=True, help="expected online probes a group needs to be judged"),
    click.option("--webhook", "webhooks", multiple=True, metavar="URL",
                 help="POST each opened/closed event here (repeatable)"),
]


F = TypeVar("F", bound=Callable[..., Any])


def _options(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def wrap(f: F) -> F:
        for opt in reversed(options):
            f = opt(f)
        return f
    return wrap


@click.group()
def outages() -> None:
    """Shutdowns per network (ASN) and country, from probe presence."""


@outages.command("check")
@_options(_COMMON + _DETECT)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table")
def check(store_url: str | None, config_path: Path | None, heartbeat: float, window: float,
          alert_fraction: float, min_probes: float, webhooks: tuple[str, ...],
          as_json: bool) -> None:
    """One detection pass now: save events, notify new ones, print them."""
    _check_urls(webhooks)
    store = open_command_store(store_url, config_path)
    try:
        watcher = _watcher(store, heartbeat, window, alert_fraction, min_probes, webhooks)

        async def once() -> list[OutageEvent]:
            import aiohttp

            async with aiohttp.ClientSession() as session:
                return await watcher.check(time.time(), session)

        events = asyncio.run(once())
    finally:
        store.close()
    _print(events, as_json)


@outages.command("watch")
@_options(_COMMON + _DETECT)
@click.option("--passes", type=click.IntRange(1, 10**9), default=10**9,
              help="stop after this many passes (default: until SIGTERM)")
def watch(store_url: str | None, config_path: Path | None, heartbeat: float, window: float,
          alert_fraction: float, min_probes: float, webhooks: tuple[str, ...],
          passes: int) -> None:
    """Detect continuously (every quarter heartbeat) until SIGTERM."""
    _check_urls(webhooks)
    store = open_command_store(store_url, config_path)
    try:
        watcher = _watcher(store, heartbeat, window, alert_fraction, min_probes, webhooks)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await watcher.watch(max_passes=passes, stop=stop)

        asyncio.run(main())
    finally:
        store.close()


@outages.command("list")
@_options(_COMMON)
@click.option("--since", default=None, help="events still open at or after this (ISO 8601)")
@click.option("--group", default=None, help="asn:AS1234 or cc:IR")
@click.option("--ongoing", is_flag=True, help="only events not yet over")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table")
def list_(store_url: str | None, config_path: Path | None, since: str | None,
          group: str | None, ongoing: bool, as_json: bool) -> None:
    """Stored outage events, newest first."""
    from collector.outages.store import OutageEventStore

    since_ts = None
    if since is not None:
        try:
            since_ts = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise UsageError(f"--since {since!r} is not an ISO 8601 time") from None
    store = open_command_store(store_url, config_path)
    try:
        events = OutageEventStore(store).events(since=since_ts, group=group, ongoing=ongoing)
    finally:
        store.close()
    _print(events, as_json)


def _check_urls(urls: tuple[str, ...]) -> None:
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise UsageError(f"--webhook {u!r} must be an http(s) URL")


def _print(events: list[OutageEvent], as_json: bool) -> None:
    if as_json:
        for e in events:
            click.echo(json.dumps(e.to_json(), sort_keys=True))
    else:
        click.echo(render(events))
