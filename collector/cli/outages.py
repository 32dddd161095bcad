"""``vigil-collector outages``: shutdown detection per network and country.

    vigil-collector outages check --store URL [--heartbeat 60] [--webhook URL]... [--json]
    vigil-collector outages watch --store URL [--heartbeat 60] [--webhook URL]... [--passes N]
    vigil-collector outages list  --store URL [--since ISO] [--group asn:AS1234] [--ongoing]

``check`` runs one detection pass now (events are saved in the store and new ones notified),
``watch`` repeats it every quarter heartbeat interval until SIGTERM (or ``--passes``), ``list``
prints the stored events.  The heartbeat interval must match the agents' status interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agent.errors import UsageError
from collector.cli import eventargs
from collector.cli.eventargs import fmt_time
from collector.outages.detector import DetectorConfig, OutageEvent
from collector.store import Store

if TYPE_CHECKING:
    from collector.outages.watch import Watcher


def render(events: Sequence[OutageEvent]) -> str:
    if not events:
        return "no outages"
    lines = [f"{'group':<16} {'start':<21} {'end':<21} {'probes':>6}  share  confirmed  id"]
    for e in events:
        lines.append(
            f"{e.group:<16} {fmt_time(e.start):<21} {fmt_time(e.end):<21} {len(e.affected):>6}  "
            f"{e.min_share:.2f}/{e.baseline_share:.2f}  {len(e.confirmed_by):>9}  {e.event_id}"
        )
    return "\n".join(lines)


def _detector(heartbeat: float, window: float, alert: float, min_probes: float
              ) -> DetectorConfig:
    if not 0 < alert < 1:
        raise UsageError("--alert-fraction must be between 0 and 1")
    return DetectorConfig(heartbeat_interval=heartbeat, baseline_window=window,
                          alert_fraction=alert, min_expected_probes=min_probes)


def _watcher(heartbeat: float, window: float, alert: float, min_probes: float,
             webhooks: tuple[str, ...]) -> Callable[[Store], Watcher]:
    """The detector both ``check`` and ``watch`` run (imported late: the CLI starts fast)."""
    def make(store: Store) -> Watcher:
        from collector.outages.watch import WatchConfig, Watcher

        return Watcher(store, WatchConfig(_detector(heartbeat, window, alert, min_probes),
                                          webhooks))
    return make


_DETECT = [
    click.option("--heartbeat", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
                 help="the agents' status (heartbeat) interval, seconds"),
    click.option("--window", type=click.FloatRange(60, 30 * 86400), default=86400.0,
                 show_default=True, help="baseline window, seconds (the recent median)"),
    click.option("--alert-fraction", type=float, default=0.5, show_default=True,
                 help="alert when the share online drops under this fraction of its median"),
    click.option("--min-probes", type=click.FloatRange(0.5, 1e6), default=1.0,
                 show_default=True, help="expected online probes a group needs to be judged"),
]


@click.group()
def outages() -> None:
    """Shutdowns per network (ASN) and country, from probe presence."""


@outages.command("check")
@eventargs.options(eventargs.STORE + _DETECT + eventargs.WEBHOOKS + eventargs.JSON)
def check(store_url: str | None, config_path: Path | None, heartbeat: float, window: float,
          alert_fraction: float, min_probes: float, webhooks: tuple[str, ...],
          as_json: bool) -> None:
    """One detection pass now: save events, notify new ones, print them."""
    eventargs.check_webhook_urls(webhooks)
    events = eventargs.check_once(store_url, config_path,
                                  _watcher(heartbeat, window, alert_fraction, min_probes, webhooks))
    eventargs.print_events(events, as_json, render)


@outages.command("watch")
@eventargs.options(eventargs.STORE + _DETECT + eventargs.WEBHOOKS + eventargs.PASSES)
def watch(store_url: str | None, config_path: Path | None, heartbeat: float, window: float,
          alert_fraction: float, min_probes: float, webhooks: tuple[str, ...],
          passes: int) -> None:
    """Detect continuously (every quarter heartbeat) until SIGTERM."""
    eventargs.check_webhook_urls(webhooks)
    make = _watcher(heartbeat, window, alert_fraction, min_probes, webhooks)
    eventargs.watch_until_stopped(store_url, config_path, make, passes)


@outages.command("list")
@eventargs.options(eventargs.STORE + eventargs.LIST)
def list_(store_url: str | None, config_path: Path | None, since: str | None,
          group: str | None, ongoing: bool, as_json: bool) -> None:
    """Stored outage events, newest first."""
    from collector.outages.store import OutageEventStore

    since_ts = eventargs.parse_since(since)
    events = eventargs.stored_events(store_url, config_path, OutageEventStore, since_ts, group,
                                     ongoing)
    eventargs.print_events(events, as_json, render)
