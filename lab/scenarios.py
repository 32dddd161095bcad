"""Scenario files: TOML tables describing lab sites, the censor's behaviour and the truth.

A scenario is one URL the lab serves, optionally with censorship switched on for its name or
address, and (optionally) the verdict a correct agent must reach.  Rows without ``expect``
only configure the lab (self-checks use them).  Several files may be loaded together; ids and
URLs must be unique across all of them.  See lab/README.md for the format.

Everything here is pure (parse, validate); errors name the file and the scenario.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

STATUSES = frozenset({"ok", "blocked", "throttled", "down", "inconclusive"})
BLOCKINGS = frozenset({"dns", "tcp_ip", "tls", "http-failure", "http-diff", "throttling"})

# censor behaviour -> the parameter that says what it matches ("name" / "address")
CENSOR_KINDS: dict[str, str] = {
    "dns_nxdomain": "name",
    "dns_bogon": "name",
    "dns_blockpage": "name",
    "dns_inject": "name",
    "dns_servfail": "name",
    "dns_answer": "name",
    "dns_nodata": "name",
    "tcp_drop": "address",
    "tcp_reset": "address",
    "tls_reset": "name",
    "tls_drop": "name",
    "tls_mitm": "address",
    "http_blockpage": "name",
    "http_reset": "name",
    "http_drop": "name",
    "http_close": "name",
    "tls_close": "name",
    "ip_throttle": "address",
    "sni_throttle": "name",
    "dns_tcp_reset": "name",
}
CENSOR_PARAMS: dict[str, frozenset[str]] = {
    "dns_bogon": frozenset({"answer"}),
    "dns_inject": frozenset({"answer"}),
    "dns_answer": frozenset({"answer"}),
    "http_blockpage": frozenset({"page"}),
    "ip_throttle": frozenset({"rate_kbit", "queue_ms"}),
    "sni_throttle": frozenset({"rate_kbit", "queue_ms"}),
    "tcp_drop": frozenset({"family"}),
    "tcp_reset": frozenset({"family"}),
    "tls_reset": frozenset({"family"}),
    "tls_drop": frozenset({"family"}),
}
FAMILIES = frozenset({"v4", "dual", "v6"})  # which addresses a site has (A, A+AAAA, AAAA)
RULE_FAMILIES = frozenset({"v4", "v6", "both"})  # which of them an address rule hits
SITE_KINDS = frozenset(
    {"normal", "slow", "dynamic", "redirect", "cdn", "down-refused", "down-timeout", "nxdomain",
     "redirect-to", "redirect-loop", "broken-location", "captcha", "expired-cert",
     "wrong-name-cert", "untrusted-cert", "loopback", "no-address",
     # its DNS answer does not fit in UDP: truncated over UDP, whole over TCP, everywhere
     "large-dns",
     # the ISP has no IPv6 route to its IPv6 address (ICMPv6 "no route"): the network's fault
     "v6-path-broken",
     # its IPv6 address drops everything, for everyone: the site's fault
     "v6-dead"}
)
# An answer may name the ISP's transparent proxy instead of an address or a scenario host.
PROXY_ANSWER = "isp-proxy"
BLOCKPAGES = frozenset({"iran", "custom"})
# helper: the real control; unreachable: a dead control URL; blocked: the censor resets every
# flow from the probe to the real helper (a phase of its own: one agent run, rule removed after)
CONTROL_MODES = frozenset({"helper", "unreachable", "blocked"})
EVENT_KINDS = frozenset({"shutdown"})

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
_HOST_RE = re.compile(r"^(?=.{1,200}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,}$")


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and the row."""


@dataclass(frozen=True, slots=True)
class CensorRule:
    kind: str
    target: str  # a host name (suffix match), an address, or "" meaning the scenario's own
    params: tuple[tuple[str, Any], ...] = ()  # sorted (name, value) pairs: hashable

    @property
    def by_address(self) -> bool:
        return CENSOR_KINDS[self.kind] == "address"

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


@dataclass(frozen=True, slots=True)
class Site:
    kind: str = "normal"
    address_group: str = ""  # scenarios sharing a group share one server address
    delay_ms: int | None = None  # server think time before answering (None: lab default)
    body_bytes: int = 6000
    slow_s: float = 2.0  # extra delay of a "slow" site
    rtt_ms: int = 0  # round trip added on the path (the ISP router's delay line), 0: none
    loss_percent: float = 0.0  # random loss on the path, each direction (nft numgen)
    rate_kbit: int = 0  # the server itself sends no faster than this (0: unpaced)
    location: str = ""  # where a "redirect-to" site sends everyone (an http(s) URL)
    family: str = "v4"  # "v4", "dual" (A and AAAA) or "v6" (AAAA only): see FAMILIES


@dataclass(frozen=True, slots=True)
class Expectation:
    status: str
    blocking: str | None
    reason: str | None = None  # None: any reason is accepted
    interference: str | None = None  # verdict.interference the agent must record, if given


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    url: str
    description: str
    site: Site
    censor: tuple[CensorRule, ...]
    test: str = "web_connectivity"
    control: str = "helper"
    expect: Expectation | None = None
    category: str = "NEWS"
    source: str = ""  # "file:[index]" for messages

    @property
    def host(self) -> str:
        return host_of(self.url)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme


@dataclass(frozen=True, slots=True)
class Event:
    """A lab-wide event during an agent run (e.g. a shutdown), relative to the agent's start."""

    kind: str
    after_s: float
    duration_s: float
    source: str = ""


@dataclass(frozen=True, slots=True)
class ScenarioFile:
    path: str
    scenarios: tuple[Scenario, ...]
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class ScenarioSet:
    files: tuple[ScenarioFile, ...]

    @property
    def scenarios(self) -> tuple[Scenario, ...]:
        return tuple(s for f in self.files for s in f.scenarios)

    def by_id(self, scenario_id: str) -> Scenario:
        for s in self.scenarios:
            if s.id == scenario_id:
                return s
        raise KeyError(scenario_id)

    @property
    def measured(self) -> tuple[Scenario, ...]:
        return tuple(s for s in self.scenarios if s.expect is not None)


def host_of(url: str) -> str:
    """The URL's host as DNS carries it (lower case; IDNA A-labels for Unicode names)."""
    host = urlsplit(url).hostname
    if not host:
        raise ValueError(f"URL without a host: {url!r}")
    return ascii_host(host)


def ascii_host(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError(f"host {host!r} is not a valid IDNA name: {exc}") from None


def load_files(paths: Iterable[str | Path]) -> ScenarioSet:
    """Load and cross-validate several scenario files (unique ids, URLs, consistent hosts)."""
    files = []
    for p in paths:
        path = Path(p)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ScenarioError(f"{path}: cannot read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"{path}: invalid TOML: {exc}") from exc
        files.append(parse_file(str(path), data))
    return validate_set(ScenarioSet(tuple(files)))


def parse_file(path: str, data: Mapping[str, Any]) -> ScenarioFile:
    unknown = set(data) - {"scenario", "event"}
    if unknown:
        raise ScenarioError(f"{path}: unknown top-level keys {sorted(unknown)}")
    rows = data.get("scenario", [])
    if not isinstance(rows, list):
        raise ScenarioError(f"{path}: 'scenario' must be an array of tables ([[scenario]])")
    scenarios = tuple(_parse_scenario(f"{path}:scenario[{i}]", row) for i, row in enumerate(rows))
    events_raw = data.get("event", [])
    if not isinstance(events_raw, list):
        raise ScenarioError(f"{path}: 'event' must be an array of tables ([[event]])")
    events = tuple(_parse_event(f"{path}:event[{i}]", e) for i, e in enumerate(events_raw))
    return ScenarioFile(path=path, scenarios=scenarios, events=events)


def validate_set(sset: ScenarioSet) -> ScenarioSet:
    seen_ids: dict[str, str] = {}
    seen_inputs: dict[tuple[str, str], str] = {}
    host_config: dict[str, tuple[Scenario, tuple[Any, ...]]] = {}
    groups: dict[str, str] = {}
    for s in sset.scenarios:
        if s.id in seen_ids:
            raise ScenarioError(f"{s.source}: duplicate id {s.id!r} (first at {seen_ids[s.id]})")
        seen_ids[s.id] = s.source
        key = (s.url, s.test)
        if key in seen_inputs:
            raise ScenarioError(
                f"{s.source}: {s.url} measured twice by {s.test} (first at {seen_inputs[key]})"
            )
        seen_inputs[key] = s.source
        # the same host may appear in several rows (e.g. http:// and https://, or several
        # tests) only when the site and the censor are configured identically
        config = (s.site, frozenset(s.censor))
        if s.host in host_config and host_config[s.host][1] != config:
            first = host_config[s.host][0]
            raise ScenarioError(
                f"{s.source}: host {s.host} is configured differently in {first.source}"
            )
        host_config.setdefault(s.host, (s, config))
        if s.site.address_group:
            groups.setdefault(s.site.address_group, s.source)
    return sset


def _parse_scenario(where: str, row: Any) -> Scenario:
    if not isinstance(row, dict):
        raise ScenarioError(f"{where}: must be a table")
    allowed = {"id", "url", "description", "site", "censor", "test", "control", "expect",
               "category"}
    unknown = set(row) - allowed
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
    sid = _req_str(where, row, "id")
    if not _ID_RE.match(sid):
        raise ScenarioError(f"{where}: id {sid!r} must match {_ID_RE.pattern}")
    where = f"{where} ({sid})"
    url = _req_str(where, row, "url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ScenarioError(f"{where}: url must be http(s)://host/..., got {url!r}")
    if parts.port is not None:
        raise ScenarioError(f"{where}: url must use the default port (the lab serves 80/443)")
    try:
        encoded = ascii_host(parts.hostname)
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    if not _HOST_RE.match(encoded):
        raise ScenarioError(f"{where}: bad host name {parts.hostname!r}")
    site = _parse_site(where, row.get("site", {}))
    censor = tuple(_parse_rule(f"{where}.censor[{i}]", r) for i, r in
                   enumerate(_as_list(where, row.get("censor", []))))
    control = str(row.get("control", "helper"))
    if control not in CONTROL_MODES:
        raise ScenarioError(f"{where}: control must be one of {sorted(CONTROL_MODES)}")
    expect = None if "expect" not in row else _parse_expect(where, row["expect"])
    test = str(row.get("test", "web_connectivity"))
    if not re.match(r"^[a-z_]{1,40}$", test):
        raise ScenarioError(f"{where}: bad test name {test!r}")
    return Scenario(
        id=sid, url=url, description=str(row.get("description", "")), site=site, censor=censor,
        test=test, control=control, expect=expect, category=str(row.get("category", "NEWS")),
        source=where,
    )


def _parse_site(where: str, raw: Any) -> Site:  # noqa: C901 - one check per site key
    if isinstance(raw, str):
        raw = {"kind": raw}
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: site must be a string or a table")
    unknown = set(raw) - {"kind", "address_group", "delay_ms", "body_bytes", "slow_s",
                          "rtt_ms", "loss_percent", "rate_kbit", "location", "family"}
    if unknown:
        raise ScenarioError(f"{where}: unknown site keys {sorted(unknown)}")
    kind = str(raw.get("kind", "normal"))
    if kind not in SITE_KINDS:
        raise ScenarioError(f"{where}: site kind {kind!r} not in {sorted(SITE_KINDS)}")
    delay = raw.get("delay_ms")
    body = raw.get("body_bytes", 6000)
    slow = raw.get("slow_s", 2.0)
    if delay is not None and not (isinstance(delay, int) and 0 <= delay <= 5000):
        raise ScenarioError(f"{where}: site.delay_ms must be an integer 0..5000")
    if not (isinstance(body, int) and 64 <= body <= 50_000_000):
        raise ScenarioError(f"{where}: site.body_bytes must be an integer 64..50000000")
    if not (isinstance(slow, int | float) and 0 <= slow <= 30):
        raise ScenarioError(f"{where}: site.slow_s must be a number 0..30")
    group = str(raw.get("address_group", ""))
    if group and not _ID_RE.match(group):
        raise ScenarioError(f"{where}: bad address_group {group!r}")
    rtt = raw.get("rtt_ms", 0)
    loss = raw.get("loss_percent", 0.0)
    rate = raw.get("rate_kbit", 0)
    if not (isinstance(rtt, int) and 0 <= rtt <= 1000):
        raise ScenarioError(f"{where}: site.rtt_ms must be an integer 0..1000")
    if isinstance(loss, bool) or not (isinstance(loss, int | float) and 0 <= loss <= 20):
        raise ScenarioError(f"{where}: site.loss_percent must be a number 0..20")
    if not (isinstance(rate, int) and (rate == 0 or 8 <= rate <= 10_000_000)):
        raise ScenarioError(f"{where}: site.rate_kbit must be 0 or an integer 8..10000000")
    if (rtt or loss) and group:
        raise ScenarioError(f"{where}: rtt_ms/loss_percent are per address: no address_group")
    location = str(raw.get("location", ""))
    if (kind == "redirect-to") != bool(location):
        raise ScenarioError(f"{where}: site.location is required by, and only by, redirect-to")
    if location:
        target = urlsplit(location)
        if target.scheme not in ("http", "https") or not _HOST_RE.match(target.hostname or ""):
            raise ScenarioError(f"{where}: site.location must be an http(s) URL of a lab host")
    family = str(raw.get("family", "dual" if kind in ("v6-path-broken", "v6-dead") else "v4"))
    if family not in FAMILIES:
        raise ScenarioError(f"{where}: site.family must be one of {sorted(FAMILIES)}")
    if kind in ("v6-path-broken", "v6-dead") and family == "v4":
        raise ScenarioError(f"{where}: a {kind} site has an IPv6 address (family dual or v6)")
    return Site(kind=kind, address_group=group, delay_ms=delay, body_bytes=body,
                slow_s=float(slow), rtt_ms=rtt, loss_percent=float(loss), rate_kbit=rate,
                location=location, family=family)


def _parse_rule(where: str, raw: Any) -> CensorRule:
    if isinstance(raw, str):
        raw = {"kind": raw}
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: a censor rule is a string or a table")
    kind = str(raw.get("kind", ""))
    if kind not in CENSOR_KINDS:
        raise ScenarioError(f"{where}: censor kind {kind!r} not in {sorted(CENSOR_KINDS)}")
    target_key = CENSOR_KINDS[kind]
    params = {k: v for k, v in raw.items() if k not in ("kind", target_key)}
    extra = set(params) - CENSOR_PARAMS.get(kind, frozenset())
    if extra:
        raise ScenarioError(f"{where}: {kind} does not take {sorted(extra)}")
    if "family" in params and params["family"] not in RULE_FAMILIES:
        raise ScenarioError(f"{where}: family must be one of {sorted(RULE_FAMILIES)}")
    target = str(raw.get(target_key, ""))
    if target and target_key == "name" and not _HOST_RE.match(target):
        raise ScenarioError(f"{where}: bad name {target!r}")
    if target and target_key == "address":
        from lab.addressing import in_lab

        if not in_lab(target):
            raise ScenarioError(f"{where}: address {target!r} is outside 198.18.0.0/15")
    _check_params(where, kind, params)
    return CensorRule(kind=kind, target=target.lower(), params=tuple(sorted(params.items())))


def _check_params(where: str, kind: str, params: Mapping[str, Any]) -> None:
    if kind == "dns_answer" and "answer" not in params:
        raise ScenarioError(f"{where}: dns_answer needs an answer")
    rate = params.get("rate_kbit")
    if rate is not None and not (isinstance(rate, int) and 8 <= rate <= 10_000_000):
        raise ScenarioError(f"{where}: rate_kbit must be an integer 8..10000000")
    page = params.get("page")
    if page is not None and page not in BLOCKPAGES:
        raise ScenarioError(f"{where}: page must be one of {sorted(BLOCKPAGES)}")
    answer = params.get("answer")
    if answer is not None:
        import ipaddress

        try:
            ipaddress.IPv4Address(str(answer))
        except ValueError:
            if answer != PROXY_ANSWER and not _HOST_RE.match(str(answer)):
                raise ScenarioError(
                    f"{where}: answer must be an IPv4 address, a scenario host or "
                    f"{PROXY_ANSWER!r}"
                ) from None


def _parse_expect(where: str, raw: Any) -> Expectation:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expect must be a table")
    unknown = set(raw) - {"status", "blocking", "reason", "interference"}
    if unknown:
        raise ScenarioError(f"{where}: unknown expect keys {sorted(unknown)}")
    status = str(raw.get("status", ""))
    if status not in STATUSES:
        raise ScenarioError(f"{where}: expect.status must be one of {sorted(STATUSES)}")
    blocking_raw = raw.get("blocking", "")
    blocking = None if blocking_raw in ("", None) else str(blocking_raw)
    if blocking is not None and blocking not in BLOCKINGS:
        raise ScenarioError(f"{where}: expect.blocking must be one of {sorted(BLOCKINGS)} or ''")
    if (status in ("blocked", "throttled")) != (blocking is not None):
        raise ScenarioError(f"{where}: status {status} is inconsistent with blocking {blocking}")
    reason = raw.get("reason")
    interference = raw.get("interference")
    return Expectation(status=status, blocking=blocking,
                       reason=None if reason in (None, "") else str(reason),
                       interference=None if interference in (None, "") else str(interference))


def _parse_event(where: str, raw: Any) -> Event:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a table")
    unknown = set(raw) - {"kind", "after_s", "duration_s"}
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}")
    kind = str(raw.get("kind", ""))
    if kind not in EVENT_KINDS:
        raise ScenarioError(f"{where}: event kind must be one of {sorted(EVENT_KINDS)}")
    after = raw.get("after_s", 0)
    duration = raw.get("duration_s")
    if not (isinstance(after, int | float) and 0 <= after <= 600):
        raise ScenarioError(f"{where}: after_s must be 0..600")
    if not (isinstance(duration, int | float) and 0 < duration <= 600):
        raise ScenarioError(f"{where}: duration_s must be in (0, 600]")
    return Event(kind=kind, after_s=float(after), duration_s=float(duration), source=where)


def _req_str(where: str, row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value:
        raise ScenarioError(f"{where}: '{key}' is required (a string)")
    return value


def _as_list(where: str, raw: Any) -> Sequence[Any]:
    if isinstance(raw, list):
        return raw
    if isinstance(raw, str | dict):
        return [raw]
    raise ScenarioError(f"{where}: censor must be a list")
