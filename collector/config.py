"""The collector's configuration: a TOML file (configs/collector.example.toml) into frozen
dataclasses, with command-line flags overriding file values.

Unknown keys are errors (a typo must not silently fall back to a default), and the broker
password can come from a file or the VIGIL_BROKER_PASSWORD environment variable so it need not
sit in the config file or the process list.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigError, locate
from collector.ingest.verify import VerifyPolicy
from collector.revocation import RevocationConfig

T = TypeVar("T")

PASSWORD_ENV = "VIGIL_BROKER_PASSWORD"
_POLICY = VerifyPolicy()


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 8885
    tls: bool = True
    ca_file: str | None = None  # None: the system trust store
    cert_file: str | None = None  # client certificate (optional)
    key_file: str | None = None
    username: str | None = "vigil-collector"
    password: str | None = field(default=None, repr=False)  # never in a repr or a log line
    password_file: str | None = None
    # Unique per collector process: the broker keeps this session (and its queued messages)
    # across restarts of the process.
    client_id: str = field(default_factory=lambda: f"vigil-collector-{socket.gethostname()}")
    session_expiry_s: int = 7 * 86400
    keepalive_s: int = 30
    # MQTT v5 Receive Maximum: unacknowledged messages the broker may send us at once.  Must
    # exceed what the ingest pipeline holds (batch_size x (pipeline_depth + 2)).
    receive_maximum: int = 3000
    share_group: str = "collectors"
    connect_timeout_s: float = 10.0

    def resolved_password(self) -> str | None:
        if self.password is not None:
            return self.password
        if self.password_file:
            try:
                return Path(self.password_file).read_text("utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read password_file {self.password_file}: {exc}"
                ) from None
        return os.environ.get(PASSWORD_ENV)


@dataclass(frozen=True)
class StoreConfig:
    url: str = field(default="", repr=False)  # may hold a database password
    busy_timeout_ms: int = 5000  # SQLite: wait this long for a lock before "unavailable"
    connect_timeout_s: int = 10  # PostgreSQL


@dataclass(frozen=True)
class IngestConfig:
    batch_size: int = 500  # messages per store transaction
    batch_wait_ms: float = 20.0  # flush a partial batch after this long
    pipeline_depth: int = 3  # batches verified ahead of the one being stored
    # Threads for the Ed25519 calls, used only when verify_processes resolves to 0.  Slower
    # than the event loop on CPython: Ed25519 releases the GIL, but each call must take it
    # back from the busy loop thread (bench/ingest.py).  0: no threads.
    verify_workers: int = 0
    # Verification processes: each batch's Ed25519 calls go to a worker process as plain data
    # (key, message, signature) and come back as bools, so they never wait for the event
    # loop's GIL.  -1 (auto, the default): 1 when the machine has more than one core and
    # verify_workers is 0, so a collector is then one process plus one verify worker; else 0
    # (verify on the event loop).  Measured (bench/ingest.py, 2 cores, SQLite/PostgreSQL):
    # one collector 4,100/3,300 msg/s inline, 6,000/5,800 with one worker, at the same total
    # CPU per message.  To use more cores, run more collectors on the shared subscription.
    verify_processes: int = -1
    key_refresh_s: float = 5.0  # reload enrolled keys (revocations take effect within this)
    retry_initial_s: float = 0.5  # store/broker retry backoff
    retry_max_s: float = 30.0
    stats_interval_s: float = 30.0  # log a line of counters this often (0: never)
    drain_timeout_s: float = 30.0  # on shutdown, wait this long to store what is in flight
    # Fold the stored measurements into the aggregation rollups this often, off the ingest's
    # transactions (collector.store.rollups); answers count the rows not folded yet anyway.
    # 0: never (another collector on the same store folds).
    fold_interval_s: float = 1.0
    max_message_bytes: int = _POLICY.max_bytes
    # Memory bound of what the broker may have in flight to this process (unacknowledged QoS 1
    # messages): the Receive Maximum asked for is lowered to fit (collector.ingest.intake).
    # 256 MiB: 250 messages of 1 MiB, or the full receive_maximum of ordinary few-kB ones.
    max_inflight_bytes: int = 268_435_456
    max_future_s: float = _POLICY.max_future_s
    max_age_days: float = _POLICY.max_age_s / 86400

    def verify_process_count(self) -> int:
        """How many verification processes to run (``verify_processes`` with auto resolved)."""
        if self.verify_processes >= 0:
            return self.verify_processes
        return 1 if (os.cpu_count() or 1) > 1 and self.verify_workers == 0 else 0

    def policy(self) -> VerifyPolicy:
        return VerifyPolicy(
            max_bytes=self.max_message_bytes,
            max_future_s=self.max_future_s,
            max_age_s=self.max_age_days * 86400,
        )


@dataclass(frozen=True)
class ApiConfig:
    """``vigil-collector serve``'s HTTP side (JSON API, dashboard, /metrics)."""

    # Loopback by default: operators publish the API through a reverse proxy (TLS, caching,
    # rate limits) rather than exposing aiohttp directly.
    host: str = "127.0.0.1"
    port: int = 8080
    # On SIGTERM, wait this long for open requests (exports) before closing them; together
    # with the ingest drain it must fit in the unit's TimeoutStopSec (30 s).
    shutdown_timeout_s: float = 5.0
    stats_cache_s: float = 5.0  # /api/v1/stats answers are reused this long (dashboards poll)
    # Store connections (one thread each) answering the API's requests side by side: the
    # dashboard opens with a dozen at once.  1 serialises them all.
    store_threads: int = 3


@dataclass(frozen=True)
class OutagesConfig:
    """The outage detector ``serve`` runs in the background (collector.outages.watch)."""

    enabled: bool = True
    heartbeat_s: float = 60.0  # the agents' status (heartbeat) interval
    window_s: float = 86400.0  # baseline window: the recent median
    alert_fraction: float = 0.5
    min_probes: float = 1.0
    webhooks: tuple[str, ...] = ()  # POST opened/closed events here (http(s) URLs)


@dataclass(frozen=True)
class SlowdownsConfig:
    """The whole-network slowdown detector ``serve`` runs in the background
    (collector.slowdowns.watch): each probe's benign transfer rate against its own past."""

    enabled: bool = True
    interval_s: float = 3600.0  # the agents' throttling interval (throttling_interval_hours)
    window_s: float = 7 * 86400.0  # each probe's baseline window
    alert_fraction: float = 0.3  # a probe is slow at or under this fraction of its baseline
    quorum: float = 0.6  # share of a group's active probes that must be slow
    min_probes: int = 3  # and at least this many
    webhooks: tuple[str, ...] = ()  # POST opened/closed events here (http(s) URLs)


@dataclass(frozen=True)
class CollectorConfig:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    outages: OutagesConfig = field(default_factory=OutagesConfig)
    slowdowns: SlowdownsConfig = field(default_factory=SlowdownsConfig)
    revocation: RevocationConfig = field(default_factory=RevocationConfig)

    def validate(self) -> CollectorConfig:
        b, i = self.broker, self.ingest
        if not self.store.url:
            raise ConfigError("no store URL: set [store] url or pass --store")
        if not 1 <= b.port <= 65535:
            raise ConfigError(f"broker port {b.port} out of range")
        if (b.cert_file is None) != (b.key_file is None):
            raise ConfigError("broker cert_file and key_file go together")
        if i.batch_size < 1 or i.pipeline_depth < 1 or i.verify_workers < 0:
            raise ConfigError("batch_size and pipeline_depth must be >= 1, verify_workers >= 0")
        if not -1 <= i.verify_processes <= 64:
            raise ConfigError("verify_processes must be -1 (auto) or 0-64")
        needed = i.batch_size * (i.pipeline_depth + 2)
        if not 1 <= b.receive_maximum <= 65535:
            raise ConfigError("receive_maximum must be between 1 and 65535")
        if b.receive_maximum < i.batch_size:
            raise ConfigError(
                f"receive_maximum {b.receive_maximum} is below batch_size {i.batch_size}: "
                f"batches could never fill (use at least {needed})"
            )
        if not 0 <= i.fold_interval_s <= 3600:
            raise ConfigError("fold_interval_s must be between 0 and 3600")
        if i.max_inflight_bytes < i.max_message_bytes:
            raise ConfigError("max_inflight_bytes must be at least max_message_bytes")
        if not b.client_id or len(b.client_id) > 128:
            raise ConfigError("broker client_id must be 1-128 characters")
        self._validate_serve()
        return self

    def _validate_serve(self) -> None:
        a, o = self.api, self.outages
        if not 1 <= a.port <= 65535:
            raise ConfigError(f"api port {a.port} out of range")
        if a.shutdown_timeout_s < 0 or a.stats_cache_s < 0:
            raise ConfigError("api shutdown_timeout_s and stats_cache_s must be >= 0")
        if not 1 <= a.store_threads <= 16:
            raise ConfigError("api store_threads must be 1 to 16")
        if not 1 <= o.heartbeat_s <= 3600:
            raise ConfigError("outages heartbeat_s must be between 1 and 3600")
        if not 60 <= o.window_s <= 30 * 86400:
            raise ConfigError("outages window_s must be between 60 and 2592000")
        if not 0 < o.alert_fraction < 1:
            raise ConfigError("outages alert_fraction must be between 0 and 1")
        if o.min_probes < 0.5:
            raise ConfigError("outages min_probes must be >= 0.5")
        for url in o.webhooks:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"outages webhook {url!r} must be an http(s) URL")
        self._validate_slowdowns()

    def _validate_slowdowns(self) -> None:
        s = self.slowdowns
        if not 1 <= s.interval_s <= 7 * 86400:
            raise ConfigError("slowdowns interval_s must be between 1 and 604800")
        if not 2 * s.interval_s <= s.window_s <= 60 * 86400:
            raise ConfigError("slowdowns window_s must be between 2 intervals and 60 days")
        if not 0 < s.alert_fraction < 1:
            raise ConfigError("slowdowns alert_fraction must be between 0 and 1")
        if not 0.5 <= s.quorum <= 1:
            raise ConfigError("slowdowns quorum must be between 0.5 and 1 (a majority)")
        if s.min_probes < 1:
            raise ConfigError("slowdowns min_probes must be >= 1")
        for url in s.webhooks:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"slowdowns webhook {url!r} must be an http(s) URL")


def _section(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{where}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{where}]: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"[{where}] {name} must be true or false")
        if isinstance(default, int | float) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"[{where}] {name} must be a number")
            if isinstance(default, int) and not isinstance(value, int):
                raise ConfigError(f"[{where}] {name} must be an integer")
        elif (isinstance(default, str) or default is None) and not isinstance(value, str):
            raise ConfigError(f"[{where}] {name} must be a string")
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"[{where}] {name} must be a list of strings")
            value = tuple(value)
        values[name] = value
    return cls(**values)


# Every section of collector.toml.  [helper] belongs to `vigil-collector helper`, which parses
# it strictly (collector.cli.helper); the other commands only check that it is a table.
SECTIONS = ("broker", "store", "ingest", "api", "outages", "slowdowns", "revocation", "helper")


def parse_config(data: Mapping[str, Any]) -> CollectorConfig:
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}] (known: {', '.join(SECTIONS)})")
    if not isinstance(data.get("helper", {}), Mapping):
        raise ConfigError("[helper] must be a table")
    return CollectorConfig(
        broker=_section(BrokerConfig, data.get("broker", {}), "broker"),
        store=_section(StoreConfig, data.get("store", {}), "store"),
        ingest=_section(IngestConfig, data.get("ingest", {}), "ingest"),
        api=_section(ApiConfig, data.get("api", {}), "api"),
        outages=_section(OutagesConfig, data.get("outages", {}), "outages"),
        slowdowns=_section(SlowdownsConfig, data.get("slowdowns", {}), "slowdowns"),
        revocation=_section(RevocationConfig, data.get("revocation", {}), "revocation"),
    )


def load_config(path: Path | None) -> CollectorConfig:
    """Read a TOML file (None: all defaults).  Raises ConfigError with the file's name."""
    if path is None:
        return CollectorConfig()
    return load_toml(path, parse_config)


def load_toml(path: Path, parse: Callable[[dict[str, Any]], T]) -> T:
    """Read a TOML file and ``parse`` it; every ConfigError names the file.

    Shared by the collector's and the control helper's config files so both report a
    missing, unreadable or malformed file the same way.
    """
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        return parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{locate(path, str(exc))}: {exc}") from None


def override(config: CollectorConfig, section: str, **values: Any) -> CollectorConfig:
    """Replace the non-None ``values`` in one section (command-line flags win over the file)."""
    changes = {k: v for k, v in values.items() if v is not None}
    if not changes:
        return config
    return replace(config, **{section: replace(getattr(config, section), **changes)})


STORE_ENV = "VIGIL_STORE"


def store_url_from(store: str | None, config: Path | None) -> tuple[str, StoreConfig]:
    """The store URL for a command: --store (or $VIGIL_STORE), else the config file's."""
    cfg = load_config(config).store
    url = store or cfg.url
    if not url:
        raise ConfigError(
            f"no store given: pass --store URL, set ${STORE_ENV} or [store] url in --config"
        )
    return url, cfg
