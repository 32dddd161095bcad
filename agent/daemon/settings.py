"""The ``[scheduler]`` and ``[campaigns]`` sections of the agent config, and the policy they make.

``agent.config`` keeps sections it does not own raw (``AgentConfig.section``); this module
checks these two as strictly (an unknown key is a typo, named with the file) and turns them into
the pure core's ``Policy`` (agent.daemon.planner).

    [scheduler]
    web_interval_hours = 6          # web_connectivity over the test lists
    urls_per_run = 150              # a random share of the lists per run (0: all)
    apps_interval_hours = 12
    throttling_interval_hours = 24
    connectivity_interval_seconds = 60
    refresh_hours = 24              # test lists and fingerprints
    jitter = 0.1                    # each run at interval +- 10 %
    quiet_hours = ["23:00-07:00"]   # local time; connectivity checks go on
    timezone = ""                   # IANA name; empty: the system's
    daily_budget_mb = 200           # 0: no budget
    tests = ["web_connectivity"]    # absent: every scheduled test; []: campaigns only
    stop_grace_seconds = 5          # on SIGTERM, how long an in-flight measurement may finish
    log_file = ""                   # empty: stderr (the journal under systemd)
    log_max_kb = 1024               # rotated log size (x3 files)

    [campaigns]
    operator_keys = ["<base64 Ed25519 public key>"]
    country = ""                    # also follow vigil/v1/campaigns/<CC>; empty: learned
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config import AgentConfig
from agent.daemon.planner import JobSpec, Policy, QuietHours
from agent.errors import ConfigError
from agent.wire.commands import Command, public_key_from_b64

# What one run of each scheduled test uses, for the budget check before it starts.  Web and
# campaign runs are also charged per measurement as they go (agent.daemon.loop).
EST_BYTES = {
    "web_connectivity": 150_000,  # per URL: DNS, TCP, TLS, up to the body cap (usually less)
    "apps": 200_000,
    "throttling": 8_000_000,  # a few bulk transfers
    "connectivity": 3_000,
    "refresh": 3_000_000,  # the test lists
}
SCHEDULED_TESTS = ("web_connectivity", "apps", "throttling", "connectivity")


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    web_interval_hours: float = 6.0
    urls_per_run: int = 150
    apps_interval_hours: float = 12.0
    throttling_interval_hours: float = 24.0
    connectivity_interval_seconds: float = 60.0
    refresh_hours: float = 24.0
    jitter: float = 0.1
    quiet_hours: tuple[QuietHours, ...] = ()
    timezone: str = ""
    daily_budget_mb: float = 200.0
    tests: tuple[str, ...] | None = None  # None: all; (): none (operator campaigns only)
    stop_grace_seconds: float = 5.0
    log_file: Path | None = None
    log_max_kb: int = 1024
    initial_spread_seconds: float = 1800.0
    pause_min_seconds: float = 1.0
    pause_max_seconds: float = 5.0

    @property
    def tz(self) -> tzinfo:
        if not self.timezone:
            local = datetime.now().astimezone().tzinfo
            assert local is not None  # astimezone() always sets one
            return local
        return ZoneInfo(self.timezone)

    def enabled(self, test: str) -> bool:
        return self.tests is None or test in self.tests


@dataclass(frozen=True, slots=True)
class CampaignConfig:
    operator_keys: tuple[Ed25519PublicKey, ...] = ()
    country: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    campaigns: CampaignConfig = field(default_factory=CampaignConfig)


def _where(config: AgentConfig) -> str:
    return str(config.path) if config.path is not None else "config"


def _number(
    table: Mapping[str, Any], key: str, default: float, where: str, *, lo: float, hi: float
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: scheduler.{key} must be a number")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}: scheduler.{key} must be within {lo:g}..{hi:g}, not {value}")
    return float(value)


def _strings(table: Mapping[str, Any], key: str, where: str, section: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {section}.{key} must be a list of strings")
    return tuple(value)


def parse_scheduler(table: Mapping[str, Any], where: str) -> SchedulerConfig:
    known = set(SchedulerConfig.__dataclass_fields__)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) in [scheduler]: {', '.join(unknown)}")
    d = SchedulerConfig()
    quiet: list[QuietHours] = []
    for text in _strings(table, "quiet_hours", where, "scheduler"):
        try:
            quiet.append(QuietHours.parse(text))
        except ValueError as exc:
            raise ConfigError(f"{where}: scheduler.quiet_hours: {exc}") from None
    tz = table.get("timezone", "")
    if not isinstance(tz, str):
        raise ConfigError(f"{where}: scheduler.timezone must be a string")
    if tz:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"{where}: scheduler.timezone {tz!r} is not a known zone") from None
    tests = _strings(table, "tests", where, "scheduler") if "tests" in table else None
    for t in tests or ():
        if t not in SCHEDULED_TESTS:
            raise ConfigError(
                f"{where}: scheduler.tests: {t!r} is not one of {', '.join(SCHEDULED_TESTS)}"
            )
    log_file = table.get("log_file", "")
    if not isinstance(log_file, str):
        raise ConfigError(f"{where}: scheduler.log_file must be a path string")
    urls = table.get("urls_per_run", d.urls_per_run)
    if isinstance(urls, bool) or not isinstance(urls, int) or not 0 <= urls <= 100_000:
        raise ConfigError(f"{where}: scheduler.urls_per_run must be an integer 0..100000")
    week = 7 * 24.0
    cfg = SchedulerConfig(
        web_interval_hours=_number(
            table, "web_interval_hours", d.web_interval_hours, where, lo=0.25, hi=week
        ),
        urls_per_run=urls,
        apps_interval_hours=_number(
            table, "apps_interval_hours", d.apps_interval_hours, where, lo=0.25, hi=week
        ),
        throttling_interval_hours=_number(
            table, "throttling_interval_hours", d.throttling_interval_hours, where, lo=0.25, hi=week
        ),
        connectivity_interval_seconds=_number(
            table,
            "connectivity_interval_seconds",
            d.connectivity_interval_seconds,
            where,
            lo=10,
            hi=3600,
        ),
        refresh_hours=_number(table, "refresh_hours", d.refresh_hours, where, lo=1, hi=4 * week),
        jitter=_number(table, "jitter", d.jitter, where, lo=0, hi=0.5),
        quiet_hours=tuple(quiet),
        timezone=tz,
        daily_budget_mb=_number(table, "daily_budget_mb", d.daily_budget_mb, where, lo=0, hi=1e7),
        tests=tests,
        stop_grace_seconds=_number(
            table, "stop_grace_seconds", d.stop_grace_seconds, where, lo=0, hi=60
        ),
        log_file=Path(log_file) if log_file else None,
        log_max_kb=int(_number(table, "log_max_kb", d.log_max_kb, where, lo=16, hi=1e6)),
        initial_spread_seconds=_number(
            table, "initial_spread_seconds", d.initial_spread_seconds, where, lo=0, hi=86400
        ),
        pause_min_seconds=_number(
            table, "pause_min_seconds", d.pause_min_seconds, where, lo=0, hi=600
        ),
        pause_max_seconds=_number(
            table, "pause_max_seconds", d.pause_max_seconds, where, lo=0, hi=600
        ),
    )
    if cfg.pause_max_seconds < cfg.pause_min_seconds:
        raise ConfigError(f"{where}: scheduler.pause_max_seconds < pause_min_seconds")
    return cfg


def parse_campaigns(table: Mapping[str, Any], where: str) -> CampaignConfig:
    unknown = sorted(set(table) - {"operator_keys", "country"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) in [campaigns]: {', '.join(unknown)}")
    keys: list[Ed25519PublicKey] = []
    for text in _strings(table, "operator_keys", where, "campaigns"):
        try:
            keys.append(public_key_from_b64(text))
        except ConfigError as exc:
            raise ConfigError(f"{where}: campaigns.operator_keys: {exc}") from None
    country = table.get("country", "")
    if not isinstance(country, str) or (country and not (len(country) == 2 and country.isalpha())):
        raise ConfigError(f"{where}: campaigns.country must be a two-letter country code")
    return CampaignConfig(operator_keys=tuple(keys), country=country.upper() or None)


def settings(config: AgentConfig) -> Settings:
    where = _where(config)
    return Settings(
        scheduler=parse_scheduler(config.section("scheduler"), where),
        campaigns=parse_campaigns(config.section("campaigns"), where),
    )


def base_policy(s: SchedulerConfig) -> Policy:
    """The volunteer's standing schedule (campaign jobs are added by campaign_jobs())."""
    hour = 3600.0
    jobs: list[JobSpec] = []

    def add(name: str, interval: float, **kw: Any) -> None:
        jobs.append(JobSpec(name, kw.pop("kind", name), interval, s.jitter * interval, **kw))

    if s.enabled("connectivity"):
        add(
            "connectivity",
            s.connectivity_interval_seconds,
            est_bytes=EST_BYTES["connectivity"],
            quiet_ok=True,
            budget_exempt=True,
        )
    if s.enabled("web_connectivity"):
        per_run = s.urls_per_run or 1000
        add(
            "web_connectivity",
            s.web_interval_hours * hour,
            est_bytes=EST_BYTES["web_connectivity"] * min(per_run, 20),
        )
    if s.enabled("apps"):
        add("apps", s.apps_interval_hours * hour, est_bytes=EST_BYTES["apps"])
    if s.enabled("throttling"):
        add("throttling", s.throttling_interval_hours * hour, est_bytes=EST_BYTES["throttling"])
    add("refresh", s.refresh_hours * hour, est_bytes=EST_BYTES["refresh"])
    # Housekeeping (outbox bound, replay-store pruning, state file) costs no network.
    add("housekeeping", 600.0, quiet_ok=True, budget_exempt=True, first_run_max=60.0)
    return Policy(
        jobs=tuple(jobs),
        tz=s.tz,
        daily_budget_bytes=int(s.daily_budget_mb * 1_000_000),
        quiet=s.quiet_hours,
        initial_spread=s.initial_spread_seconds,
        pause_min=s.pause_min_seconds,
        pause_max=s.pause_max_seconds,
    )


def campaign_jobs(campaigns: list[Command]) -> list[JobSpec]:
    """One job per (campaign, test).  The volunteer's quiet hours and budget still apply."""
    jobs: list[JobSpec] = []
    for c in campaigns:
        for t in c.tests:
            est = EST_BYTES.get(t.test_name, 200_000)
            jobs.append(
                JobSpec(
                    name=f"campaign:{c.command_id}:{t.test_name}",
                    kind=t.test_name,
                    interval=t.interval,
                    jitter=min(0.2 * t.interval, 300.0),
                    est_bytes=est * max(1, min(len(t.inputs), 20)),
                    window=(c.not_before, c.not_after),
                    first_run_max=min(t.interval, 300.0),
                )
            )
    return jobs
