"""Offline IP-to-network database: which ASN, network name and country an address belongs to.

The control helper tells each probe the ASN/network/country of the address its request came
from, so a Raspberry Pi needs no GeoIP file and the volunteer's IP never enters a record.  The
lookup is local (no third-party service learns the address) and the database is public data the
operator refreshes by replacing the file and sending SIGHUP to the helper.

File format: iptoasn.com ``ip2asn-v4.tsv`` / ``ip2asn-v6.tsv`` / ``ip2asn-combined.tsv``
(optionally gzip-compressed, ``.gz``), one range per line::

    range_start<TAB>range_end<TAB>AS_number<TAB>country_code<TAB>AS_description

Addresses are dotted/colon text or, as in ``ip2asn-v4-u32.tsv``, decimal integers.  AS 0 rows
("Not routed") are unknown space and skipped; country ``None`` becomes ``ZZ``.  Bad lines are
reported with file:line and skipped (third-party data: one broken line must not take the helper
down); a file without a single usable range is an error.

In memory: a range table (``collector.helper.ranges``) into a de-duplicated table of
(asn, cc, name).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from collector.helper.ranges import IPDBError as IPDBError
from collector.helper.ranges import LoadReport as LoadReport
from collector.helper.ranges import (
    RangeMap,
    RangeTableBuilder,
    load_files,
    parse_ip,
    range_error,
)

MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    asn: int  # 0 when unknown
    cc: str  # ISO 3166 alpha-2, "ZZ" when unknown
    name: str

    def client_json(self) -> dict[str, str]:
        """The ``client`` object of the control protocol."""
        return {"asn": f"AS{self.asn}", "network_name": self.name, "cc": self.cc}


UNKNOWN = NetworkInfo(0, "ZZ", "")


class IPDB(RangeMap[NetworkInfo]):
    """Immutable once built; share it freely, replace it whole on reload."""

    __slots__ = ()

    def lookup(self, addr: str | IPv4Address | IPv6Address) -> NetworkInfo:
        """Network of an address; ``UNKNOWN`` when absent, unrouted or not an address."""
        info = self.value(addr)
        return UNKNOWN if info is None else info


def parse_lines(lines: Iterable[str], source: str, report: LoadReport | None = None) -> IPDB:
    """Build a database from iptoasn lines (``source`` names them in error messages)."""
    return _build([(source, lines)], report if report is not None else LoadReport())


def load(paths: Sequence[Path]) -> tuple[IPDB, LoadReport]:
    """Load one or more files (v4, v6 or combined) into one database.

    Raises IPDBError when a file cannot be read or no usable range is found at all.
    """
    return load_files(paths, "IP database", lambda fh: fh, _build, "no lines")


def _build(sources: Sequence[tuple[str, Iterable[str]]], report: LoadReport) -> IPDB:
    infos: list[NetworkInfo] = []
    info_index: dict[tuple[int, str, str], int] = {}
    table = RangeTableBuilder()
    for source_no, (source, lines) in enumerate(sources):
        for lineno, raw in enumerate(lines, 1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            where = f"{source}:{lineno}"
            parts = line.split("\t", 4)
            if len(parts) < 4:
                report.add_error(where, f"expected 5 tab-separated fields, got {len(parts)}")
                continue
            try:
                v_start, start = parse_ip(parts[0].strip())
                v_end, end = parse_ip(parts[1].strip())
                asn = int(parts[2].strip().removeprefix("AS"))
            except ValueError as exc:
                report.add_error(where, str(exc))
                continue
            if why := range_error(v_start, v_end, start, end):
                report.add_error(where, why)
                continue
            if not 0 <= asn <= 0xFFFFFFFF:
                report.add_error(where, f"AS number {asn} out of range")
                continue
            if asn == 0:
                report.unrouted += 1
                continue
            cc = parts[3].strip().upper()
            if len(cc) != 2 or not cc.isascii() or not cc.isalpha():
                cc = "ZZ"
            name = " ".join(parts[4].split())[:MAX_NAME] if len(parts) > 4 else ""
            key = (asn, cc, name)
            idx = info_index.get(key)
            if idx is None:
                idx = info_index[key] = len(infos)
                infos.append(NetworkInfo(asn, cc, name))
            table.add(v_start, start, end, idx, source_no, lineno)
    names = [s for s, _ in sources]
    return IPDB(table.build(report, names), infos, tuple(names))
