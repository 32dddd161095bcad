"""``vigil-collector query``: what the collector has, from the command line.

    vigil-collector query --store sqlite:///var/lib/vigil/collector.db
    vigil-collector query --cc IR --since 2025-06-13 --limit 50
    vigil-collector query --json | jq .counts.country

Prints the most recent measurements, then counts by verdict, country, network (ASN) and
domain, then the rejection counters (why messages were refused) with ``--quarantine N``
listing the latest quarantined messages.  Filters (--cc, --asn, --domain, --status, --probe,
--since, --until) apply to the measurements and the counts.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from agent.errors import UsageError
from collector.api.jsonview import quarantine_json, summary_json
from collector.cli.storeargs import config_option, open_command_store, store_option
from collector.store import describe_url
from collector.store.base import Dimension, Filter, Store

COUNTED = (Dimension.VERDICT, Dimension.COUNTRY, Dimension.NETWORK, Dimension.DOMAIN)


def parse_time(text: str | None) -> datetime | None:
    """ISO 8601 date or date-time; naive values are UTC."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"not an ISO 8601 time: {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def gather(store: Store, where: Filter, limit: int, top: int, quarantine: int) -> dict[str, Any]:
    overview = store.overview()
    return {
        "store": describe_url(store.url),
        "totals": {
            "measurements": overview.measurements,
            "matching": store.measurement_count(where),
            "probes": overview.probes,
            "quarantined": overview.quarantined,
        },
        "recent": [summary_json(m, time=datetime.isoformat) for m in store.recent(limit, where)],
        "counts": {str(d): dict(store.count_by(d, where, top)) for d in COUNTED},
        "rejections": dict(sorted(overview.rejections.items())),
        "quarantine": [
            quarantine_json(q, time=datetime.isoformat, raw=True)
            for q in store.quarantined(quarantine)
        ]
        if quarantine
        else [],
    }


def _table(title: str, pairs: dict[str, int]) -> list[str]:
    if not pairs:
        return [f"{title}: none"]
    width = max(len(k) for k in pairs) if pairs else 0
    width = max(width, 8)
    lines = [f"{title}:"]
    lines += [f"  {(k or '-'):<{width}}  {v:>9}" for k, v in pairs.items()]
    return lines


def render(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = [
        f"store: {report['store']}",
        f"measurements: {t['measurements']} (matching filters: {t['matching']}), "
        f"probes: {t['probes']}, quarantined: {t['quarantined']}",
        "",
        f"recent measurements ({len(report['recent'])}):",
    ]
    if report["recent"]:
        lines.append(
            f"  {'START (UTC)':<20} {'CC':<3} {'ASN':<10} {'STATUS':<13} {'REASON':<18} INPUT"
        )
    for m in report["recent"]:
        start = m["measurement_start_time"][:19].replace("T", " ")
        reason = m["reason"] or "-"
        lines.append(
            f"  {start:<20} {m['probe_cc']:<3} {m['probe_asn']:<10} {m['status']:<13} "
            f"{reason:<18} {m['input'] or '-'}"
        )
    for dim, title in (("verdict", "by verdict"), ("country", "by country"),
                       ("network", "by network"), ("domain", "by domain")):
        lines.append("")
        lines += _table(title, report["counts"][dim])
    lines.append("")
    lines += _table("rejected messages by reason", report["rejections"])
    if report["quarantine"]:
        lines += ["", "latest quarantined:"]
        for q in report["quarantine"]:
            lines.append(
                f"  #{q['id']} {q['received_at'][:19]} {q['reason']:<18} {q['size']:>8} B "
                f"{q['topic']}: {q['detail'][:80]}"
            )
    return "\n".join(lines)


@click.command()
@store_option
@config_option
@click.option("--limit", default=20, show_default=True, type=click.IntRange(0, 10_000),
              help="recent measurements to list")
@click.option("--top", default=20, show_default=True, type=click.IntRange(1, 10_000),
              help="rows per count table")
@click.option("--since", default=None, help="measurement_start_time >= this (ISO 8601, UTC)")
@click.option("--until", default=None, help="measurement_start_time < this")
@click.option("--cc", default=None, help="country code, e.g. IR")
@click.option("--asn", default=None, help="network, e.g. AS44244")
@click.option("--domain", default=None, help="host of the tested URL")
@click.option("--status", default=None,
              type=click.Choice(["ok", "blocked", "throttled", "down", "inconclusive"]))
@click.option("--probe", default=None, help="probe id")
@click.option("--quarantine", default=0, type=click.IntRange(0, 1000),
              help="also list the latest N quarantined messages")
@click.option("--json", "as_json", is_flag=True, help="one JSON document instead of tables")
def query(store_url: str | None, config_path: Path | None, limit: int, top: int,
          since: str | None, until: str | None, cc: str | None, asn: str | None,
          domain: str | None, status: str | None, probe: str | None, quarantine: int,
          as_json: bool) -> None:
    """Recent measurements and counts by verdict, country, network and domain."""
    where = Filter(
        since=parse_time(since),
        until=parse_time(until),
        probe_cc=cc.upper() if cc else None,
        probe_asn=asn.upper() if asn else None,
        domain=domain.lower() if domain else None,
        status=status,
        probe_id=probe,
    )
    store = open_command_store(store_url, config_path)
    try:
        report = gather(store, where, limit, top, quarantine)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(render(report))
