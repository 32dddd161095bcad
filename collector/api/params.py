"""Query-string validation for the collector's JSON API: strings in, typed values or a
:class:`BadRequest` naming the parameter and what was wrong.

Pure (no aiohttp, no store), so every rule is unit-testable.  Strict on purpose:

* an unknown parameter is an error, not ignored: ``country=IR`` silently returning every
  country would mislead whoever reads the numbers;
* a parameter given twice is an error (the filters combine with AND on single values);
* every list has a bounded ``limit``, so no request can ask the store for everything at once
  (the export streams in bounded pages instead).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

from agent.wire.record import Blocking, Status
from collector.store.base import Filter
from collector.store.rollups import AggDimension, AggFilter

FILTER_PARAMS = (
    "probe_cc", "probe_asn", "probe_id", "test_name", "status", "blocking", "domain",
    "since", "until", "input", "category_code", "confirmed", "probe_network_name", "failure",
)
# The filters the aggregation rollups can apply (they keep no probe, input or reason).
AGG_FILTER_PARAMS = (
    "probe_cc", "probe_asn", "domain", "category_code", "test_name", "blocking", "since",
    "until",
)

_CC = re.compile(r"^[A-Za-z]{2}$")
_ASN = re.compile(r"^(?:AS|as|As|aS)?([0-9]{1,10})$")
_PROBE_ID = re.compile(r"^[a-z2-7]{26}$")
_TEST_NAME = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_GROUP = re.compile(r"^(?:asn:AS[0-9]{1,10}|cc:[A-Z]{2})$")
_CATEGORY = re.compile(r"^[A-Za-z_]{2,32}$")
_REASON = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_DOMAIN_BAD = re.compile(r"[\s/\\?#@\x00-\x1f\x7f]")
BLOCKING_NONE = "none"  # ?blocking=none: measurements where nothing was blocked


class BadRequest(ValueError):
    """A parameter the API cannot use; becomes a 400 with this text."""

    def __init__(self, param: str | None, detail: str) -> None:
        super().__init__(f"{param}: {detail}" if param else detail)
        self.param = param
        self.detail = detail


class Params:
    """One request's query string, checked against the parameters an endpoint accepts."""

    def __init__(self, items: Iterable[tuple[str, str]], allowed: Sequence[str]) -> None:
        self._values: dict[str, str] = {}
        for key, value in items:
            if key not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                raise BadRequest(key, f"unknown parameter (accepted: {known})")
            if key in self._values:
                raise BadRequest(key, "given more than once")
            self._values[key] = value

    def get(self, name: str) -> str | None:
        value = self._values.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None  # ?probe_cc= (empty) means "no filter", as HTML forms send it

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        text = self.get(name)
        if text is None:
            return default
        if not re.fullmatch(r"[0-9]{1,12}", text):
            raise BadRequest(name, f"must be an integer from {low} to {high}, not {text!r}")
        value = int(text)
        if not low <= value <= high:
            raise BadRequest(name, f"must be from {low} to {high}, not {value}")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str | None) -> str | None:
        text = self.get(name)
        if text is None:
            return default
        if text not in choices:
            raise BadRequest(name, f"must be one of {', '.join(choices)}, not {text!r}")
        return text

    def boolean(self, name: str, default: bool) -> bool:
        text = self.get(name)
        if text is None:
            return default
        lowered = text.lower()
        if lowered in ("1", "true", "yes"):
            return True
        if lowered in ("0", "false", "no"):
            return False
        raise BadRequest(name, f"must be true or false, not {text!r}")

    def time(self, name: str) -> datetime | None:
        text = self.get(name)
        return None if text is None else parse_time(name, text)

    def cursor(self, name: str = "cursor") -> str | None:
        text = self.get(name)
        if text is None:
            return None
        return measurement_id(text, name)


def parse_time(name: str, text: str) -> datetime:
    """ISO 8601 date or date-time; naive values are UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            name, f"not an ISO 8601 date or time: {text[:64]!r} (e.g. 2025-06-13T08:00:00Z)"
        ) from None
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        utc.timestamp()  # the stores compare Unix seconds
    except (OverflowError, ValueError, OSError):
        raise BadRequest(name, f"out of range: {text[:64]!r}") from None
    return utc


def measurement_id(text: str, name: str = "measurement_id") -> str:
    if not _UUID.match(text):
        raise BadRequest(name, f"not a measurement id (lower-case UUID): {text[:64]!r}")
    return text


def parse_filter(p: Params) -> Filter:
    """The measurement filters every listing endpoint shares."""
    cc = p.get("probe_cc")
    if cc is not None:
        if not _CC.match(cc):
            raise BadRequest("probe_cc", f"must be a two-letter country code, not {cc[:16]!r}")
        cc = cc.upper()
    asn = p.get("probe_asn")
    if asn is not None:
        m = _ASN.match(asn)
        if not m:
            raise BadRequest("probe_asn", f"must look like AS1234, not {asn[:16]!r}")
        asn = f"AS{int(m.group(1))}"
    probe_id = p.get("probe_id")
    if probe_id is not None and not _PROBE_ID.match(probe_id):
        raise BadRequest("probe_id", "must be 26 characters of a-z and 2-7")
    test_name = p.get("test_name")
    if test_name is not None and not _TEST_NAME.match(test_name):
        raise BadRequest("test_name", f"not a test name: {test_name[:64]!r}")
    status = p.choice("status", [s.value for s in Status], None)
    blocking = p.choice("blocking", [BLOCKING_NONE, *(b.value for b in Blocking)], None)
    since, until = p.time("since"), p.time("until")
    if since is not None and until is not None and since >= until:
        raise BadRequest("until", "must be later than since")
    url = p.get("input")
    if url is not None and len(url) > 2048:
        raise BadRequest("input", "longer than 2048 characters")
    network_name = p.get("probe_network_name")
    if network_name is not None and len(network_name) > 256:
        raise BadRequest("probe_network_name", "longer than 256 characters")
    failure = p.get("failure")
    if failure is not None and (len(failure) > 64 or not _REASON.match(failure)):
        raise BadRequest("failure", f"not a verdict reason like tls.sni_reset or tls: "
                                    f"{failure[:64]!r}")
    confirmed = p.get("confirmed")
    return Filter(
        since=since,
        until=until,
        probe_cc=cc,
        probe_asn=asn,
        domain=domain(p.get("domain")),
        status=status,
        probe_id=probe_id,
        test_name=test_name,
        blocking="" if blocking == BLOCKING_NONE else blocking,
        input=url,
        category_code=category(p.get("category_code")),
        confirmed=None if confirmed is None else p.boolean("confirmed", False),
        probe_network_name=network_name,
        failure=failure,
    )


def category(text: str | None) -> str | None:
    """A Citizen Lab category code (NEWS, HUMR, ...), upper-case."""
    if text is None:
        return None
    if not _CATEGORY.match(text):
        raise BadRequest("category_code", f"not a category code like NEWS: {text[:32]!r}")
    return text.upper()


def parse_dimensions(text: str | None) -> tuple[AggDimension, ...]:
    """``by=day,country``: one or two aggregation dimensions."""
    names = [AggDimension.COUNTRY.value] if text is None else text.split(",")
    known = [d.value for d in AggDimension]
    out = []
    for name in names:
        if name.strip() not in known:
            raise BadRequest("by", f"{name[:16]!r} is not one of {', '.join(known)}")
        out.append(AggDimension(name.strip()))
    if len(out) > 2:
        raise BadRequest("by", "at most two dimensions")
    return tuple(out)


def agg_filter(where: Filter) -> AggFilter:
    return AggFilter(
        since=where.since, until=where.until, probe_cc=where.probe_cc,
        probe_asn=where.probe_asn, domain=where.domain, category_code=where.category_code,
        test_name=where.test_name, blocking=where.blocking,
    )


def domain(text: str | None) -> str | None:
    """A host name as the collector indexes it (collector.ingest.verify.domain_of): lower-case,
    without trailing dots."""
    if text is None:
        return None
    if len(text) > 253 or _DOMAIN_BAD.search(text):
        raise BadRequest("domain", "must be a bare host name like www.example.com (no URL)")
    value = text.strip(".").lower()
    if not value:
        raise BadRequest("domain", "must be a host name")
    return value


def outage_group(text: str | None) -> str | None:
    if text is None:
        return None
    if not _GROUP.match(text):
        raise BadRequest("group", f"must be asn:AS1234 or cc:IR, not {text[:32]!r}")
    return text


def filter_json(where: Filter) -> dict[str, str]:
    """The filters actually applied, echoed in responses (so a reader knows what was counted)."""
    out: dict[str, str] = {}
    for name in FILTER_PARAMS:
        value = getattr(where, name)
        if value is None:
            continue
        if isinstance(value, datetime):
            out[name] = iso(value)
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif name == "blocking" and value == "":
            out[name] = BLOCKING_NONE
        else:
            out[name] = str(value)
    return out


def iso(value: datetime) -> str:
    """RFC 3339 UTC with a Z, as the measurement records write times."""
    text = value.astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def query_string(values: Mapping[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(sorted(values.items()))
