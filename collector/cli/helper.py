"""``vigil-collector helper``: run the control helper.

    vigil-collector helper --host 0.0.0.0 --port 8443 --tls-cert cert.pem --tls-key key.pem \\
        --ipdb ip2asn-v4.tsv --ipdb ip2asn-v6.tsv --probes-file probes.jsonl
    vigil-collector helper --config /etc/vigil/helper.toml          # same settings in a file

Flags win over the config file; a list flag given on the command line (``--ipdb``,
``--allow-range``, ``--deny-range``) replaces the file's list.  Config file (TOML)::

    [helper]
    host = "0.0.0.0"
    port = 8443
    tls_cert = "/etc/vigil/helper.crt"
    tls_key = "/etc/vigil/helper.key"
    mode = "signed"                      # or "open" (public research helper)
    probes_file = "/var/lib/vigil/probes.jsonl"
    ipdb = ["/var/lib/vigil/ip2asn-v4.tsv.gz", "/var/lib/vigil/ip2asn-v6.tsv.gz"]
    geo = ["/var/lib/vigil/dbip-country-lite.csv.gz"]   # where addresses are used (optional)
    whoami_zone = "whoami.helper.example.org"  # delegated here (NS): resolver attribution
    trusted_proxies = ["127.0.0.1/32"]   # reverse proxies whose X-Forwarded-For is believed
    path_prefix = "/vigil-helper"        # routes served under it (the proxy keeps the path)
    dns_listen = ["0.0.0.0:53", "[::]:53"]     # its DNS server (UDP and TCP)
    allow_range = ["198.18.0.0/15"]      # the namespace lab; nothing is allowed implicitly
    deny_range = ["203.0.113.7/32"]      # e.g. the collector's public (NATed) address
    ca_file = "/etc/vigil/lab-ca.pem"
    resolver = "9.9.9.9"                 # IP[:PORT]; default: the system resolver

    [helper.limits]                      # every key optional (defaults: collector.helper.app)
    max_concurrent = 128
    per_client_per_minute = 3000
    max_body_bytes = 8388608

SIGHUP re-reads the IP database and the probes file (the probes file is also re-read by itself
within seconds of a change); with systemd: ``ExecReload=/bin/kill -HUP $MAINPID``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import click
from aiohttp import web

from agent.errors import ConfigError
from agent.net.addr import parse_endpoint
from collector.config import SECTIONS, load_toml
from collector.helper.app import (
    HELPER_STATE,
    OPERATOR_CONFIG,
    HelperConfig,
    Limits,
    PrivacyAccessLogger,
    create_app,
    install_log_redaction,
    reload_data,
)
from collector.helper.control import ControlLimits

log = logging.getLogger("vigil.helper")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8780


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None


def parse_resolver(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address; port defaults to 53."""
    try:
        return parse_endpoint(text, default_port=53)
    except ValueError as exc:
        raise ConfigError(f"bad resolver: {exc}") from None


_LIMIT_FIELDS = {f.name for f in fields(Limits)} - {"control"}
_CONTROL_FIELDS = {f.name for f in fields(ControlLimits)}
_HELPER_KEYS = {
    "host", "port", "tls_cert", "tls_key", "mode", "probes_file", "ipdb", "allow_range",
    "deny_range", "ca_file", "resolver", "limits", "geo", "whoami_zone", "dns_listen",
    "trusted_proxies", "path_prefix",
}


def parse_listen(text: str) -> tuple[str, int]:
    """``IP:PORT`` or ``[IPv6]:PORT`` (a DNS listen address; the port is required)."""
    try:
        return parse_endpoint(text)
    except ValueError as exc:
        raise ConfigError(f"bad DNS listen address: {exc}") from None


def parse_config_data(data: Mapping[str, Any]) -> tuple[HelperConfig, ServeOptions]:
    """The ``[helper]`` table of a TOML document.  The file may be collector.toml, shared with
    the other collector commands: their sections are allowed (and checked by them), any other
    section, and any unknown key inside [helper], is an error."""
    unknown_sections = sorted(set(data) - set(SECTIONS))
    if unknown_sections:
        raise ConfigError(
            f"unknown section [{unknown_sections[0]}] (known: {', '.join(SECTIONS)})"
        )
    section = data.get("helper", {})
    if not isinstance(section, Mapping):
        raise ConfigError("[helper] must be a table")
    unknown = sorted(set(section) - _HELPER_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) in [helper]: {', '.join(unknown)}")

    def text(key: str) -> str | None:
        value = section.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"[helper] {key} must be a string")
        return value

    def strings(key: str) -> tuple[str, ...]:
        value = section.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[helper] {key} must be a list of strings")
        return tuple(value)

    port = section.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError("[helper] port must be an integer 1-65535")
    mode = text("mode") or "signed"
    if mode not in ("signed", "open"):
        raise ConfigError(f"[helper] mode must be signed or open, not {mode!r}")
    resolver = text("resolver")
    config = HelperConfig(
        mode=mode,  # type: ignore[arg-type]  # checked just above
        allow_ranges=strings("allow_range"),
        deny_ranges=strings("deny_range"),
        ca_file=_path(text("ca_file")),
        resolver=None if resolver is None else parse_resolver(resolver),
        ipdb_files=tuple(Path(p) for p in strings("ipdb")),
        geo_files=tuple(Path(p) for p in strings("geo")),
        probes_file=_path(text("probes_file")),
        limits=_parse_limits(section.get("limits", {})),
        whoami_zone=text("whoami_zone"),
        whoami_listen=tuple(parse_listen(v) for v in strings("dns_listen")),
        trusted_proxies=strings("trusted_proxies"),
        path_prefix=text("path_prefix") or "",
    )
    serve = ServeOptions(
        host=text("host") or DEFAULT_HOST,
        port=port,
        tls_cert=_path(text("tls_cert")),
        tls_key=_path(text("tls_key")),
    )
    return config, serve


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _parse_limits(table: Any) -> Limits:
    if not isinstance(table, Mapping):
        raise ConfigError("[helper.limits] must be a table")
    unknown = sorted(set(table) - _LIMIT_FIELDS - _CONTROL_FIELDS)
    if unknown:
        raise ConfigError(f"unknown key(s) in [helper.limits]: {', '.join(unknown)}")
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"[helper.limits] {key} must be a positive number")
        default = getattr(Limits() if key in _LIMIT_FIELDS else ControlLimits(), key)
        if isinstance(default, int) and not isinstance(value, int):
            raise ConfigError(f"[helper.limits] {key} must be an integer")
    control = ControlLimits(**{k: v for k, v in table.items() if k in _CONTROL_FIELDS})
    return Limits(**{k: v for k, v in table.items() if k in _LIMIT_FIELDS}, control=control)


def load_config_file(path: Path) -> tuple[HelperConfig, ServeOptions]:
    return load_toml(path, parse_config_data)


def server_ssl_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return context


def _install_sighup(app: web.Application) -> None:
    async def on_startup(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        state = app[HELPER_STATE]

        def reload() -> None:
            task = loop.create_task(reload_data(app))
            state.background.add(task)
            task.add_done_callback(state.background.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)

    async def on_cleanup(app: web.Application) -> None:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)


@click.command("helper")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML file with a [helper] table (flags override it).")
@click.option("--host", default=None, help=f"Address to listen on [{DEFAULT_HOST}].")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help=f"Port to listen on [{DEFAULT_PORT}].")
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Serve HTTPS with this certificate chain (PEM).")
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Private key for --tls-cert (PEM).")
@click.option("--ipdb", "ipdb_files", multiple=True, type=click.Path(path_type=Path),
              help="iptoasn.com ip2asn TSV (v4, v6 or combined; .gz ok). Repeatable.")
@click.option("--geo", "geo_files", multiple=True, type=click.Path(path_type=Path),
              help="IP location CSV (start,end,country; DB-IP/IPinfo/IP2Location lite); "
                   "repeatable. probe_cc is where the address is used when it knows.")
@click.option("--dns-whoami-zone", "whoami_zone", default=None, metavar="ZONE",
              help="A DNS zone delegated to this host: its answers tell probes their "
                   "resolver's egress address (resolver_ip, resolver_asn).")
@click.option("--dns-listen", "dns_listen", multiple=True, metavar="IP:PORT",
              help="Where the whoami zone's DNS server listens (UDP and TCP); repeatable.")
@click.option("--allow-range", "allow_ranges", multiple=True, metavar="CIDR",
              help="Allow targets in this otherwise refused range (lab: 198.18.0.0/15).")
@click.option("--deny-range", "deny_ranges", multiple=True, metavar="CIDR",
              help="Always refuse this range (e.g. the collector's public address).")
@click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Extra trust anchors for target TLS (private deployments, the lab).")
@click.option("--resolver", default=None, metavar="IP[:PORT]",
              help="DNS server for controls [the system resolver].")
@click.option("--mode", type=click.Choice(["signed", "open"]), default=None,
              help="signed: enrolled probes only (default); open: anyone, rate-limited.")
@click.option("--probes-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSON lines of {probe_id, public_key, revoked} (signed mode).")
@click.option("--max-concurrent", type=click.IntRange(1, 10_000), default=None,
              help="Controls running at once, all clients together [128].")
@click.option("--rate-per-minute", type=click.IntRange(1, 1_000_000), default=None,
              help="Requests per client per minute [3000 signed, 120 open].")
@click.option("--max-body-bytes", type=click.IntRange(1024, 1 << 30), default=None,
              help="Largest page the helper reads [8 MiB]; larger ones are refused.")
@click.option("--bulk-port", type=click.IntRange(1, 65535), default=None,
              help="Also serve the throttling test's bulk-transfer TLS endpoint on this port "
                   "(any SNI; the --tls-cert, else a self-signed one the probes pin).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def helper(
    config_file: Path | None,
    host: str | None,
    port: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    ipdb_files: tuple[Path, ...],
    geo_files: tuple[Path, ...],
    whoami_zone: str | None,
    dns_listen: tuple[str, ...],
    allow_ranges: tuple[str, ...],
    deny_ranges: tuple[str, ...],
    ca_file: Path | None,
    resolver: str | None,
    mode: str | None,
    probes_file: Path | None,
    max_concurrent: int | None,
    rate_per_minute: int | None,
    max_body_bytes: int | None,
    bulk_port: int | None,
    log_level: str,
) -> None:
    """Run the control helper: answers probes' "what does this site look like from outside?"."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_log_redaction(logging.getLogger().handlers)
    if config_file is not None:
        config, serve = load_config_file(config_file)
    else:
        config, serve = HelperConfig(), ServeOptions()
    config = _apply_flags(
        config,
        ipdb_files=ipdb_files,
        geo_files=geo_files,
        whoami_zone=whoami_zone,
        dns_listen=dns_listen,
        allow_ranges=allow_ranges,
        deny_ranges=deny_ranges,
        ca_file=ca_file,
        resolver=resolver,
        mode=mode,
        probes_file=probes_file,
        max_concurrent=max_concurrent,
        rate_per_minute=rate_per_minute,
        max_body_bytes=max_body_bytes,
    )
    serve = replace(
        serve,
        host=host if host is not None else serve.host,
        port=port if port is not None else serve.port,
        tls_cert=tls_cert if tls_cert is not None else serve.tls_cert,
        tls_key=tls_key if tls_key is not None else serve.tls_key,
    )
    tls = server_ssl_context(serve.tls_cert, serve.tls_key)
    app = create_app(config, extensions=[_reach_extension(serve, bulk_port)])
    _install_sighup(app)
    _log_startup(config, serve, app, tls is not None)
    web.run_app(
        app,
        host=serve.host,
        port=serve.port,
        ssl_context=tls,
        access_log_class=PrivacyAccessLogger,
        print=None,
        handle_signals=True,
    )


def _reach_extension(serve: ServeOptions, bulk_port: int | None) -> Any:
    """Throttling/app routes (collector.helper.reach) and, with --bulk-port, the bulk endpoint."""
    from collector.helper.bulk import BulkConfig, BulkServer
    from collector.helper.reach import reach_extension

    bulk = None
    if bulk_port is not None:
        bulk = BulkServer(BulkConfig(serve.host, bulk_port, serve.tls_cert, serve.tls_key))
    return reach_extension(bulk)


def _apply_flags(
    config: HelperConfig,
    *,
    ipdb_files: tuple[Path, ...],
    geo_files: tuple[Path, ...] = (),
    whoami_zone: str | None = None,
    dns_listen: tuple[str, ...] = (),
    allow_ranges: tuple[str, ...],
    deny_ranges: tuple[str, ...],
    ca_file: Path | None,
    resolver: str | None,
    mode: str | None,
    probes_file: Path | None,
    max_concurrent: int | None,
    rate_per_minute: int | None,
    max_body_bytes: int | None,
) -> HelperConfig:
    limits = config.limits
    if max_concurrent is not None:
        limits = replace(limits, max_concurrent=max_concurrent)
    if rate_per_minute is not None:
        limits = replace(limits, per_client_per_minute=rate_per_minute)
    if max_body_bytes is not None:
        limits = replace(limits, control=replace(limits.control, max_body_bytes=max_body_bytes))
    return replace(
        config,
        ipdb_files=ipdb_files or config.ipdb_files,
        geo_files=geo_files or config.geo_files,
        whoami_zone=whoami_zone if whoami_zone is not None else config.whoami_zone,
        whoami_listen=tuple(parse_listen(v) for v in dns_listen) or config.whoami_listen,
        allow_ranges=allow_ranges or config.allow_ranges,
        deny_ranges=deny_ranges or config.deny_ranges,
        ca_file=ca_file if ca_file is not None else config.ca_file,
        resolver=parse_resolver(resolver) if resolver is not None else config.resolver,
        mode=mode if mode is not None else config.mode,  # type: ignore[arg-type]
        probes_file=probes_file if probes_file is not None else config.probes_file,
        limits=limits,
    )


def _log_startup(
    config: HelperConfig, serve: ServeOptions, app: web.Application, tls: bool
) -> None:
    state = app[HELPER_STATE]
    log.info(
        "control helper: %s://%s:%d, mode %s, %d ipdb ranges, %d requests/min per client, %r",
        "https" if tls else "http", serve.host, serve.port, config.mode, len(state.ipdb),
        config.per_client_per_minute, state.policy,
        extra=OPERATOR_CONFIG,
    )
    if config.mode == "open":
        log.warning("open mode: anyone may use this helper (rate limits still apply)")
    if not tls and not _is_loopback(serve.host):
        log.warning(
            "serving plain HTTP on %s: probes cannot authenticate the helper's answers; "
            "use --tls-cert/--tls-key or a TLS-terminating proxy", serve.host,
            extra=OPERATOR_CONFIG,
        )


def _is_loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
