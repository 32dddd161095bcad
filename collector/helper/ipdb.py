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

In memory: per family, sorted range starts and ends (``array`` for IPv4, int lists for IPv6)
and an index into a de-duplicated table of (asn, cc, name); lookup is one ``bisect``.
"""

from __future__ import annotations

import gzip
import socket
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import TypeAlias

MAX_NAME = 200
MAX_REPORTED_ERRORS = 20


class IPDBError(Exception):
    """The database file cannot be used at all (missing, unreadable, no usable line)."""


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    asn: int  # 0 when unknown
    cc: str  # ISO 3166 alpha-2, "ZZ" when unknown
    name: str

    def client_json(self) -> dict[str, str]:
        """The ``client`` object of the control protocol."""
        return {"asn": f"AS{self.asn}", "network_name": self.name, "cc": self.cc}


UNKNOWN = NetworkInfo(0, "ZZ", "")


@dataclass(slots=True)
class LoadReport:
    """What loading found: kept ranges, skipped lines and the first few reasons, with file:line."""

    ranges_v4: int = 0
    ranges_v6: int = 0
    unrouted: int = 0
    bad_lines: int = 0
    errors: list[str] = field(default_factory=list)

    def add_error(self, where: str, why: str) -> None:
        self.bad_lines += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(f"{where}: {why}")


def _parse_ip(text: str) -> tuple[int, int]:
    """(version, integer) of an address in iptoasn text; ValueError when it is not one."""
    if text.isdigit():
        value = int(text)
        if value > 0xFFFFFFFF:
            raise ValueError(f"integer address {text} is over 32 bits")
        return 4, value
    try:
        if ":" in text:
            return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        raise ValueError(f"not an IP address: {text[:60]!r}") from None


_Table: TypeAlias = "tuple[list[int] | array[int], list[int] | array[int], array[int]]"


class _TableBuilder:
    """Collects the ranges of one family in compact arrays; ``build`` sorts and drops overlaps.

    iptoasn files are sorted already, so the sort is skipped when the input is in order; the
    line numbers are kept (as integers) only to name the lines an overlap check rejects.
    """

    def __init__(self, v4: bool) -> None:
        self.v4 = v4
        self.starts: list[int] | array[int] = array("I") if v4 else []
        self.ends: list[int] | array[int] = array("I") if v4 else []
        self.index = array("I")
        self.sources = array("H")
        self.lines = array("L")

    def add(self, start: int, end: int, info: int, source: int, lineno: int) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.index.append(info)
        self.sources.append(source)
        self.lines.append(lineno)

    def build(self, report: LoadReport, source_names: Sequence[str]) -> _Table:
        n = len(self.starts)
        starts, ends = self.starts, self.ends
        order: Iterable[int] = range(n)
        if any(starts[i] > starts[i + 1] for i in range(n - 1)):
            order = sorted(range(n), key=starts.__getitem__)
        out_starts: list[int] | array[int] = array("I") if self.v4 else []
        out_ends: list[int] | array[int] = array("I") if self.v4 else []
        out_index = array("I")
        prev_end = -1
        for i in order:
            if starts[i] <= prev_end:
                where = f"{source_names[self.sources[i]]}:{self.lines[i]}"
                report.add_error(where, "range overlaps the previous one; skipped")
                continue
            out_starts.append(starts[i])
            out_ends.append(ends[i])
            out_index.append(self.index[i])
            prev_end = ends[i]
        return out_starts, out_ends, out_index


class IPDB:
    """Immutable once built; share it freely, replace it whole on reload."""

    __slots__ = ("_infos", "_v4", "_v6", "sources")

    def __init__(
        self,
        v4: _Table,
        v6: _Table,
        infos: Sequence[NetworkInfo],
        sources: tuple[str, ...] = (),
    ) -> None:
        self._v4 = v4
        self._v6 = v6
        self._infos = tuple(infos)
        self.sources = sources

    @classmethod
    def empty(cls) -> IPDB:
        return cls((array("I"), array("I"), array("I")), ([], [], array("I")), ())

    def __len__(self) -> int:
        return len(self._v4[0]) + len(self._v6[0])

    def lookup(self, addr: str | IPv4Address | IPv6Address) -> NetworkInfo:
        """Network of an address; ``UNKNOWN`` when absent, unrouted or not an address."""
        try:
            parsed = ip_address(addr) if isinstance(addr, str) else addr
        except ValueError:
            return UNKNOWN
        if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped
        table = self._v4 if parsed.version == 4 else self._v6
        starts, ends, index = table
        value = int(parsed)
        i = bisect_right(starts, value) - 1
        if i >= 0 and value <= ends[i]:
            return self._infos[index[i]]
        return UNKNOWN


def parse_lines(lines: Iterable[str], source: str, report: LoadReport | None = None) -> IPDB:
    """Build a database from iptoasn lines (``source`` names them in error messages)."""
    return _build([(source, lines)], report if report is not None else LoadReport())


def load(paths: Sequence[Path]) -> tuple[IPDB, LoadReport]:
    """Load one or more files (v4, v6 or combined) into one database.

    Raises IPDBError when a file cannot be read or no usable range is found at all.
    """
    report = LoadReport()
    opened: list[tuple[str, Iterable[str]]] = []
    try:
        for path in paths:
            try:
                opened.append((str(path), _open_text(path)))
            except OSError as exc:
                raise IPDBError(f"cannot read IP database {path}: {exc.strerror or exc}") from None
        try:
            db = _build(opened, report)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise IPDBError(f"cannot read IP database: {exc}") from None
    finally:
        for _, fh in opened:
            close = getattr(fh, "close", None)
            if close is not None:
                close()
    if len(db) == 0:
        detail = "; ".join(report.errors[:3]) or "no lines"
        raise IPDBError(f"IP database {', '.join(map(str, paths))} has no usable range ({detail})")
    return db, report


def _open_text(path: Path) -> Iterator[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return path.open("r", encoding="utf-8", errors="replace", newline="")


def _build(sources: Sequence[tuple[str, Iterable[str]]], report: LoadReport) -> IPDB:
    infos: list[NetworkInfo] = []
    info_index: dict[tuple[int, str, str], int] = {}
    v4, v6 = _TableBuilder(v4=True), _TableBuilder(v4=False)
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
                v_start, start = _parse_ip(parts[0].strip())
                v_end, end = _parse_ip(parts[1].strip())
                asn = int(parts[2].strip().removeprefix("AS"))
            except ValueError as exc:
                report.add_error(where, str(exc))
                continue
            if v_start != v_end:
                report.add_error(where, "range start and end are of different families")
                continue
            if end < start:
                report.add_error(where, "range end is before its start")
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
            (v4 if v_start == 4 else v6).add(start, end, idx, source_no, lineno)
    names = [s for s, _ in sources]
    t4 = v4.build(report, names)
    t6 = v6.build(report, names)
    report.ranges_v4, report.ranges_v6 = len(t4[0]), len(t6[0])
    return IPDB(t4, t6, infos, tuple(s for s, _ in sources))
