"""Keeping the archive: ``vigil-collector prune`` (retention) and ``vigil-collector backup``.

    vigil-collector prune --keep-days 730          # or --before 2024-01-01
    vigil-collector backup --out /var/backups/vigil-2026-06-01.db

``prune`` deletes measurements that started before the cut-off (and status sightings and
quarantined messages received before it) in batches, one short transaction each, so the
ingest keeps writing meanwhile; the rollups behind /api/v1/aggregation are decremented in the
same transactions and stay exact.  ``backup`` copies a live SQLite store consistently (SQLite's
online backup: readers and the ingest go on); restoring is copying the file back while the
collector is stopped.  PostgreSQL stores are backed up with pg_dump (docs/operations.md).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from agent.errors import UsageError
from collector.api.params import BadRequest, parse_time
from collector.cli.storeargs import config_option, open_command_store, store_option
from collector.store.sqlite import SqliteStore

MAX_KEEP_DAYS = 100 * 366


@click.command("prune")
@store_option
@config_option
@click.option("--before", default=None, help="Delete measurements that started before this "
              "time (RFC 3339 or a date, UTC)")
@click.option("--keep-days", type=int, default=None,
              help="Delete measurements older than this many days")
@click.option("--batch", type=click.IntRange(1, 100_000), default=5000, show_default=True,
              help="Rows deleted per transaction")
def prune(store_url: str | None, config_path: Path | None, before: str | None,
          keep_days: int | None, batch: int) -> None:
    """Delete measurements older than the retention period, keeping aggregates exact."""
    if (before is None) == (keep_days is None):
        raise UsageError("give exactly one of --before or --keep-days")
    if keep_days is not None:
        if not 1 <= keep_days <= MAX_KEEP_DAYS:
            raise UsageError(f"--keep-days must be from 1 to {MAX_KEEP_DAYS}")
        cutoff = datetime.now(UTC) - timedelta(days=keep_days)
    else:
        try:
            cutoff = parse_time("before", str(before))
        except BadRequest as exc:
            raise UsageError(f"--before: {exc.detail}") from None
    store = open_command_store(store_url, config_path)
    try:
        deleted = store.prune(cutoff, batch=batch)
        left = store.measurement_count()
    finally:
        store.close()
    click.echo(f"deleted {deleted} measurement(s) started before "
               f"{cutoff.isoformat().replace('+00:00', 'Z')}; {left} kept")


@click.command("backup")
@store_option
@config_option
@click.option("--out", "out_path", required=True,
              type=click.Path(path_type=Path, dir_okay=False), help="Backup file to write")
def backup(store_url: str | None, config_path: Path | None, out_path: Path) -> None:
    """Copy a live SQLite store to a file, consistently, while the collector runs."""
    if out_path.exists():
        raise UsageError(f"{out_path} exists: choose a new file (backups are never overwritten)")
    store = open_command_store(store_url, config_path)
    try:
        if not isinstance(store, SqliteStore):
            raise UsageError("backup copies SQLite stores; back up PostgreSQL with pg_dump "
                             "(see docs/operations.md)")
        n = store.backup(out_path)
    finally:
        store.close()
    click.echo(f"{out_path}: {n} measurement(s)")
