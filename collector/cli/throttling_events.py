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

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agent.errors import UsageError
from collector.cli import eventargs
from collector.cli.eventargs import fmt_time
from collector.cli.storeargs import open_command_store
from collector.slowdowns.detector import SignalPoint, SlowdownConfig, SlowdownEvent

if TYPE_CHECKING:
    from collector.slowdowns.watch import SlowdownWatcher
    from collector.store import Store


def render(events: Sequence[SlowdownEvent]) -> str:
    if not events:
        return "no slowdowns"
    lines = [f"{'group':<16} {'start':<21} {'end':<21} {'probes':>6} {'ratio':>6}  id"]
    for e in events:
        lines.append(f"{e.group:<16} {fmt_time(e.start):<21} {fmt_time(e.end):<21} "
                     f"{len(e.affected):>6} {e.median_ratio:>6.2f}  {e.event_id}")
    return "\n".join(lines)


def render_signal(points: list[SignalPoint]) -> str:
    if not points:
        return "no signal"
    lines = [f"{'bin start':<21} {'active':>6} {'slow':>5} {'median ratio':>12}"]
    for p in points:
        med = p.median_ratio
        lines.append(f"{fmt_time(p.bin_start):<21} {p.active:>6} {p.slow:>5} "
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


def _watcher(cfg: SlowdownConfig, webhooks: tuple[str, ...]
             ) -> Callable[[Store], SlowdownWatcher]:
    """The detector both ``check`` and ``watch`` run (imported late: the CLI starts fast)."""
    def make(store: Store) -> SlowdownWatcher:
        from collector.slowdowns.watch import SlowdownWatchConfig, SlowdownWatcher

        return SlowdownWatcher(store, SlowdownWatchConfig(cfg, webhooks))
    return make


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

@click.group("throttling-events")
def throttling_events() -> None:
    """Whole-network slowdowns per network (ASN) and country, from benign transfer rates."""


@throttling_events.command("check")
@eventargs.options(eventargs.STORE + _DETECT + eventargs.WEBHOOKS + eventargs.JSON)
def check(store_url: str | None, config_path: Path | None, interval: float, window: float,
          alert_fraction: float, quorum: float, min_probes: int, webhooks: tuple[str, ...],
          as_json: bool) -> None:
    """One detection pass now: save events, notify new ones, print them."""
    eventargs.check_webhook_urls(webhooks)
    cfg = detector_config(interval, window, alert_fraction, quorum, min_probes)
    events = eventargs.check_once(store_url, config_path, _watcher(cfg, webhooks))
    eventargs.print_events(events, as_json, render)


@throttling_events.command("watch")
@eventargs.options(eventargs.STORE + _DETECT + eventargs.WEBHOOKS + eventargs.PASSES)
def watch(store_url: str | None, config_path: Path | None, interval: float, window: float,
          alert_fraction: float, quorum: float, min_probes: int, webhooks: tuple[str, ...],
          passes: int) -> None:
    """Detect continuously (every quarter interval) until SIGTERM."""
    eventargs.check_webhook_urls(webhooks)
    cfg = detector_config(interval, window, alert_fraction, quorum, min_probes)
    eventargs.watch_until_stopped(store_url, config_path, _watcher(cfg, webhooks), passes)


def _group(group: str | None) -> str | None:
    from collector.api.params import BadRequest, outage_group

    try:
        return outage_group(group)
    except BadRequest as exc:
        raise UsageError(f"--group: {exc.detail}") from None


@throttling_events.command("list")
@eventargs.options(eventargs.STORE + eventargs.LIST)
def list_(store_url: str | None, config_path: Path | None, since: str | None,
          group: str | None, ongoing: bool, as_json: bool) -> None:
    """Stored slowdown events, newest first."""
    from collector.slowdowns.store import SlowdownStore

    since_ts, grp = eventargs.parse_since(since), _group(group)
    events = eventargs.stored_events(store_url, config_path, SlowdownStore, since_ts, grp,
                                     ongoing)
    eventargs.print_events(events, as_json, render)


@throttling_events.command("signal")
@eventargs.options(eventargs.STORE + _DETECT)
@click.option("--group", required=True, help="asn:AS1234 or cc:IR")
@click.option("--since", default=None, help="from this time (ISO 8601; default: a day ago)")
@eventargs.options(eventargs.JSON)
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
    since_ts = eventargs.parse_since(since) or now - 86400.0
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
