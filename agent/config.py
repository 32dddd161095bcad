"""Agent configuration: one TOML file read with tomllib into frozen, validated dataclasses.

Where the file is: ``--config`` > ``$VIGIL_CONFIG`` > ``/etc/vigil/agent.toml``.  The default
path may be absent (every setting has a default); a path the user named must exist.
Where state lives (probe key, outbox, updated test lists): ``$VIGIL_STATE_DIR`` >
``[agent] state_dir`` > ``/var/lib/vigil`` for root, else ``$XDG_STATE_HOME/vigil``
(``~/.local/state/vigil``).

The sections this module knows (``agent``, ``net``, ``control``, ``run``, ``lists``) are checked
strictly: an unknown key is a typo and a :class:`ConfigError`, with file and key named.  Other
sections belong to other parts of the agent (``mqtt``, ``scheduler``...) and are kept raw in
:attr:`AgentConfig.sections` for them to parse.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigError, locate

DEFAULT_CONFIG_PATH = Path("/etc/vigil/agent.toml")
DEFAULT_LISTS_SOURCE = "https://raw.githubusercontent.com/citizenlab/test-lists/master/lists/"
_CC_RE = re.compile(r"^[A-Za-z]{2}$")


def _positive(where: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{where}.{name} must be a positive number, not {value!r}")


@dataclass(frozen=True, slots=True)
class NetConfig:
    """Phase timeouts (seconds) and limits of the measurement primitives."""

    resolver: str | None = None  # "ip" or "ip:port"; None = first nameserver of resolv.conf
    dns_timeout: float = 5.0
    dns_linger: float = 0.5  # keep listening this long after the first reply (injection)
    dns_retries: int = 1
    connect_timeout: float = 10.0
    tls_timeout: float = 10.0
    http_timeout: float = 20.0  # whole fetch, redirects included
    read_timeout: float = 10.0  # silence allowed between two body reads
    max_body_bytes: int = 1_048_576
    max_redirects: int = 10
    max_addresses: int = 4  # per origin (system resolver, control), family and measurement
    benign_sni: str = "example.com"
    # also query AAAA and connect over IPv6; None (the default): when this host has a global
    # IPv6 route and address (agent.net.ipv6route), as a happy-eyeballs browser would
    ipv6: bool | None = None
    ca_file: Path | None = None  # extra trust anchors (private deployments, the lab)

    def __post_init__(self) -> None:
        _positive(
            "net", dns_timeout=self.dns_timeout, connect_timeout=self.connect_timeout,
            tls_timeout=self.tls_timeout, http_timeout=self.http_timeout,
            read_timeout=self.read_timeout, max_body_bytes=self.max_body_bytes,
            max_addresses=self.max_addresses,
        )
        if not 0 <= self.dns_linger <= 10:
            raise ConfigError(f"net.dns_linger must be within 0..10 s, not {self.dns_linger}")
        if not 0 <= self.dns_retries <= 5:
            raise ConfigError(f"net.dns_retries must be within 0..5, not {self.dns_retries}")
        if not 0 <= self.max_redirects <= 30:
            raise ConfigError(f"net.max_redirects must be within 0..30, not {self.max_redirects}")
        if not self.benign_sni or "." not in self.benign_sni:
            raise ConfigError(f"net.benign_sni must be a domain name, not {self.benign_sni!r}")
        if self.resolver is not None:
            from agent.net.dns import parse_resolver

            try:
                parse_resolver(self.resolver)
            except ValueError as exc:
                raise ConfigError(f"net.resolver: {exc}") from None


@dataclass(frozen=True, slots=True)
class ControlConfig:
    url: str | None = None  # the control helper, e.g. "https://helper.example.org"
    timeout: float = 45.0  # the helper itself connects, handshakes and fetches: be generous

    def __post_init__(self) -> None:
        _positive("control", timeout=self.timeout)
        if self.url is not None and not re.match(r"^https?://[^/\s]+", self.url):
            raise ConfigError(f"control.url must be an http(s) URL, not {self.url!r}")


@dataclass(frozen=True, slots=True)
class RunConfig:
    concurrency: int = 16  # measurements in flight; 16 keeps a Raspberry Pi 3 under 80 MB
    per_host: int = 1  # measurements in flight per host name (politeness)
    max_runtime: float | None = None  # stop scheduling new measurements after this (s)
    data_budget_mb: float | None = None  # stop scheduling once this much was transferred
    measurement_timeout: float = 120.0  # safety net over one measurement's phases
    tests: tuple[str, ...] = ()  # empty: every registered test

    def __post_init__(self) -> None:
        _positive(
            "run", max_runtime=self.max_runtime, data_budget_mb=self.data_budget_mb,
            measurement_timeout=self.measurement_timeout,
        )
        if not 1 <= self.concurrency <= 1024:
            raise ConfigError(f"run.concurrency must be within 1..1024, not {self.concurrency}")
        if not 1 <= self.per_host <= 64:
            raise ConfigError(f"run.per_host must be within 1..64, not {self.per_host}")

    @property
    def data_budget_bytes(self) -> int | None:
        return None if self.data_budget_mb is None else int(self.data_budget_mb * 1_000_000)


@dataclass(frozen=True, slots=True)
class ListsConfig:
    files: tuple[Path, ...] = ()  # empty: bundled (or updated) global list + country list
    countries: tuple[str, ...] = ()  # extra country lists to measure and to keep updated
    source_url: str = DEFAULT_LISTS_SOURCE
    # category codes never measured, by any test (campaigns included), e.g. ["LGBT", "REL"]
    exclude_categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.exclude_categories:
            from agent.inputs.testlists import category_set

            try:
                codes = category_set(self.exclude_categories)
            except ValueError as exc:
                raise ConfigError(f"lists.exclude_categories: {exc}") from None
            object.__setattr__(self, "exclude_categories", tuple(sorted(codes)))
        for cc in self.countries:
            if not _CC_RE.match(cc):
                raise ConfigError(f"lists.countries: {cc!r} is not a two-letter country code")
        if not re.match(r"^https?://", self.source_url):
            raise ConfigError(f"lists.source_url must be an http(s) URL, not {self.source_url!r}")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    path: Path | None = None  # the file read, None when running on defaults
    state_dir: Path = field(default_factory=lambda: default_state_dir())
    net: NetConfig = field(default_factory=NetConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    run: RunConfig = field(default_factory=RunConfig)
    lists: ListsConfig = field(default_factory=ListsConfig)
    sections: Mapping[str, Any] = field(default_factory=dict)  # other modules' sections, raw
    # researcher deployments: the consent text version (docs/consent.md) the operator accepted
    # for this probe; None: the volunteer accepts it (agent.consent)
    consent_version: str | None = None

    def section(self, name: str) -> Mapping[str, Any]:
        """A section owned by another module (empty mapping when absent)."""
        value = self.sections.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"[{name}] must be a table")
        return value


def default_state_dir() -> Path:
    env = os.environ.get("VIGIL_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/vigil")
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "vigil"


def config_path(explicit: Path | None) -> tuple[Path, bool]:
    """(path, must_exist): a path named by the user must exist; the default may not."""
    if explicit is not None:
        return explicit, True
    env = os.environ.get("VIGIL_CONFIG")
    if env:
        return Path(env), True
    return DEFAULT_CONFIG_PATH, False


def load(explicit: Path | None = None) -> AgentConfig:
    path, must_exist = config_path(explicit)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(f"config file {path} does not exist") from None
        return AgentConfig()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return from_mapping(data, path)


_KNOWN = ("agent", "net", "control", "run", "lists")
# Sections other parts of the agent own and parse (agent.cli.config_check runs their parsers).
OWNED_ELSEWHERE = ("mqtt", "outbox", "scheduler", "campaigns", "throttling", "connectivity",
                   "apps", "packets", "censor_trace")
T = TypeVar("T")


def from_mapping(data: Mapping[str, Any], path: Path | None = None) -> AgentConfig:
    try:
        return _from_mapping(data, path)
    except ConfigError as exc:
        if path is None:
            raise
        message = str(exc).removeprefix(f"{path}: ")
        raise ConfigError(f"{locate(path, message)}: {message}") from None


def _from_mapping(data: Mapping[str, Any], path: Path | None = None) -> AgentConfig:
    where = str(path) if path is not None else "config"
    unknown_sections = sorted(set(data) - set(_KNOWN) - set(OWNED_ELSEWHERE))
    if unknown_sections:
        raise ConfigError(f"{where}: unknown section [{unknown_sections[0]}] (known: "
                          f"{', '.join(sorted((*_KNOWN, *OWNED_ELSEWHERE)))})")
    for name in _KNOWN:
        if name in data and not isinstance(data[name], Mapping):
            raise ConfigError(f"{where}: [{name}] must be a table")
    agent = dict(data.get("agent", {}))
    state_dir_raw = agent.pop("state_dir", None)
    consent_version = agent.pop("consent_version", None)
    if consent_version is not None and (
        not isinstance(consent_version, str) or not consent_version.strip()
    ):
        raise ConfigError(f"{where}: agent.consent_version must be a version string, e.g. \"1\"")
    if agent:
        raise ConfigError(f"{where}: unknown key(s) in [agent]: {', '.join(sorted(agent))}")
    if os.environ.get("VIGIL_STATE_DIR"):
        state_dir = default_state_dir()
    elif state_dir_raw is not None:
        if not isinstance(state_dir_raw, str) or not state_dir_raw:
            raise ConfigError(f"{where}: agent.state_dir must be a path string")
        state_dir = _relative_to(Path(state_dir_raw).expanduser(), path)
    else:
        state_dir = default_state_dir()
    net = _build(NetConfig, data.get("net", {}), "net", where)
    if net.ca_file is not None:
        net = dataclasses.replace(net, ca_file=_relative_to(net.ca_file.expanduser(), path))
    lists = _build(ListsConfig, data.get("lists", {}), "lists", where)
    lists = dataclasses.replace(
        lists, files=tuple(_relative_to(p.expanduser(), path) for p in lists.files)
    )
    return AgentConfig(
        path=path,
        state_dir=state_dir,
        net=net,
        control=_build(ControlConfig, data.get("control", {}), "control", where),
        run=_build(RunConfig, data.get("run", {}), "run", where),
        lists=lists,
        sections={k: v for k, v in data.items() if k not in _KNOWN},
        consent_version=consent_version.strip() if consent_version is not None else None,
    )


def _relative_to(p: Path, config_file: Path | None) -> Path:
    """Relative paths in a config file are relative to that file, not to the cwd."""
    if p.is_absolute() or config_file is None:
        return p
    return config_file.parent / p


def _build(cls: type[T], table: Mapping[str, Any], section: str, where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) in [{section}]: {', '.join(unknown)}")
    kwargs = {
        key: _coerce(value, hints[key], f"{section}.{key}", where) for key, value in table.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """Check a TOML value against a dataclass field type (the small set used above)."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list")
        return tuple(_coerce(v, args[0], key, where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {key} must be a path string")
        return Path(value)
    raise ConfigError(f"{where}: {key} has an unsupported type")  # pragma: no cover
