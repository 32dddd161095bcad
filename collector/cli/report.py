"""``vigil-collector report``: an incident report a researcher can publish, with its evidence.

    vigil-collector report --cc IQ --since 2026-05-01 --until 2026-06-01 [--asn AS50710] \\
        --out report-iq/

writes ``report-iq/report.html`` (self-contained: charts, blocked domains with technique and
first/last seen, confirmed fingerprints, outage events, methodology and limits) and
``report-iq/evidence/`` (the signed envelopes the report cites, the probes' public keys, and
``verify.py``, which re-verifies all of it offline).
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from agent.errors import UsageError
from collector.api.params import BadRequest, parse_time
from collector.cli.storeargs import config_option, open_command_store, store_option
from collector.outages.store import OutageEventStore
from collector.report.build import write_report
from collector.report.summary import Scope

_CC = re.compile(r"^[A-Za-z]{2}$")
_ASN = re.compile(r"^(?:AS)?([0-9]{1,10})$", re.IGNORECASE)


@click.command("report")
@store_option
@config_option
@click.option("--cc", required=True, help="Country (ISO 3166-1 alpha-2), e.g. IQ")
@click.option("--since", required=True, help="Start, RFC 3339 or a date (UTC), inclusive")
@click.option("--until", required=True, help="End, RFC 3339 or a date (UTC), exclusive")
@click.option("--asn", default=None, help="Only this network, e.g. AS50710")
@click.option("--out", "out_dir", required=True,
              type=click.Path(path_type=Path, file_okay=False), help="Folder to write into")
@click.option("--pdf", is_flag=True, help="Also print report.pdf (needs Chromium)")
def report(store_url: str | None, config_path: Path | None, cc: str, since: str, until: str,
           asn: str | None, out_dir: Path, pdf: bool) -> None:
    """Write an HTML incident report and an offline-verifiable evidence bundle."""
    if not _CC.match(cc):
        raise UsageError(f"--cc must be a two-letter country code, not {cc!r}")
    network = None
    if asn is not None:
        m = _ASN.match(asn)
        if not m:
            raise UsageError(f"--asn must look like AS1234, not {asn!r}")
        network = f"AS{int(m.group(1))}"
    try:
        lo, hi = parse_time("since", since), parse_time("until", until)
    except BadRequest as exc:
        raise UsageError(f"--{exc.param}: {exc.detail}") from None
    if lo >= hi:
        raise UsageError("--since must be earlier than --until")
    store = open_command_store(store_url, config_path)
    try:
        events = OutageEventStore(store).events(since=lo.timestamp(), limit=100_000)
        result = write_report(store, events, Scope(cc.upper(), lo, hi, network), out_dir,
                              pdf=pdf)
    finally:
        store.close()
    click.echo(f"{result.report}: {result.measurements} measurements, "
               f"{result.blocked_domains} blocked domain(s), {result.cited} envelope(s) cited")
    click.echo(f"verify offline: python3 {result.evidence / 'verify.py'}")
