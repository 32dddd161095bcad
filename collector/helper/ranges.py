"""What the helper's offline address databases share: a table of address ranges, and reading
third-party range files into one.

Both the IP-to-network database (``ipdb``) and the location database (``geodb``) map address
ranges to a value (a network, a country).  In memory, per family, sorted range starts and ends
(``array`` for IPv4, int lists for IPv6) and an index into the database's own de-duplicated
table of values; a lookup is one ``bisect``.  Files are read line by line, bad lines reported
with file:line and skipped (third-party data: one broken line must not take the helper down);
a set of files without a single usable range is an error.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import socket
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import IO, Generic, Protocol, Self, TypeAlias, TypeVar

MAX_REPORTED_ERRORS = 20


class IPDBError(Exception):
    """The database file cannot be used at all (missing, unreadable, no usable line)."""


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


def parse_ip(text: str) -> tuple[int, int]:
    """(version, integer) of an address as text or a decimal IPv4 integer; ValueError when it
    is not one."""
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


def range_error(v_start: int, v_end: int, start: int, end: int) -> str | None:
    """Why a parsed range cannot be used, or None."""
    if v_start != v_end:
        return "range start and end are of different families"
    if end < start:
        return "range end is before its start"
    return None


_Table: TypeAlias = "tuple[list[int] | array[int], list[int] | array[int], array[int]]"


class _TableBuilder:
    """Collects the ranges of one family in compact arrays; ``build`` sorts and drops overlaps.

    Sorted input (iptoasn files are) skips the sort; the line numbers are kept (as integers)
    only to name the lines an overlap check rejects.
    """

    def __init__(self, v4: bool) -> None:
        self.v4 = v4
        self.starts: list[int] | array[int] = array("I") if v4 else []
        self.ends: list[int] | array[int] = array("I") if v4 else []
        self.index = array("I")
        self.sources = array("H")
        self.lines = array("L")

    def add(self, start: int, end: int, value: int, source: int, lineno: int) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.index.append(value)
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


class RangeTable:
    """Address ranges of both families, each to the index of a value; immutable once built."""

    __slots__ = ("_v4", "_v6")

    def __init__(self, v4: _Table, v6: _Table) -> None:
        self._v4 = v4
        self._v6 = v6

    @classmethod
    def empty(cls) -> RangeTable:
        return cls((array("I"), array("I"), array("I")), ([], [], array("I")))

    def __len__(self) -> int:
        return len(self._v4[0]) + len(self._v6[0])

    def find(self, addr: str | IPv4Address | IPv6Address) -> int | None:
        """The value index of the range holding ``addr`` (IPv4-mapped IPv6 as IPv4); None when
        none does or it is not an address."""
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
            return index[i]
        return None


V = TypeVar("V")


class RangeMap(Generic[V]):
    """Address ranges to values (a network, a country), with the files they came from.
    Immutable once built; share it freely, replace it whole on reload."""

    __slots__ = ("_ranges", "_values", "sources")

    def __init__(self, ranges: RangeTable, values: Sequence[V],
                 sources: tuple[str, ...] = ()) -> None:
        self._ranges = ranges
        self._values = tuple(values)
        self.sources = sources

    @classmethod
    def empty(cls) -> Self:
        return cls(RangeTable.empty(), ())

    def __len__(self) -> int:
        return len(self._ranges)

    def value(self, addr: str | IPv4Address | IPv6Address) -> V | None:
        """The value of the range holding ``addr``; None when there is none."""
        i = self._ranges.find(addr)
        return None if i is None else self._values[i]


class RangeTableBuilder:
    """Ranges as files give them (any order, either family); ``build`` makes the table."""

    def __init__(self) -> None:
        self._v4, self._v6 = _TableBuilder(v4=True), _TableBuilder(v4=False)

    def add(self, version: int, start: int, end: int, value: int, source: int,
            lineno: int) -> None:
        (self._v4 if version == 4 else self._v6).add(start, end, value, source, lineno)

    def build(self, report: LoadReport, source_names: Sequence[str]) -> RangeTable:
        """Sorted, overlaps reported and dropped; the kept ranges counted in ``report``."""
        t4 = self._v4.build(report, source_names)
        t6 = self._v6.build(report, source_names)
        report.ranges_v4, report.ranges_v6 = len(t4[0]), len(t6[0])
        return RangeTable(t4, t6)


# ---- files -------------------------------------------------------------------------------------
def open_text(path: Path) -> IO[str]:
    """A range file as text, gunzipped when its name ends in ``.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return path.open("r", encoding="utf-8", errors="replace", newline="")


class Sized(Protocol):
    def __len__(self) -> int: ...


R = TypeVar("R")
DB = TypeVar("DB", bound=Sized)
Sources = Sequence[tuple[str, Iterable[R]]]


def load_files(paths: Sequence[Path], what: str, read: Callable[[IO[str]], Iterable[R]],
               build: Callable[[Sources[R], LoadReport], DB], nothing: str
               ) -> tuple[DB, LoadReport]:
    """Build one database (``what`` names it in errors) from several files, each read into
    rows by ``read``; IPDBError when a file cannot be read or no usable range is found."""
    report = LoadReport()
    with contextlib.ExitStack() as stack:
        sources: list[tuple[str, Iterable[R]]] = []
        for path in paths:
            try:
                fh = stack.enter_context(open_text(path))
            except OSError as exc:
                raise IPDBError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
            sources.append((str(path), read(fh)))
        try:
            db = build(sources, report)
        except (OSError, EOFError, gzip.BadGzipFile, csv.Error) as exc:
            raise IPDBError(f"cannot read {what}: {exc}") from None
    if len(db) == 0:
        detail = "; ".join(report.errors[:3]) or nothing
        raise IPDBError(f"{what} {', '.join(map(str, paths))} has no usable range ({detail})")
    return db, report
