"""Known blocking fingerprints: load them once, then match DNS answers and HTTP responses.

A fingerprint is a fact about a censor ("Iran's filter answers 10.10.34.35", "this text is the
body of Etisalat's blockpage"), gathered by OONI, Censored Planet and Citizen Lab in the public
ooni/blocking-fingerprints collection.  A match is the only thing that makes a verdict
``confirmed``; everything else Vigil concludes is differential evidence against the control.

The file format (a CSV with the upstream column names, optional ``#`` preamble) is documented in
docs/fingerprints.md.  ``Fingerprints.load()`` reads the shipped file or upstream CSVs alike.

Loading is done once per agent run on a Raspberry Pi, so it is a single pass: rows are
validated, regexes compiled and DNS patterns put into a dict.  A malformed row is reported as
``file:line: message`` (``Fingerprints.problems`` and a log warning) and skipped; only a file
that cannot be read at all (missing, no usable header) raises ``ConfigError``.

Matching semantics (why they are what they are):

* ``scope`` ``fp`` marks a *known false positive*: a page that looks like a blockpage but is
  not (Cloudflare error pages, parked domains).  It never confirms anything, and it vetoes the
  *weak* matches (``vbw``, vague blocking words, or confidence below 5) on the same response,
  because those vague words are exactly what such pages contain.  A strong, specific
  fingerprint (a national filter's page) still confirms: the upstream sources disagree on a few
  pages (OONI lists Cloudflare's challenge as a product blockpage, Censored Planet lists
  "Ray ID:" as a false positive) and the specific fact wins over the generic one.
* Body patterns are case-sensitive and run on the first bytes of the body (what the agent
  keeps) plus the page title; ``full`` body patterns only match when that head is the whole
  body.  Header names are case-insensitive, values case-sensitive.  ``header.location``
  patterns also run on every ``Location`` of the redirect chain the agent followed.
* DNS patterns match an answer value: an IP address (compared canonically, so ``d0::11`` and
  ``d0:0::11`` are the same) or a CNAME target (lower-case, no trailing dot).
"""

from __future__ import annotations

import csv
import enum
import functools
import io
import ipaddress
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from agent.errors import ConfigError

log = logging.getLogger(__name__)

#: The shipped, pre-validated fingerprint file (built by scripts/build_fingerprints.py).
DEFAULT_FILE = "fingerprints.csv"
_DATA_PACKAGE = "agent"
_DATA_DIR = ("data", "fingerprints")

REQUIRED_COLUMNS: tuple[str, ...] = ("name", "scope", "location_found", "pattern_type", "pattern")
OPTIONAL_COLUMNS: tuple[str, ...] = ("confidence_no_fp", "expected_countries")
#: Columns written to the shipped file, in order (upstream names, upstream meaning).
SHIPPED_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

MAX_NAME_LENGTH = 128  # the record schema's limit for verdict.fingerprint
WEAK_CONFIDENCE = 5  # confidence_no_fp below this is treated like a vague blocking word
_GRAM = 4  # length of the substring keys of the body index

_HEADER_LOCATION = re.compile(r"header\.([A-Za-z0-9!#$%&'*+.^_`|~-]+)")
_COUNTRY = re.compile(r"[A-Z]{2}")
_SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes kept by surrogateescape


class Scope(enum.StrEnum):
    """Who deploys the blocking the fingerprint identifies (upstream vocabulary)."""

    NAT = "nat"  # national filter
    ISP = "isp"  # one internet service provider
    PROD = "prod"  # a commercial filtering product
    INST = "inst"  # an institution (school, company)
    VBW = "vbw"  # vague blocking word: weak evidence on its own
    FP = "fp"  # known false positive: never confirms
    INJB = "injb"  # injected content that blocks (router update pages)
    PROV = "prov"  # the content provider itself geo-blocks


class PatternType(enum.StrEnum):
    FULL = "full"
    PREFIX = "prefix"
    CONTAINS = "contains"
    REGEXP = "regexp"


@dataclass(frozen=True, slots=True)
class LoadProblem:
    """One malformed row, skipped: where it is and what is wrong with it."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """One validated fingerprint row.  ``pattern`` is canonical for DNS (see module doc)."""

    name: str
    scope: Scope
    location: str  # "dns", "body" or "header.<lower-case name>"
    pattern_type: PatternType
    pattern: str
    confidence: int | None = None  # upstream confidence_no_fp, 0..10
    countries: tuple[str, ...] = ()
    origin: str = ""  # "file:line" it was loaded from
    regex: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @property
    def is_false_positive(self) -> bool:
        return self.scope is Scope.FP

    @property
    def is_weak(self) -> bool:
        """Vague evidence: confirms only when the response also differs from the control."""
        return self.scope is Scope.VBW or (
            self.confidence is not None and self.confidence < WEAK_CONFIDENCE
        )

    def matches(self, text: str, *, complete: bool = True) -> bool:
        """Does ``text`` match?  ``complete`` says whether ``text`` is the whole value."""
        if self.pattern_type is PatternType.CONTAINS:
            return self.pattern in text
        if self.pattern_type is PatternType.PREFIX:
            return text.startswith(self.pattern)
        if self.pattern_type is PatternType.FULL:
            return complete and text.strip() == self.pattern.strip()
        return self.regex is not None and self.regex.search(text) is not None

    def __post_init__(self) -> None:
        # Hand-built REGEXP fingerprints get their regex compiled here, once, like loaded ones.
        if self.pattern_type is PatternType.REGEXP and self.regex is None:
            object.__setattr__(self, "regex", re.compile(self.pattern))


@dataclass(frozen=True, slots=True)
class Matches:
    """Every fingerprint that matched one DNS answer or one HTTP response, in file order."""

    matches: tuple[Fingerprint, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.matches)

    @property
    def false_positive(self) -> Fingerprint | None:
        return next((f for f in self.matches if f.is_false_positive), None)

    @property
    def strong(self) -> Fingerprint | None:
        return next((f for f in self.matches if not f.is_false_positive and not f.is_weak), None)

    @property
    def weak(self) -> Fingerprint | None:
        """A weak match, unless a known false positive matched too (then it means nothing)."""
        if self.false_positive is not None:
            return None
        return next((f for f in self.matches if not f.is_false_positive and f.is_weak), None)

    @property
    def blockpage(self) -> Fingerprint | None:
        """The best blocking fingerprint: strong first, else weak (never an ``fp`` one)."""
        return self.strong or self.weak


def canonical_dns_value(value: str) -> str:
    """An IP address in canonical text form, or a host name lower-cased without trailing dot."""
    text = value.strip()
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return text.rstrip(".").lower()
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class Fingerprints:
    """An immutable, indexed set of fingerprints.  Build it with ``load``/``load_default``."""

    __slots__ = (
        "_all", "_body_grams", "_body_other", "_body_short", "_dns_exact", "_dns_other",
        "_headers", "_order", "problems",
    )

    def __init__(
        self, fingerprints: Iterable[Fingerprint] = (), problems: Iterable[LoadProblem] = ()
    ) -> None:
        self._all: tuple[Fingerprint, ...] = tuple(fingerprints)
        self.problems: tuple[LoadProblem, ...] = tuple(problems)
        # Indexes chosen for speed on a Raspberry Pi, built without extra passes (loading is
        # paid once per run): DNS is a dict lookup.  The ~1,300 ``contains`` body patterns are
        # keyed by the 4 characters in their middle: a body can only contain a pattern if it
        # contains that 4-gram, so a response is checked against the few patterns whose key
        # occurs in it (3-7x faster than testing every pattern).
        self._order: dict[int, int] = {id(fp): i for i, fp in enumerate(self._all)}
        self._dns_exact: dict[str, list[Fingerprint]] = {}
        self._dns_other: list[Fingerprint] = []
        self._body_grams: dict[str, list[tuple[str, Fingerprint]]] = {}
        self._body_short: list[tuple[str, Fingerprint]] = []  # shorter than a 4-gram
        self._body_other: list[Fingerprint] = []
        self._headers: dict[str, list[Fingerprint]] = {}
        for fp in self._all:
            if fp.location == "dns":
                if fp.pattern_type is PatternType.FULL:
                    self._dns_exact.setdefault(fp.pattern, []).append(fp)
                else:
                    self._dns_other.append(fp)
            elif fp.location == "body":
                if fp.pattern_type is PatternType.CONTAINS:
                    if len(fp.pattern) < _GRAM:
                        self._body_short.append((fp.pattern, fp))
                    else:
                        key = _middle_gram(fp.pattern)
                        self._body_grams.setdefault(key, []).append((fp.pattern, fp))
                else:
                    self._body_other.append(fp)
            else:
                self._headers.setdefault(fp.location[len("header.") :], []).append(fp)

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def load(cls, *paths: str | Path) -> Fingerprints:
        """Load one or more fingerprint CSV files (names are unique among DNS / HTTP rows)."""
        if not paths:
            raise ConfigError("Fingerprints.load() needs at least one file")
        fingerprints: list[Fingerprint] = []
        problems: list[LoadProblem] = []
        seen: dict[str, str] = {}
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read fingerprint file: {exc.strerror}") from exc
            fps, probs = parse_csv(data, str(path), seen=seen)
            fingerprints.extend(fps)
            problems.extend(probs)
        for problem in problems:
            log.warning("fingerprint row skipped: %s", problem)
        return cls(fingerprints, problems)

    @classmethod
    def load_default(cls) -> Fingerprints:
        """The shipped fingerprints (loaded once per process; the object is immutable)."""
        return _load_default()

    @classmethod
    def from_text(cls, text: str | bytes, source: str = "<text>") -> Fingerprints:
        """Parse CSV text (tests, and operators validating a file before deploying it)."""
        fps, problems = parse_csv(text, source)
        return cls(fps, problems)

    def merged(self, other: Fingerprints) -> Fingerprints:
        """This set plus ``other`` (e.g. a deployment's local fingerprints); names stay unique."""
        names = {_name_key(f) for f in self._all}
        extra = [f for f in other._all if _name_key(f) not in names]
        dropped = [
            LoadProblem(*_split_origin(f.origin), f"duplicate name {f.name!r}; skipped")
            for f in other._all
            if _name_key(f) in names
        ]
        return Fingerprints([*self._all, *extra], [*self.problems, *other.problems, *dropped])

    # ---- inspection --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Fingerprint]:
        return iter(self._all)

    def __repr__(self) -> str:
        return f"<Fingerprints {len(self._all)} loaded, {len(self.problems)} problems>"

    # ---- matching ----------------------------------------------------------------------
    def match_dns(self, value: str) -> Matches:
        """Fingerprints matching one DNS answer value (an address or a CNAME target)."""
        key = canonical_dns_value(value)
        found = list(self._dns_exact.get(key, ()))
        found.extend(f for f in self._dns_other if f.matches(key))
        return Matches(tuple(found))

    def match_http(
        self,
        *,
        body: str,
        headers: Mapping[str, str],
        title: str = "",
        redirects: Sequence[str] = (),
        body_complete: bool = False,
    ) -> Matches:
        """Fingerprints matching one HTTP response.

        ``body`` is the head of the body the agent kept; ``body_complete`` says it is the whole
        body (needed by ``full`` body patterns).  ``redirects`` is the chain of Location targets
        followed to reach this response.
        """
        # The title is searched too (the agent may keep it even when it lies beyond the head);
        # NUL cannot occur in a pattern, so nothing matches across the separator by accident.
        hay = body
        if title and title not in body:
            hay = f"{body}\x00<title>{title}</title>"
        found = [fp for pattern, fp in self._body_short if pattern in hay]
        grams = {hay[i : i + _GRAM] for i in range(len(hay) - _GRAM + 1)}
        for key in self._body_grams.keys() & grams:
            found.extend(fp for pattern, fp in self._body_grams[key] if pattern in hay)
        for fp in self._body_other:
            text = body if fp.pattern_type is PatternType.FULL else hay
            if fp.matches(text, complete=body_complete):
                found.append(fp)
        if self._headers:
            lowered: dict[str, list[str]] = {}
            for name, value in headers.items():
                lowered.setdefault(name.lower(), []).append(value)
            if redirects:
                lowered.setdefault("location", []).extend(redirects)
            for name, values in lowered.items():
                for fp in self._headers.get(name, ()):
                    if any(fp.matches(v) for v in values):
                        found.append(fp)
        found.sort(key=lambda fp: self._order[id(fp)])
        return Matches(tuple(found))


def _middle_gram(pattern: str) -> str:
    middle = len(pattern) // 2
    return pattern[middle - _GRAM // 2 : middle + _GRAM // 2]


@functools.lru_cache(maxsize=1)
def _load_default() -> Fingerprints:
    ref = resources.files(_DATA_PACKAGE).joinpath(*_DATA_DIR, DEFAULT_FILE)
    try:
        data = ref.read_bytes()
    except OSError as exc:  # a broken installation, not bad user input
        raise ConfigError(f"shipped fingerprint file missing: {ref}") from exc
    fps, problems = parse_csv(data, f"agent/data/fingerprints/{DEFAULT_FILE}")
    for problem in problems:
        log.warning("fingerprint row skipped: %s", problem)
    return Fingerprints(fps, problems)


def _name_key(fp: Fingerprint) -> str:
    """Names are unique per kind: upstream reuses a name for the DNS and HTTP side of one page."""
    return f"{'dns' if fp.location == 'dns' else 'http'}:{fp.name}"


def _split_origin(origin: str) -> tuple[str, int]:
    file, _, line = origin.rpartition(":")
    return (file, int(line)) if line.isdigit() else (origin, 0)


# ---- parsing -----------------------------------------------------------------------------
def parse_csv(
    data: str | bytes, source: str, *, seen: dict[str, str] | None = None
) -> tuple[list[Fingerprint], list[LoadProblem]]:
    """Parse one fingerprint CSV: valid rows, and a problem for every row skipped.

    ``seen`` maps the names already loaded (from earlier files; keys from ``_name_key``) to
    their origin, so duplicates across files are reported too.  Raises ``ConfigError`` only
    for a missing or unusable header.
    """
    undecodable = False
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            # Keep going: only the rows holding the bad bytes are rejected (see below).
            text = data.decode("utf-8", errors="surrogateescape")
            undecodable = True
    else:
        text = data
        undecodable = _SURROGATE.search(text) is not None
    text = text.removeprefix("\ufeff")
    lines = io.StringIO(text, newline="").readlines()
    # A preamble of '#' comment lines and blank lines may precede the header.
    skip = 0
    while skip < len(lines) and (not lines[skip].strip() or lines[skip].startswith("#")):
        skip += 1
    reader = csv.reader(lines[skip:])
    try:
        header = next(reader)
    except StopIteration:
        raise ConfigError(f"{source}: empty fingerprint file (no header row)") from None
    except csv.Error as exc:
        raise ConfigError(f"{source}:{skip + 1}: unreadable header: {exc}") from None
    columns = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ConfigError(
            f"{source}:{skip + 1}: header lacks column(s) {', '.join(missing)} "
            f"(see docs/fingerprints.md)"
        )
    duplicated = sorted({c for c in columns if c and columns.count(c) > 1})
    if duplicated:
        raise ConfigError(f"{source}:{skip + 1}: duplicated column(s) {', '.join(duplicated)}")
    index = {c: i for i, c in enumerate(columns)}

    seen = {} if seen is None else seen
    fingerprints: list[Fingerprint] = []
    problems: list[LoadProblem] = []
    consumed = reader.line_num  # physical lines read so far (relative to lines[skip:])
    for _ in range(len(lines) + 1):  # bound: a reader yields at most one row per line
        start = skip + consumed + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(LoadProblem(source, start, f"unreadable CSV: {exc}"))
            consumed = reader.line_num
            continue
        consumed = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        try:
            fp = _row_to_fingerprint(row, index, len(columns), f"{source}:{start}", undecodable)
        except ValueError as exc:
            problems.append(LoadProblem(source, start, str(exc)))
            continue
        key = _name_key(fp)
        if key in seen:
            problems.append(
                LoadProblem(source, start, f"duplicate name {fp.name!r} (first at {seen[key]})")
            )
            continue
        seen[key] = fp.origin
        fingerprints.append(fp)
    return fingerprints, problems


def _row_to_fingerprint(
    row: list[str], index: Mapping[str, int], width: int, origin: str, undecodable: bool
) -> Fingerprint:
    """Validate one row; raises ValueError with a human message when it is malformed."""
    if len(row) != width:
        raise ValueError(f"expected {width} fields, found {len(row)}")
    if undecodable and any(_SURROGATE.search(value) for value in row):
        raise ValueError("not valid UTF-8")

    def get(column: str) -> str:
        i = index.get(column)
        return "" if i is None else row[i]

    name, scope = _name(get("name")), _scope(get("scope"))  # checked in column order
    location = _location(get("location_found"))
    pattern_type = _pattern_type(get("pattern_type"))
    pattern, regex = _pattern(get("pattern"), pattern_type, location)
    return Fingerprint(
        name=name,
        scope=scope,
        location=location,
        pattern_type=pattern_type,
        pattern=pattern,
        confidence=_confidence(get("confidence_no_fp")),
        countries=_countries(get("expected_countries")),
        origin=origin,
        regex=regex,
    )


# One validator per column: each returns the clean value or raises ValueError saying why.
def _name(text: str) -> str:
    name = text.strip()
    if not name:
        raise ValueError("empty name")
    if len(name) > MAX_NAME_LENGTH or any(c in name for c in "\r\n\x00"):
        raise ValueError(f"invalid name {name[:40]!r} (one line, at most {MAX_NAME_LENGTH} chars)")
    return name


def _scope(text: str) -> Scope:
    scope_text = text.strip().lower()
    try:
        return Scope(scope_text)
    except ValueError:
        known = ", ".join(s.value for s in Scope)
        raise ValueError(f"unknown scope {scope_text!r} (known: {known})") from None


def _location(text: str) -> str:
    location = text.strip().lower()
    if location in ("dns", "body"):
        return location
    m = _HEADER_LOCATION.fullmatch(location)
    if m is None:
        raise ValueError(f"unknown location_found {location!r} (dns, body or header.<name>)")
    return f"header.{m.group(1).lower()}"


def _pattern_type(text: str) -> PatternType:
    type_text = text.strip().lower()
    try:
        return PatternType(type_text)
    except ValueError:
        raise ValueError(
            f"unknown pattern_type {type_text!r} (full, prefix, contains or regexp)"
        ) from None


def _pattern(
    pattern: str, pattern_type: PatternType, location: str
) -> tuple[str, re.Pattern[str] | None]:
    if not pattern.strip():
        raise ValueError("empty pattern")
    if "\x00" in pattern:
        raise ValueError("pattern contains a NUL character")
    if pattern_type is PatternType.REGEXP:
        try:
            return pattern, re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise ValueError(f"invalid regexp: {exc}") from None
    if location == "dns":
        return canonical_dns_value(pattern), None
    return pattern, None


def _confidence(text: str) -> int | None:
    confidence_text = text.strip()
    if not confidence_text:
        return None
    if not confidence_text.isascii() or not confidence_text.isdigit():
        raise ValueError(f"confidence_no_fp {confidence_text[:20]!r} is not an integer")
    confidence = int(confidence_text)
    if confidence > 10:
        raise ValueError(f"confidence_no_fp {confidence} is outside 0..10")
    return confidence


def _countries(text: str) -> tuple[str, ...]:
    countries: list[str] = []
    for token in text.split(","):
        cc = token.strip().upper()
        if not cc:
            continue
        if not _COUNTRY.fullmatch(cc):
            raise ValueError(f"expected_countries: {token.strip()[:20]!r} is not a country code")
        countries.append(cc)
    return tuple(countries)


# ---- writing (used by scripts/build_fingerprints.py) ------------------------------------------
def to_csv(fingerprints: Iterable[Fingerprint], preamble: Sequence[str] = ()) -> str:
    """Render fingerprints in the shipped format (docs/fingerprints.md).

    Records end with ``\n``; a field is quoted (RFC 4180) when it holds a comma, a quote, CR or
    LF.  The csv module would leave a bare CR unquoted with a ``\n`` terminator, and a reader
    would then split the record, so quoting is done here.
    """
    out = io.StringIO()
    for line in preamble:
        out.write(f"# {line}\n" if line else "#\n")
    out.write(",".join(SHIPPED_COLUMNS) + "\n")
    for fp in fingerprints:
        cells = (
            fp.name,
            fp.scope.value,
            fp.location,
            fp.pattern_type.value,
            fp.pattern,
            "" if fp.confidence is None else str(fp.confidence),
            ",".join(fp.countries),
        )
        out.write(",".join(_csv_cell(c) for c in cells) + "\n")
    return out.getvalue()


def _csv_cell(value: str) -> str:
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value
