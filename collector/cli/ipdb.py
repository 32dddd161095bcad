"""``vigil-collector ipdb update|info``: the control helper's IP database.

    vigil-collector ipdb update --out /var/lib/vigil-helper/ip2asn-combined.tsv.gz
    vigil-collector ipdb update --url https://mirror.example/ip2asn.tsv.gz --sha256 HEX --out ...
    vigil-collector ipdb info /var/lib/vigil-helper/ip2asn-combined.tsv.gz

``update`` installs a new file only when it arrived whole and parses (collector.helper.
ipdb_update); the helper picks it up on SIGHUP (``systemctl reload vigil-helper``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from agent.errors import UsageError, VigilError
from collector.helper.ipdb import IPDBError, load
from collector.helper.ipdb_update import DEFAULT_URL, UpdateError, UpdatePolicy, update


class IPDBCommandError(VigilError):
    """An update was refused or the database cannot be read (exit 1)."""


@click.group()
def ipdb() -> None:
    """Download, check and inspect the helper's IP-to-network database."""


@ipdb.command("update")
@click.option("--url", default=DEFAULT_URL, show_default=True, help="iptoasn-format source")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the file the helper loads (--ipdb); replaced atomically")
@click.option("--sha256", default=None, help="expected SHA-256 of the download (hex)")
@click.option("--min-ranges", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--allow-shrink", is_flag=True,
              help="accept a database under half the size of the one it replaces")
def update_command(url: str, out: Path, sha256: str | None, min_ranges: int,
                   allow_shrink: bool) -> None:
    """Fetch the database, check it, and replace OUT only if it is whole and usable."""
    if sha256 is not None and (len(sha256) != 64 or not all(c in "0123456789abcdefABCDEF"
                                                            for c in sha256)):
        raise UsageError("--sha256 takes 64 hexadecimal characters")
    policy = UpdatePolicy(min_ranges=min_ranges, sha256=sha256,
                          min_keep_fraction=0.0 if allow_shrink else 0.5)
    try:
        result = asyncio.run(update(url, out, policy))
    except UpdateError as exc:
        raise IPDBCommandError(f"ipdb update refused, {out} unchanged: {exc}") from None
    click.echo(result.summary())


@ipdb.command("info")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def info(path: Path) -> None:
    """How many ranges PATH holds, how many lines were unusable, and its age."""
    try:
        _, report = load([path])
    except IPDBError as exc:
        raise IPDBCommandError(str(exc)) from None
    age_days = (time.time() - path.stat().st_mtime) / 86400
    click.echo(f"{path}: {report.ranges_v4:,} IPv4 and {report.ranges_v6:,} IPv6 ranges, "
               f"{report.bad_lines:,} unusable lines, {report.unrouted:,} unrouted; "
               f"{age_days:.1f} days old")
    for line in report.errors[:5]:
        click.echo(f"  {line}")
