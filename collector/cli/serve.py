"""``vigil-collector serve``: the collector service in one process: MQTT ingest, outage
detector, JSON API, dashboard, /metrics and /healthz.

    vigil-collector serve --config /etc/vigil/collector.toml
    vigil-collector serve --store sqlite:///var/lib/vigil/collector.db --no-ingest --port 8081

Listens on 127.0.0.1:8080 unless told otherwise ([api] host/port or --host/--port).  Publish
it through a reverse proxy (nginx, Caddy) that terminates TLS and adds caching and rate
limits; binding a public address serves plain HTTP and is warned about.  The API is
read-only: nothing on it changes the store.

Signals, matching systemd/vigil-collector.service (KillSignal=SIGTERM, TimeoutStopSec=30, no
ExecReload):

* SIGTERM, SIGINT: graceful stop.  Stop accepting connections, give open requests
  ``[api] shutdown_timeout_s`` (5 s), and meanwhile let the ingest store and acknowledge what
  it holds (``[ingest] drain_timeout_s``); the broker keeps everything unacknowledged for the
  next start.  Exit 0.
* SIGHUP: the same graceful stop, not a reload: restart the service to apply a changed
  config (hence no ExecReload in the unit).  Handling it, rather than dying from it, means a
  closed terminal still drains the ingest cleanly.

Exit codes: 0 stopped by a signal; 1 runtime failure (store unreachable at start, address in
use, a background task died: systemd restarts the service); 2 configuration error (systemd's
RestartPreventExitStatus=2 leaves it stopped until fixed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from ipaddress import ip_address
from pathlib import Path

import click
from aiohttp import web

from agent.errors import ConfigError, VigilError
from collector.config import STORE_ENV, CollectorConfig, load_config, override
from collector.runtime import RUNTIME, ServeSettings
from collector.service import create_app

log = logging.getLogger("vigil.collector.serve")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# No client address: behind the reverse proxy it is the proxy's, and the readers of a
# censorship archive are nobody's business.
ACCESS_LOG_FORMAT = '"%r" %s %b %Tfs'


class ServeError(VigilError):
    """The service cannot run (address in use, background work died)."""


def is_loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def run_server(settings: ServeSettings, stop: asyncio.Event | None = None,
                     access_log: logging.Logger | None = None) -> None:
    """Serve until SIGTERM/SIGINT/SIGHUP (or ``stop``), then shut down gracefully.

    Raises ServeError when the service cannot start or a background task died, ConfigError
    when that task died of a configuration problem (e.g. unreadable broker TLS files).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info("%s: already stopping", sig.name)
            return
        log.info("%s: stopping (store and acknowledge what is in flight, then exit)",
                 sig.name)
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    api = settings.config.api
    app = create_app(settings)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=access_log, access_log_format=ACCESS_LOG_FORMAT,
        shutdown_timeout=api.shutdown_timeout_s,
    )
    try:
        await runner.setup()  # opens the stores, starts the ingest and the detector
        site = web.TCPSite(runner, api.host, api.port)
        try:
            await site.start()
        except OSError as exc:
            raise ServeError(f"cannot listen on {api.host}:{api.port}: {exc.strerror}") from None
        _log_listening(settings)
        failed = app[RUNTIME].failed
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(failed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
    finally:
        await runner.cleanup()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    rt = app[RUNTIME]
    if rt.failure is not None:
        if isinstance(rt.error, ConfigError):
            raise ConfigError(rt.failure)
        raise ServeError(rt.failure)
    log.info("stopped")


def _log_listening(settings: ServeSettings) -> None:
    api = settings.config.api
    log.info(
        "serving http://%s:%d/ (dashboard /, API /api/v1, /metrics, /healthz); ingest %s, "
        "outage detector %s",
        api.host, api.port, "on" if settings.ingest else "off",
        "on" if settings.outages and settings.config.outages.enabled else "off",
    )
    if not is_loopback(api.host):
        log.warning("listening on %s: plain HTTP beyond this machine; put a TLS reverse proxy "
                    "in front and bind 127.0.0.1", api.host)


def build_settings(config: CollectorConfig, *, ingest: bool, outages: bool) -> ServeSettings:
    config.validate()
    if ingest:
        config.broker.resolved_password()  # a missing password file is a config error, now
    return ServeSettings(config=config, ingest=ingest, outages=outages)


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="collector.toml (configs/collector.example.toml)")
@click.option("--host", default=None, help="address to listen on (default 127.0.0.1)")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="port to listen on (default 8080)")
@click.option("--store", "store_url", envvar=STORE_ENV, default=None, metavar="URL",
              help="sqlite:///path/to/collector.db or postgresql://user@host/db")
@click.option("--no-ingest", is_flag=True,
              help="API only: do not subscribe to the broker (another process ingests)")
@click.option("--no-outages", is_flag=True, help="do not run the outage detector here")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(config_path: Path | None, host: str | None, port: int | None, store_url: str | None,
          no_ingest: bool, no_outages: bool, log_level: str) -> None:
    """Run the collector: ingest, outage detection, JSON API and dashboard."""
    cfg = load_config(config_path)
    cfg = override(cfg, "store", url=store_url)
    cfg = override(cfg, "api", host=host, port=port)
    settings = build_settings(cfg, ingest=not no_ingest, outages=not no_outages)
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per request only at debug: at info it is noise (/metrics counts requests).
    access_log = logging.getLogger("vigil.collector.access") if log_level == "debug" else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_server(settings, access_log=access_log))
