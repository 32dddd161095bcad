"""Offline IP-location database: in which country is an address used (not registered)?

The IP-to-ASN database (``ipdb``) gives the country where a network is *registered*.  For
multinational, satellite and mobile networks that is often not where the probe is: a
Starlink terminal in Iran is registered in the US, an Orange customer in Cameroon may be in a
French-registered block.  A location database, built from geofeeds and measurements, says
where addresses are used.  The helper reports the location country as ``cc`` where it has one
and keeps the registration country beside it (``registration_cc``).

File format: the common CSV layout of free country databases (DB-IP "IP to Country Lite",
IPinfo's country CSV, IP2Location LITE DB1 for IPv4), optionally gzip-compressed::

    range_start,range_end,country_code[,anything else]

Addresses are text (v4 or v6) or, as IP2Location writes IPv4, decimal integers; quoted fields
are fine.  A header row, rows for unknown countries (``-``, ``ZZ``, empty) and bad rows are
skipped; bad rows are reported with file:line (third-party data: one broken row must not take
the helper down); a file without a single usable range is an error.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from collector.helper.ipdb import IPDB
from collector.helper.ranges import (
    LoadReport,
    RangeMap,
    RangeTableBuilder,
    load_files,
    parse_ip,
    range_error,
)

UNKNOWN_CC = frozenset({"", "-", "ZZ", "XX", "--"})


class GeoDB(RangeMap[str]):
    """Immutable once built; share it freely, replace it whole on reload."""

    __slots__ = ()

    def country(self, addr: str | IPv4Address | IPv6Address) -> str | None:
        """ISO country where the address is used; None when the database does not know."""
        return self.value(addr)


def client_info(ipdb: IPDB, geo: GeoDB, address: str) -> dict[str, str]:
    """The ``client`` object of the control protocol: network, location and registration.

    ``cc`` is where the address is used when the location database knows, else where its
    network is registered; ``registration_cc`` is always the registration country.
    """
    info = ipdb.lookup(address)
    located = geo.country(address)
    return {
        "asn": f"AS{info.asn}",
        "network_name": info.name,
        "cc": located or info.cc,
        "registration_cc": info.cc,
    }


def parse_rows(rows: Iterable[Sequence[str]], source: str, report: LoadReport) -> GeoDB:
    return _build([(source, rows)], report)


def load(paths: Sequence[Path]) -> tuple[GeoDB, LoadReport]:
    """Load one or more location files into one database; raises IPDBError when unusable."""
    return load_files(paths, "location database", csv.reader, _build, "no rows")


def _build(sources: Sequence[tuple[str, Iterable[Sequence[str]]]], report: LoadReport) -> GeoDB:
    ccs: list[str] = []
    cc_index: dict[str, int] = {}
    table = RangeTableBuilder()
    for source_no, (source, rows) in enumerate(sources):
        for lineno, row in enumerate(rows, 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            where = f"{source}:{lineno}"
            if len(row) < 3:
                report.add_error(where, f"expected 3 comma-separated fields, got {len(row)}")
                continue
            try:
                v_start, start = parse_ip(row[0].strip())
                v_end, end = parse_ip(row[1].strip())
            except ValueError as exc:
                if lineno == 1:
                    continue  # a header row
                report.add_error(where, str(exc))
                continue
            if why := range_error(v_start, v_end, start, end):
                report.add_error(where, why)
                continue
            cc = row[2].strip().upper()
            if cc in UNKNOWN_CC:
                report.unrouted += 1
                continue
            if len(cc) != 2 or not cc.isascii() or not cc.isalpha():
                report.add_error(where, f"not a country code: {row[2][:20]!r}")
                continue
            idx = cc_index.get(cc)
            if idx is None:
                idx = cc_index[cc] = len(ccs)
                ccs.append(cc)
            table.add(v_start, start, end, idx, source_no, lineno)
    names = [s for s, _ in sources]
    return GeoDB(table.build(report, names), ccs, tuple(names))
