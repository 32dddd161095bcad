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

import contextlib
import csv
import gzip
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import IO

from collector.helper.ipdb import IPDB, IPDBError, LoadReport, _parse_ip, _Table, _TableBuilder

UNKNOWN_CC = frozenset({"", "-", "ZZ", "XX", "--"})


class GeoDB:
    """Immutable once built; share it freely, replace it whole on reload."""

    __slots__ = ("_ccs", "_v4", "_v6", "sources")

    def __init__(
        self, v4: _Table, v6: _Table, ccs: Sequence[str], sources: tuple[str, ...] = ()
    ) -> None:
        self._v4 = v4
        self._v6 = v6
        self._ccs = tuple(ccs)
        self.sources = sources

    @classmethod
    def empty(cls) -> GeoDB:
        return cls((array("I"), array("I"), array("I")), ([], [], array("I")), ())

    def __len__(self) -> int:
        return len(self._v4[0]) + len(self._v6[0])

    def country(self, addr: str | IPv4Address | IPv6Address) -> str | None:
        """ISO country where the address is used; None when the database does not know."""
        try:
            parsed = ip_address(addr) if isinstance(addr, str) else addr
        except ValueError:
            return None
        if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped
        starts, ends, index = self._v4 if parsed.version == 4 else self._v6
        value = int(parsed)
        i = bisect_right(starts, value) - 1
        if i >= 0 and value <= ends[i]:
            return self._ccs[index[i]]
        return None


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
    report = LoadReport()
    with contextlib.ExitStack() as stack:
        sources: list[tuple[str, Iterable[Sequence[str]]]] = []
        for path in paths:
            try:
                fh = stack.enter_context(_open_text(path))
            except OSError as exc:
                raise IPDBError(
                    f"cannot read location database {path}: {exc.strerror or exc}"
                ) from None
            sources.append((str(path), csv.reader(fh)))
        try:
            db = _build(sources, report)
        except (OSError, EOFError, gzip.BadGzipFile, csv.Error) as exc:
            raise IPDBError(f"cannot read location database: {exc}") from None
    if len(db) == 0:
        detail = "; ".join(report.errors[:3]) or "no rows"
        names = ", ".join(map(str, paths))
        raise IPDBError(f"location database {names} has no usable range ({detail})")
    return db, report


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return path.open("r", encoding="utf-8", errors="replace", newline="")


def _build(sources: Sequence[tuple[str, Iterable[Sequence[str]]]], report: LoadReport) -> GeoDB:
    ccs: list[str] = []
    cc_index: dict[str, int] = {}
    v4, v6 = _TableBuilder(v4=True), _TableBuilder(v4=False)
    for source_no, (source, rows) in enumerate(sources):
        for lineno, row in enumerate(rows, 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            where = f"{source}:{lineno}"
            if len(row) < 3:
                report.add_error(where, f"expected 3 comma-separated fields, got {len(row)}")
                continue
            try:
                v_start, start = _parse_ip(row[0].strip())
                v_end, end = _parse_ip(row[1].strip())
            except ValueError as exc:
                if lineno == 1:
                    continue  # a header row
                report.add_error(where, str(exc))
                continue
            if v_start != v_end:
                report.add_error(where, "range start and end are of different families")
                continue
            if end < start:
                report.add_error(where, "range end is before its start")
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
            (v4 if v_start == 4 else v6).add(start, end, idx, source_no, lineno)
    names = [s for s, _ in sources]
    t4 = v4.build(report, names)
    t6 = v6.build(report, names)
    report.ranges_v4, report.ranges_v6 = len(t4[0]), len(t6[0])
    return GeoDB(t4, t6, ccs, tuple(names))
