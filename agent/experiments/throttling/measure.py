"""The throttling measurement (all I/O): bulk endpoint rounds, address transfers, control.

Order of work for one target host:

1. ask the helper where its bulk endpoint is (``GET /api/v1/bulk``: port and the certificate
   to pin);
2. paired rounds against the bulk endpoint, ABBA order (benign first in even rounds, target
   first in odd ones), until ``analysis.decided`` says the answer is clear (at least 2 rounds
   for "not throttled", 3 for "throttled") or the rounds, the data budget or the time budget run
   out;
3. unless SNI throttling was found, two downloads from the target's own address (SNI and Host =
   the target, certificate verified, so a DNS-injected address is not mistaken for the site) and
   the helper's own download of the same URL (``POST /api/v1/throughput``);
4. the probe's recent benign rates (a small file in the state directory) as a further baseline.

Sizes and durations adapt to the path: the first benign transfer measures the RTT and the rate;
later bulk transfers ask for about ``10 RTT`` (at least 0.2 s) worth of data at that rate,
between 64 kB and their share of the budget, and may last ``10 RTT + 3x`` their expected time
(between ``transfer_max_seconds`` and ``transfer_seconds_cap``), so a 2 Mbit/s line is not asked
for 200 kB per transfer and a 300 ms path gets enough round trips.  The data budget
(``[throttling] data_budget_mb``, 2 MB by default) is split over the planned transfers; a
throttled transfer uses far less than its share.  Settings: the ``[throttling]`` section.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.errors import ConfigError, ControlError
from agent.experiments.throttling import analysis
from agent.experiments.throttling.model import (
    ControlThroughput,
    ThrottlingObservations,
    Transfer,
)
from agent.experiments.throttling.rates import transfer_figure
from agent.experiments.throttling.transfer import TransferSpec, download
from agent.net.dns import resolve_first, start_query

BASELINE_FILE = "throttling-baseline.json"
BASELINE_KEEP = 20
BASELINE_MAX_AGE = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class ThrottlingSettings:
    data_budget_mb: float = 2.0
    max_rounds: int = 4
    transfer_max_seconds: float = 1.0  # shortest time cap of one transfer
    transfer_seconds_cap: float = 4.0  # longest one (slow lines, long round trips)
    address_max_seconds: float = 2.5  # time cap of one download from the target's address
    sample_mean_s: float = 0.01
    address_test: bool = True
    address_transfers: int = 2
    time_budget_s: float = 20.0
    names: tuple[str, ...] = ()  # extra host names the scheduler tests (read by the scheduler)
    thresholds: analysis.Thresholds = field(default_factory=analysis.Thresholds)

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> ThrottlingSettings:
        known = {f.name for f in fields(cls)} - {"thresholds"}
        th_known = {f.name for f in fields(analysis.Thresholds)}
        unknown = set(section) - known - th_known
        if unknown:
            raise ConfigError(f"unknown key(s) in [throttling]: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for key in known & set(section):
            value = section[key]
            default = getattr(cls(), key)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"[throttling] {key} must be true or false")
            elif isinstance(default, tuple):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"[throttling] {key} must be a list of strings")
                value = tuple(value)
            elif isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"[throttling] {key} must be a positive number")
            elif isinstance(default, int) and not isinstance(value, int):
                raise ConfigError(f"[throttling] {key} must be an integer")
            kwargs[key] = value
        th = {k: section[k] for k in th_known & set(section)}
        if th:
            kwargs["thresholds"] = analysis.Thresholds(**th)
        return cls(**kwargs)

    @property
    def budget_bytes(self) -> int:
        return int(self.data_budget_mb * 1_000_000)

    def params(self) -> dict[str, Any]:
        return {
            "data_budget_bytes": self.budget_bytes,
            "max_rounds": self.max_rounds,
            "transfer_max_seconds": self.transfer_max_seconds,
            "transfer_seconds_cap": self.transfer_seconds_cap,
            "address_max_seconds": self.address_max_seconds,
            "sample_mean_s": self.sample_mean_s,
            "alpha": self.thresholds.alpha,
            "max_round_ratio": self.thresholds.max_round_ratio,
            "max_ratio": self.thresholds.max_ratio,
        }


def settings_from(ctx: Any) -> ThrottlingSettings:
    config = getattr(ctx, "config", None)
    if config is None:
        return ThrottlingSettings()
    return ThrottlingSettings.from_section(config.section("throttling"))


def benign_name(rng: random.Random | None = None) -> str:
    """A random benign name nobody filters: random label under a reserved TLD (RFC 2606)."""
    label = "".join((rng or random.SystemRandom()).choice("abcdefghijklmnopqrstuvwxyz")
                    for _ in range(12))
    return f"{label}.example"


def target_of(text: str) -> tuple[str, str, int, str]:
    """(host, url, port, path) for a listed URL or a bare host name (https:// by default; an
    http:// URL is fetched from the target's address as listed, in plain HTTP)."""
    parts = urlsplit(text if "://" in text else f"https://{text}/")
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError(f"no host in {text!r}")
    plain = parts.scheme == "http"
    port = parts.port or (80 if plain else 443)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return host, f"{'http' if plain else 'https'}://{parts.netloc}{path}", port, path


# ---- baseline history ---------------------------------------------------------------------------
def load_baseline(state_dir: Path | None, now: float) -> tuple[float, ...]:
    if state_dir is None:
        return ()
    try:
        data = json.loads((state_dir / BASELINE_FILE).read_text("utf-8"))
        entries = [(float(t), float(r)) for t, r in data.get("samples", [])]
    except (OSError, ValueError, TypeError, AttributeError):
        return ()
    return tuple(r for t, r in entries if now - t <= BASELINE_MAX_AGE and r > 0)


def save_baseline(state_dir: Path | None, now: float, rate: float) -> None:
    if state_dir is None or not math.isfinite(rate) or rate <= 0:
        return
    from agent.state import atomic_write

    path = state_dir / BASELINE_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
        entries = [[float(t), float(r)] for t, r in data.get("samples", [])]
    except (OSError, ValueError, TypeError, AttributeError):
        entries = []
    entries = [e for e in entries if now - e[0] <= BASELINE_MAX_AGE]
    entries.append([now, rate])
    with contextlib.suppress(OSError):  # a missing baseline only weakens a later comparison
        atomic_write(path, json.dumps({"samples": entries[-BASELINE_KEEP:]}).encode())


# ---- the measurement ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BulkEndpoint:
    ip: str
    port: int
    certificate_sha256: str
    max_bytes: int


async def _helper_host_ip(ctx: Any, base_url: str) -> str | None:
    host = urlsplit(base_url).hostname or ""
    try:
        import ipaddress

        ipaddress.ip_address(host)
        return host
    except ValueError:
        addrs = await resolve_first(host, ctx.resolver, timeout=ctx.net.dns_timeout,
                                    on_bytes=ctx.on_bytes)
        return addrs[0] if addrs else None


async def discover_bulk(ctx: Any) -> tuple[BulkEndpoint | None, str | None]:
    control = ctx.control
    if control is None or not hasattr(control, "request_json"):
        return None, "no_control_helper"
    try:
        info = await control.request_json("GET", "/api/v1/bulk")
    except ControlError as exc:
        return None, getattr(exc, "failure", str(exc))
    if not info.get("available"):
        return None, "bulk_endpoint_not_configured"
    ip = await _helper_host_ip(ctx, control.base_url)
    if ip is None:
        return None, "dns_no_answer"
    try:
        return BulkEndpoint(ip, int(info["port"]), str(info["certificate_sha256"]),
                            int(info.get("max_bytes", 4_194_304))), None
    except (KeyError, TypeError, ValueError):
        return None, "unknown_failure: malformed bulk endpoint answer"


def _pinned(tr: Transfer, bulk: BulkEndpoint) -> Transfer:
    """A transfer from an endpoint that is not the helper's (certificate mismatch) is useless:
    mark it failed so the analysis never compares against a man-in-the-middle."""
    if tr.peer_certificate_sha256 is None or tr.peer_certificate_sha256 == bulk.certificate_sha256:
        return tr
    from dataclasses import replace

    return replace(tr, failure="ssl_invalid_certificate", stop="failure")


MIN_BULK_BYTES = 65_536


@dataclass(frozen=True, slots=True)
class Pace:
    """Size and time cap of the next bulk transfer, from what the path has shown so far."""

    max_bytes: int
    max_seconds: float


def next_pace(first_benign: Transfer | None, share: int, st: ThrottlingSettings) -> Pace:
    """Adapt a bulk transfer to the path (pure): about ten round trips' worth of data at the
    benign rate just measured, and time for ten round trips plus three times that data."""
    fig = None if first_benign is None else transfer_figure(first_benign,
                                                             st.thresholds.min_rate_bytes)
    if fig is None or fig.rate_bps is None or fig.rtt_s is None:
        return Pace(share, st.transfer_max_seconds)
    goal_s = max(0.2, 10.0 * fig.rtt_s)
    size = int(min(share, max(MIN_BULK_BYTES, fig.rate_bps * goal_s / 8.0)))
    seconds = 10.0 * fig.rtt_s + 3.0 * size * 8.0 / fig.rate_bps
    seconds = min(st.transfer_seconds_cap, max(st.transfer_max_seconds, seconds))
    return Pace(size, round(seconds, 3))


async def measure(input_: str, ctx: Any, settings: ThrottlingSettings | None = None
                  ) -> ThrottlingObservations:
    st = settings or settings_from(ctx)
    loop = asyncio.get_running_loop()
    origin = loop.time()
    deadline = origin + st.time_budget_s
    host, url, port, path = target_of(input_)
    benign = benign_name()
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    insecure.set_alpn_protocols(["http/1.1"])
    config = getattr(ctx, "config", None)
    state_dir: Path | None = getattr(config, "state_dir", None)
    history = load_baseline(state_dir, time.time())
    used = 0
    transfers: list[Transfer] = []
    planned = 2 * st.max_rounds + (st.address_transfers if st.address_test else 0)
    share = max(MIN_BULK_BYTES, st.budget_bytes // max(1, planned))
    note = getattr(ctx, "note_local_address", None)

    def obs(**extra: Any) -> ThrottlingObservations:
        return ThrottlingObservations(
            target=host, input=input_, benign_sni=benign, transfers=tuple(transfers),
            baseline_history_bps=history, params=st.params(), **extra,
        )

    bulk, bulk_failure = await discover_bulk(ctx)
    fixed: dict[str, Any] = {
        "bulk_endpoint": None if bulk is None else f"{bulk.ip}:{bulk.port}",
        "bulk_failure": bulk_failure,
    }
    first_benign: Transfer | None = None
    if bulk is not None:
        for rnd in range(st.max_rounds):
            order = ("benign_sni", "target_sni") if rnd % 2 == 0 else ("target_sni", "benign_sni")
            pace = next_pace(first_benign, min(share, bulk.max_bytes), st)
            for kind in order:
                cap = min(pace.max_bytes, st.budget_bytes - used)
                if cap <= 0 or loop.time() >= deadline:
                    break
                spec = TransferSpec(
                    kind=kind, round=rnd, ip=bulk.ip, port=bulk.port,
                    server_name=benign if kind == "benign_sni" else host,
                    host_header=benign if kind == "benign_sni" else host,
                    path=f"/bulk?bytes={cap}", context=insecure, max_bytes=cap,
                    max_seconds=pace.max_seconds, sample_mean=st.sample_mean_s,
                    connect_timeout=ctx.net.connect_timeout, tls_timeout=ctx.net.tls_timeout,
                )
                tr, _ = await download(spec, origin=origin, on_bytes=ctx.on_bytes,
                                       note_local=note)
                tr = _pinned(tr, bulk)
                transfers.append(tr)
                used += tr.bytes
                if kind == "benign_sni" and first_benign is None and transfer_figure(
                        tr, st.thresholds.min_rate_bytes).usable:
                    first_benign = tr
                    pace = next_pace(first_benign, min(share, bulk.max_bytes), st)
            if analysis.decided(obs(**fixed), st.thresholds):
                break
            if used >= st.budget_bytes or loop.time() >= deadline:
                break
    sni = analysis.sni_test(obs(**fixed), st.thresholds)
    benign_now = analysis.benign_reference(obs(**fixed), st.thresholds)["rate_bps"]
    if sni.decision == "not_throttled" and benign_now:
        save_baseline(state_dir, time.time(), float(benign_now))
    control_tp: ControlThroughput | None = None
    control_failure: str | None = None
    address_failure: str | None = None
    address_failed_at: str | None = None
    if st.address_test and sni.decision != "throttled":
        addrs, dns_failure = await _resolve(ctx, host)
        if not addrs:
            address_failure = dns_failure or "dns_no_answer"
            address_failed_at = "dns"
        else:
            address_failure = await _address_transfers(
                ctx, st, _AddressTarget(addrs[0], port, host, path, url.startswith("https://")),
                origin=origin, deadline=deadline, share=share,
                budget_left=st.budget_bytes - used, transfers=transfers, note=note,
            )
        control_tp, control_failure = await _control_throughput(ctx, url, share)
    return obs(**fixed, control=control_tp, control_failure=control_failure,
               address_failure=address_failure, address_failed_at=address_failed_at)


@dataclass(frozen=True, slots=True)
class _AddressTarget:
    ip: str
    port: int
    host: str
    path: str
    tls: bool


async def _address_transfers(
    ctx: Any, st: ThrottlingSettings, target: _AddressTarget, *, origin: float,
    deadline: float, share: int, budget_left: int, transfers: list[Transfer],
    note: Any,
) -> str | None:
    """Transfers from the target's own address (appended to ``transfers``), then two at once
    when the single ones were slow enough to ask whether the address is capped; the failure
    that ended them early, if one did."""
    loop = asyncio.get_running_loop()
    used = 0

    def spec(kind: str, rnd: int, cap: int) -> TransferSpec:
        return TransferSpec(
            kind=kind, round=rnd, ip=target.ip, port=target.port,
            server_name=target.host, host_header=target.host, path=target.path,
            context=ctx.tls.verify, max_bytes=cap, max_seconds=st.address_max_seconds,
            sample_mean=st.sample_mean_s, connect_timeout=ctx.net.connect_timeout,
            tls_timeout=ctx.net.tls_timeout, tls=target.tls,
        )

    for i in range(st.address_transfers):
        cap = min(share, budget_left - used)
        if cap <= 0 or loop.time() >= deadline:
            return None
        tr, status = await download(spec("address", st.max_rounds + i, cap), origin=origin,
                                    on_bytes=ctx.on_bytes, note_local=note)
        transfers.append(tr)
        used += tr.bytes
        if tr.failure is not None and tr.first_byte_t is None:
            return None  # refused, reset or silent: a second try would say the same
        if status is not None and status >= 300:
            return f"http_status_{status}"
    singles = [t for t in transfers if t.kind == "address"]
    cap = min(share, (budget_left - used) // 2)
    if cap <= 0 or loop.time() >= deadline or not analysis.wants_parallel(singles,
                                                                          st.thresholds):
        return None
    rnd = st.max_rounds + st.address_transfers
    together = asyncio.Barrier(2)
    pair = await asyncio.gather(*(
        download(spec("address_parallel", rnd, cap), origin=origin, on_bytes=ctx.on_bytes,
                 note_local=note, start_together=together) for _ in range(2)))
    transfers.extend(tr for tr, _ in pair)
    return None


async def _resolve(ctx: Any, host: str) -> tuple[tuple[str, ...], str | None]:
    """The target's addresses from the probe's resolver, or the DNS failure string."""
    try:
        import ipaddress

        ipaddress.ip_address(host)
        return (host,), None
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        pending = start_query(host, "A", ctx.resolver, origin=loop.time(),
                              timeout=ctx.net.dns_timeout, linger=0.0, on_bytes=ctx.on_bytes)
    except ValueError:
        return (), "dns_no_answer"
    query = await pending.result()
    if query.failure is not None:
        return (), query.failure
    return tuple(query.addrs), None if query.addrs else "dns_no_answer"


async def _control_throughput(
    ctx: Any, url: str, max_bytes: int
) -> tuple[ControlThroughput | None, str | None]:
    control = ctx.control
    if control is None or not hasattr(control, "request_json"):
        return None, "no_control_helper"
    try:
        answer = await control.request_json(
            "POST", "/api/v1/throughput", {"url": url, "max_bytes": max_bytes, "max_seconds": 3.0}
        )
        return ControlThroughput.from_json(answer), None
    except ControlError as exc:
        return None, getattr(exc, "failure", str(exc))
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"unknown_failure: malformed throughput answer {type(exc).__name__}"


