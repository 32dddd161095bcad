"""``vigil-collector throttling-events``: whole-network slowdowns per network and country.

    vigil-collector throttling-events check  --store URL [--interval S] [--webhook URL]... [--json]
    vigil-collector throttling-events watch  --store URL [--interval S] [--passes N]
    vigil-collector throttling-events list   --store URL [--since ISO] [--group G] [--ongoing]
    vigil-collector throttling-events signal --store URL --group asn:AS1234 [--since ISO]

``check`` runs one detection pass now (events are saved in the store and new ones notified),
``watch`` repeats it every quarter interval until SIGTERM (or ``--passes``), ``list`` prints
the stored events and ``signal`` a group's throughput signal per interval (active probes,
slow probes, median of each probe's rate over its own baseline).  ``--interval`` must match
the agents' throttling interval (``throttling_interval_hours``).
"""

from __future__ import annotations

import asyncio
import json
import signal as signals
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agent.errors import UsageError
from collector.cli.storeargs import config_option, open_command_store, store_option
from collector.slowdowns.detector import SignalPoint, SlowdownConfig, SlowdownEvent

if TYPE_CHECKING:
    from collector.slowdowns.watch import SlowdownWatcher
    from collector.store import Store


def _fmt(ts: float | None) -> str:
    if ts is None:
        return "ongoing"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(events: list[SlowdownEvent]) -> str:
    if not events:
        return "no slowdowns"
    lines = [f"{'group':<16} {'start':<21} {'end':<21} {'probes':>6} {'ratio':>6}  id"]
    for e in events:
        lines.append(f"{e.group:<16} {_fmt(e.start):<21} {_fmt(e.end):<21} "
                     f"{len(e.affected):>6} {e.median_ratio:>6.2f}  {e.event_id}")
    return "\n".join(lines)


def render_signal(points: list[SignalPoint]) -> str:
    if not points:
        return "no signal"
    lines = [f"{'bin start':<21} {'active':>6} {'slow':>5} {'median ratio':>12}"]
    for p in points:
        med = p.median_ratio
        lines.append(f"{_fmt(p.bin_start):<21} {p.active:>6} {p.slow:>5} "
                     f"{'-' if med is None else f'{med:.2f}':>12}")
    return "\n".join(lines)


def detector_config(interval: float, window: float, alert: float, quorum: float,
                    min_probes: int) -> SlowdownConfig:
    try:
        return SlowdownConfig(interval=interval, baseline_window=window, alert_fraction=alert,
                              quorum=quorum, min_probes=min_probes,
                              recover_quorum=min(quorum, SlowdownConfig().recover_quorum)
                              ).validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _watcher(store: Store, cfg: SlowdownConfig, webhooks: tuple[str, ...]) -> SlowdownWatcher:
    from collector.slowdowns.watch import SlowdownWatchConfig, SlowdownWatcher

    return SlowdownWatcher(store, SlowdownWatchConfig(cfg, webhooks))


_COMMON = [store_option, config_option]
_DETECT = [
    click.option("--interval", type=click.FloatRange(1, 7 * 86400), default=3600.0,
                 show_default=True, help="the agents' throttling interval, seconds (one bin)"),
    click.option("--window", type=click.FloatRange(60, 60 * 86400), default=7 * 86400.0,
                 show_default=True, help="baseline window, seconds (each probe's own median)"),
    click.option("--alert-fraction", type=float, default=0.3, show_default=True,
                 help="a probe is slow at or under this fraction of its own baseline"),
    click.option("--quorum", type=float, default=0.6, show_default=True,
                 help="share of a group's active probes that must be slow"),
    click.option("--min-probes", type=click.IntRange(1, 10**6), default=3, show_default=True,
                 help="and at least this many slow probes"),
]
_HOOKS = [click.option("--webhook", "webhooks", multiple=True, metavar="URL",
                       help="POST each opened/closed event here (repeatable)")]

F = TypeVar("F", bound=Callable[..., Any])


def _options(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def wrap(f: F) -> F:
        for opt in reversed(options):
            f = opt(f)
        return f
    return wrap


@click.group("throttling-events")
def throttling_events() -> None:
    """Whole-network slowdowns per network (ASN) and country, from benign transfer rates."""


@throttling_events.command("check")
@_options(_COMMON + _DETECT + _HOOKS)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table")
def check(store_url: str | None, config_path: Path | None, interval: float, window: float,
          alert_fraction: float, quorum: float, min_probes: int, webhooks: tuple[str, ...],
          as_json: bool) -> None:
    """One detection pass now: save events, notify new ones, print them."""
    _check_urls(webhooks)
    cfg = detector_config(interval, window, alert_fraction, quorum, min_probes)
    store = open_command_store(store_url, config_path)
    try:
        watcher = _watcher(store, cfg, webhooks)

        async def once() -> list[SlowdownEvent]:
            import aiohttp

            async with aiohttp.ClientSession() as session:
                return await watcher.check(time.time(), session)

        events = asyncio.run(once())
    finally:
        store.close()
    _print(events, as_json)


@throttling_events.command("watch")
@_options(_COMMON + _DETECT + _HOOKS)
@click.option("--passes", type=click.IntRange(1, 10**9), default=10**9,
              help="stop after this many passes (default: until SIGTERM)")
def watch(store_url: str | None, config_path: Path | None, interval: float, window: float,
          alert_fraction: float, quorum: float, min_probes: int, webhooks: tuple[str, ...],
          passes: int) -> None:
    """Detect continuously (every quarter interval) until SIGTERM."""
    _check_urls(webhooks)
    cfg = detector_config(interval, window, alert_fraction, quorum, min_probes)
    store = open_command_store(store_url, config_path)
    try:
        watcher = _watcher(store, cfg, webhooks)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signals.SIGTERM, signals.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await watcher.watch(max_passes=passes, stop=stop)

        asyncio.run(main())
    finally:
        store.close()


def _since(since: str | None) -> float | None:
    if since is None:
        return None
    try:
        return datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise UsageError(f"--since {since!r} is not an ISO 8601 time") from None


def _group(group: str | None) -> str | None:
    from collector.api.params import BadRequest, outage_group

    try:
        return outage_group(group)
    except BadRequest as exc:
        raise UsageError(f"--group: {exc.detail}") from None


@throttling_events.command("list")
@_options(_COMMON)
@click.option("--since", default=None, help="events still open at or after this (ISO 8601)")
@click.option("--group", default=None, help="asn:AS1234 or cc:IR")
@click.option("--ongoing", is_flag=True, help="only events not yet over")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table")
def list_(store_url: str | None, config_path: Path | None, since: str | None,
          group: str | None, ongoing: bool, as_json: bool) -> None:
    """Stored slowdown events, newest first."""
    from collector.slowdowns.store import SlowdownStore

    since_ts, grp = _since(since), _group(group)
    store = open_command_store(store_url, config_path)
    try:
        events = SlowdownStore(store).events(since=since_ts, group=grp, ongoing=ongoing)
    finally:
        store.close()
    _print(events, as_json)


@throttling_events.command("signal")
@_options(_COMMON + _DETECT)
@click.option("--group", required=True, help="asn:AS1234 or cc:IR")
@click.option("--since", default=None, help="from this time (ISO 8601; default: a day ago)")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table")
def signal(store_url: str | None, config_path: Path | None, interval: float, window: float,
           alert_fraction: float, quorum: float, min_probes: int, group: str,
           since: str | None, as_json: bool) -> None:
    """A group's throughput signal per interval (from the samples the detector extracted)."""
    from collector.slowdowns.store import SlowdownStore
    from collector.slowdowns.watch import group_signal

    cfg = detector_config(interval, window, alert_fraction, quorum, min_probes)
    grp = _group(group)
    assert grp is not None
    now = time.time()
    since_ts = _since(since) or now - 86400.0
    store = open_command_store(store_url, config_path)
    try:
        try:
            points = group_signal(SlowdownStore(store), grp, since_ts, now, cfg, sync=True)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    finally:
        store.close()
    if as_json:
        for p in points:
            click.echo(json.dumps(p.to_json(), sort_keys=True))
    else:
        click.echo(render_signal(points))


def _check_urls(urls: tuple[str, ...]) -> None:
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise UsageError(f"--webhook {u!r} must be an http(s) URL")


def _print(events: list[SlowdownEvent], as_json: bool) -> None:
    if as_json:
        for e in events:
            click.echo(json.dumps(e.to_json(), sort_keys=True))
    else:
        click.echo(render(events))
