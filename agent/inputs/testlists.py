"""Citizen Lab test lists: parse CSVs into targets; bad rows are reported, never fatal.

Format (github.com/citizenlab/test-lists, ``lists/<cc>.csv``)::

    url,category_code,category_description,date_added,source,notes

Only ``url`` and ``category_code`` are required.  A row is *bad* when its URL is not an
absolute http(s) URL with a valid host, when its category code is missing or malformed, when it
is not valid UTF-8, or when the CSV cannot be split; bad rows are reported as ``file:line:
reason`` (the line where the row *starts*) and skipped.  A file is unusable (``ListError``) only
when it cannot be read or has no header naming the required columns.

The same URL is measured once: duplicates within and across files are dropped after the first
occurrence, compared in a normal form (scheme and host lower-cased, default port and fragment
dropped, empty path as "/").
"""

from __future__ import annotations

import collections
import csv
import functools
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit, urlunsplit

from agent.errors import ListError
from agent.net.addr import is_ip
from agent.wire.record import Target

if TYPE_CHECKING:
    pass

REQUIRED_COLUMNS = ("url", "category_code")
MAX_URL_LENGTH = 2048  # the record schema's limit for ``input``
MAX_FILE_BYTES = 32 * 1024 * 1024
_CATEGORY_RE = re.compile(r"^[A-Z0-9_]{1,32}$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
LISTS_SUBDIR = "testlists"


@dataclass(frozen=True, slots=True)
class ListProblem:
    source: str  # "file:line"
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclass(frozen=True, slots=True)
class ParsedList:
    targets: tuple[Target, ...]
    problems: tuple[ListProblem, ...] = ()
    duplicates: int = 0


# ---- URL checks ---------------------------------------------------------------------------------
def _valid_host(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    if host.startswith("[") or ":" in host:
        return is_ip(host)
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_host.rstrip(".").split(".")
    return len(ascii_host) <= 253 and all(_LABEL_RE.match(label) for label in labels)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be measured, or None when it can."""
    if not url:
        return "empty url"
    if len(url) > MAX_URL_LENGTH:
        return f"url longer than {MAX_URL_LENGTH} characters"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "url contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"invalid url ({exc})"
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        return f"unsupported scheme {parts.scheme!r} (http and https only)"
    host = parts.hostname or ""
    if not _valid_host(host):
        return f"invalid host {host!r}" if host else "url has no host"
    if parts.username is not None or parts.password is not None:
        return "url carries credentials"
    if port == 0:
        return "port 0"
    return None


def normalize_url(url: str) -> str:
    """The dedup key of a *valid* URL (see :func:`url_problem`)."""
    parts: SplitResult = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


# ---- parsing ------------------------------------------------------------------------------------
def _header_index(header: Sequence[str], name: str) -> tuple[dict[str, int], ListProblem | None]:
    index: dict[str, int] = {}
    for i, column in enumerate(header):
        index.setdefault(column.strip().lstrip("\ufeff").lower(), i)
    missing = [c for c in REQUIRED_COLUMNS if c not in index]
    if missing:
        return index, ListProblem(f"{name}:1", f"header lacks column(s) {', '.join(missing)}")
    return index, None


def parse_text(text: str, name: str, *, seen: set[str] | None = None) -> ParsedList:
    """Parse CSV text; ``name`` is used in ``name:line`` messages.

    ``seen`` (dedup keys) is shared across files to drop duplicates between lists; it is
    updated in place.  Raises ListError only when the header is missing or unusable.
    """
    seen = set() if seen is None else seen
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ListError(f"{name}: empty file (no header)") from None
    except csv.Error as exc:
        raise ListError(f"{name}:1: unreadable header: {exc}") from None
    index, header_problem = _header_index(header, name)
    if header_problem is not None:
        raise ListError(str(header_problem))
    url_at, cat_at = index["url"], index["category_code"]
    targets: list[Target] = []
    problems: list[ListProblem] = []
    duplicates = 0
    last_line = reader.line_num
    max_rows = text.count("\n") + 2  # bound the loop even if the csv module misbehaves
    for _ in range(max_rows):
        start = last_line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(ListProblem(f"{name}:{start}", f"unreadable CSV row: {exc}"))
            last_line = reader.line_num
            continue
        last_line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue  # blank line
        source = f"{name}:{start}"
        result = _row(row, url_at, cat_at, source)
        if isinstance(result, str):
            problems.append(ListProblem(source, result))
            continue
        target, url = result
        key = normalize_url(url)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        targets.append(target)
    return ParsedList(tuple(targets), tuple(problems), duplicates)


def _row(
    row: Sequence[str], url_at: int, cat_at: int, source: str
) -> str | tuple[Target, str]:
    """The problem with ``row`` (a string), or its target and URL."""
    if any("\udc80" <= ch <= "\udcff" for cell in row for ch in cell):
        return "not valid UTF-8"
    if len(row) <= max(url_at, cat_at):
        return f"expected at least {max(url_at, cat_at) + 1} fields, got {len(row)}"
    url = row[url_at].strip()
    category = row[cat_at].strip()
    problem = url_problem(url)
    if problem is not None:
        return problem
    if not category:
        return "empty category_code"
    if not _CATEGORY_RE.match(category):
        return f"invalid category_code {category[:40]!r}"
    return Target(input=url, category_code=category, source=source), url


def read_file(path: Path, *, seen: set[str] | None = None) -> ParsedList:
    """Parse one list file; ListError when it cannot be read at all."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ListError(f"{path}: {size} bytes, over the {MAX_FILE_BYTES} byte limit")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ListError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ListError(f"{path}: is a directory") from None
    except OSError as exc:
        raise ListError(f"{path}: cannot read: {exc.strerror}") from None
    # surrogateescape keeps undecodable bytes as markers so only *their* rows are rejected.
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    return parse_text(text, str(path), seen=seen)


def read_files(paths: Iterable[Path]) -> ParsedList:
    """Parse several lists; a URL present in two lists is measured once (first one wins)."""
    seen: set[str] = set()
    targets: list[Target] = []
    problems: list[ListProblem] = []
    duplicates = 0
    for path in paths:
        parsed = read_file(path, seen=seen)
        targets.extend(parsed.targets)
        problems.extend(parsed.problems)
        duplicates += parsed.duplicates
    return ParsedList(tuple(targets), tuple(problems), duplicates)


# ---- categories -----------------------------------------------------------------------------
NEW_LEGEND = "00-LEGEND-new_category_codes.csv"
OLD_LEGEND = "00-LEGEND-category_codes.csv"


@functools.lru_cache(maxsize=1)
def category_aliases() -> Mapping[str, str]:
    """Every category code the bundled legends know, mapped to its current code.

    Citizen Lab renamed some codes (``GAYL`` became ``LGBT``, ``POLT`` became ``POLR``...);
    older lists and operators' own lists still carry the old ones, so excluding ``LGBT`` must
    exclude ``GAYL`` rows too.  A code only in the old legend maps to itself.
    """
    aliases: dict[str, str] = {}
    folder = bundled_dir()
    with open(folder / NEW_LEGEND, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            new = (row.get("New Code") or "").strip().upper()
            if not new:
                continue
            aliases[new] = new
            for old in (row.get("Replaces old code(s)") or "").split():
                aliases.setdefault(old.strip().upper(), new)
    with open(folder / OLD_LEGEND, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            code = (row.get("CategoryCode") or "").strip().upper()
            if code:
                aliases.setdefault(code, code)
    return aliases


def category_set(codes: Iterable[str]) -> frozenset[str]:
    """The canonical codes of ``codes`` (case-insensitive); ValueError naming unknown ones.

    An unknown code is an error, not a no-op: a typo (``LGTB``) must never leave a category the
    volunteer meant to avoid in the plan.
    """
    aliases = category_aliases()
    wanted = [c.strip().upper() for c in codes if c.strip()]
    unknown = sorted({c for c in wanted if c not in aliases})
    if unknown:
        known = " ".join(sorted(set(aliases.values())))
        raise ValueError(f"unknown category code(s) {', '.join(unknown)}; known: {known}")
    return frozenset(aliases[c] for c in wanted)


def excluded_as(category_code: str | None, excluded: frozenset[str]) -> str | None:
    """The canonical code that excludes this category, or None when it is measured.

    Inputs without a category are never excluded by this (an experiment that has a category of
    its own, like the Tor test's ``ANON``, passes that instead).
    """
    if not excluded or not category_code:
        return None
    code = category_code.strip().upper()
    canonical = category_aliases().get(code, code)
    return canonical if canonical in excluded else None


def without_categories(
    targets: Iterable[Target], excluded: frozenset[str], default_code: str | None = None
) -> tuple[list[Target], collections.Counter[str]]:
    """(targets kept, how many were left out per canonical category).

    ``default_code`` is the category of targets that carry none (an experiment's own).
    """
    kept: list[Target] = []
    dropped: collections.Counter[str] = collections.Counter()
    for target in targets:
        code = excluded_as(target.category_code or default_code, excluded)
        if code is None:
            kept.append(target)
        else:
            dropped[code] += 1
    return kept, dropped


def describe_dropped(dropped: Mapping[str, int]) -> str:
    """``"left out 77 URL(s) in excluded categories (LGBT 77)"``, or "" when none were."""
    if not dropped:
        return ""
    parts = ", ".join(f"{code} {n}" for code, n in sorted(dropped.items()))
    return f"left out {sum(dropped.values())} input(s) in excluded categories ({parts})"


# ---- where lists live ---------------------------------------------------------------------------
def bundled_dir() -> Path:
    """The lists shipped with the agent (with their CC BY-NC-SA attribution, SOURCE.txt)."""
    return Path(str(resources.files("agent").joinpath("data", LISTS_SUBDIR)))


def lists_dir(state_dir: Path) -> Path:
    """Updated lists (``vigil-agent lists update``) when present, else the bundled ones."""
    updated = state_dir / LISTS_SUBDIR
    if (updated / "global.csv").is_file():
        return updated
    return bundled_dir()


def default_paths(directory: Path, probe_cc: str, extra_countries: Iterable[str] = ()) -> (
    list[Path]
):
    """The global list plus the probe's country list and any configured ones that exist."""
    paths = [directory / "global.csv"]
    for cc in (probe_cc, *extra_countries):
        candidate = directory / f"{cc.lower()}.csv"
        if cc.upper() != "ZZ" and candidate.is_file() and candidate not in paths:
            paths.append(candidate)
    return paths
