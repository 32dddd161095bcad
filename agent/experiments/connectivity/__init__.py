"""connectivity: is this network connected at all, right now?  (I/O; decisions in
``connectivity_logic``).

Run every minute by the scheduler.  One measurement = three kinds of independent checks, in
parallel, each bounded by a short timeout:

* the control helper (``GET /healthz`` on the configured control URL);
* anchors: TCP connects to well-known addresses, each tagged ``domestic`` or
  ``international`` (``[connectivity] anchors = ["198.51.100.1:443@international", ...]``);
* DNS: names resolved through the system resolver (``[connectivity] dns_names``).

The tracker state (is an outage open, since when) lives in a small JSON file in the state
directory, written atomically, so a restart during an outage does not lose its start.  Every
record carries the current state; the record that sees the network come back also carries the
closed outage (start, end, what failed).  Records made during the outage wait in the outbox.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from agent.errors import ConfigError
from agent.experiments import ExperimentBase, InputPolicy, Outcome, register
from agent.experiments.connectivity.analyze import (
    Check,
    TrackerState,
    advance,
    assess,
    verdict,
)
from agent.experiments.context import MeasurementContext, config_section
from agent.wire.record import Target

STATE_FILE = "connectivity-state.json"
DEFAULT_DNS_NAMES = ("example.com",)


@dataclass(frozen=True, slots=True)
class Anchor:
    ip: str
    port: int
    scope: str  # "domestic" | "international"


@dataclass(frozen=True, slots=True)
class ConnectivitySettings:
    anchors: tuple[Anchor, ...] = ()
    dns_names: tuple[str, ...] = DEFAULT_DNS_NAMES
    timeout: float = 5.0

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> ConnectivitySettings:
        unknown = set(section) - {"anchors", "dns_names", "timeout"}
        if unknown:
            raise ConfigError(f"unknown key(s) in [connectivity]: {', '.join(sorted(unknown))}")
        anchors = tuple(parse_anchor(a) for a in _strings(section, "anchors"))
        names = _strings(section, "dns_names") or DEFAULT_DNS_NAMES
        timeout = section.get("timeout", 5.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            0 < timeout <= 30
        ):
            raise ConfigError("[connectivity] timeout must be a number in (0, 30]")
        return cls(anchors=anchors, dns_names=tuple(names), timeout=float(timeout))


def _strings(section: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = section.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"[connectivity] {key} must be a list of strings")
    return tuple(value)


def parse_anchor(text: str) -> Anchor:
    """``IP:PORT`` or ``IP:PORT@domestic`` / ``@international`` (the default)."""
    addr, _, scope = text.partition("@")
    scope = scope or "international"
    if scope not in ("domestic", "international"):
        raise ConfigError(f"anchor {text!r}: scope must be domestic or international")
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"anchor {text!r}: use IP:PORT[@scope]")
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ConfigError(f"anchor {text!r}: give an IP address (DNS is checked apart)") from None
    return Anchor(host.strip("[]"), int(port), scope)


def load_state(state_dir: Path | None) -> TrackerState:
    if state_dir is None:
        return TrackerState()
    try:
        return TrackerState.from_json(json.loads((state_dir / STATE_FILE).read_text("utf-8")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return TrackerState()


def save_state(state_dir: Path | None, state: TrackerState) -> None:
    if state_dir is None:
        return
    from agent.state import atomic_write

    atomic_write(state_dir / STATE_FILE, json.dumps(state.to_json()).encode())


async def _timed(kind: str, target: str, scope: str, coro: Any, origin: float) -> Check:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    failure = await coro
    return Check(kind, target, failure, round(t0 - origin, 6), round(loop.time() - origin, 6),
                 scope)


async def check_control(ctx: MeasurementContext, timeout: float) -> str | None:
    control = ctx.control
    if control is None or not hasattr(control, "request_json"):
        return "unknown_failure: no control helper configured"
    from agent.errors import ControlError

    try:
        async with asyncio.timeout(timeout):
            await control.request_json("GET", "/healthz")
    except TimeoutError:
        return "generic_timeout_error"
    except ControlError as exc:
        failure: str = getattr(exc, "failure", str(exc))
        # an HTTP refusal still proves the helper is reachable
        return None if failure.startswith("unknown_failure: control helper answered") else failure
    return None


async def check_anchor(anchor: Anchor, timeout: float, ctx: MeasurementContext) -> str | None:
    from agent.net.tcp import connect

    conn = await connect(anchor.ip, anchor.port, timeout=timeout, origin=0.0)
    note = ctx.note_local_address
    if note is not None:
        note(conn.local_ip)
    conn.close()
    return conn.failure


async def check_dns(name: str, ctx: MeasurementContext, timeout: float) -> str | None:
    from agent.net.dns import start_query

    loop = asyncio.get_running_loop()
    try:
        pending = start_query(name, "A", ctx.resolver, origin=loop.time(), timeout=timeout,
                              linger=0.0, on_bytes=ctx.on_bytes)
    except ValueError as exc:
        return f"unknown_failure: {exc}"
    query = await pending.result()
    # any answer from the resolver, even NXDOMAIN, proves DNS works; silence does not
    if query.replies:
        return None
    return query.failure or "generic_timeout_error"


async def run_checks(ctx: MeasurementContext, settings: ConnectivitySettings) -> list[Check]:
    loop = asyncio.get_running_loop()
    origin = loop.time()
    tasks = []
    control_url = ctx.control.base_url if ctx.control is not None else None
    if control_url is not None:
        scope = "international"
        tasks.append(_timed("control", str(urlsplit(control_url).netloc), scope,
                            check_control(ctx, settings.timeout), origin))
    for a in settings.anchors:
        tasks.append(_timed("anchor", f"{a.ip}:{a.port}", a.scope,
                            check_anchor(a, settings.timeout, ctx), origin))
    for name in settings.dns_names:
        tasks.append(_timed("dns", name, "domestic", check_dns(name, ctx, settings.timeout),
                            origin))
    return list(await asyncio.gather(*tasks))


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@register
class Connectivity(ExperimentBase):
    name: ClassVar[str] = "connectivity"
    version: ClassVar[str] = "0.1.0"
    input_policy: ClassVar[InputPolicy] = InputPolicy.OWN  # its configured anchors

    async def run(self, target: Target, ctx: MeasurementContext) -> Outcome:
        section = config_section(ctx, "connectivity")
        settings = ConnectivitySettings.from_section(section)
        state_dir = ctx.config.state_dir if ctx.config is not None else None
        checks = await run_checks(ctx, settings)
        assessment = assess(checks)
        previous = load_state(state_dir)
        state, closed = advance(previous, assessment, now_rfc3339())
        save_state(state_dir, state)
        keys: dict[str, Any] = {
            "state": assessment.state,
            "checks": [c.to_json() for c in checks],
            "failed": list(assessment.failed),
            "outage": None if closed is None else closed.to_json(),
            "ongoing_outage": None if state.open_outage is None else state.open_outage.to_json(),
        }
        return Outcome(test_keys=keys, verdict=verdict(assessment))


def describe(checks: Sequence[Check]) -> str:
    """One line for logs: ``3/4 ok (failed: anchor:1.2.3.4:443)``."""
    ok = sum(1 for c in checks if c.ok)
    failed = [f"{c.kind}:{c.target}" for c in checks if not c.ok]
    return f"{ok}/{len(checks)} ok" + (f" (failed: {', '.join(failed)})" if failed else "")
