"""``vigil-collector ingest``: subscribe to the broker, verify, store; runs until SIGTERM.

    vigil-collector ingest --config /etc/vigil/collector.toml
    vigil-collector ingest --store sqlite:///var/lib/vigil/collector.db \\
        --broker-host 127.0.0.1 --broker-port 8885 --ca-file ca.pem \\
        --username vigil-collector --password-file /etc/vigil/collector.pass --client-id c1

Flags override the config file (configs/collector.example.toml documents every key).  The
broker password may also come from $VIGIL_BROKER_PASSWORD.  Several processes may run with
different ``--client-id``s: the shared subscription splits the load between them.

SIGTERM/SIGINT: stop taking messages, store and acknowledge what is in flight, disconnect
(the broker keeps the session and everything not yet acknowledged for the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import click

from collector.config import CollectorConfig, load_config, override
from collector.ingest.pipeline import Ingest, tls_context
from collector.store import describe_url
from collector.store.aio import AsyncStore
from collector.store.base import StoreUnavailable

log = logging.getLogger("vigil.collector.ingest")


async def _open_store(cfg: CollectorConfig, stop: asyncio.Event) -> AsyncStore | None:
    """Open the store, waiting (with backoff) while the database is unreachable."""
    delay = cfg.ingest.retry_initial_s
    while not stop.is_set():
        try:
            return await AsyncStore.open(
                cfg.store.url,
                busy_timeout_ms=cfg.store.busy_timeout_ms,
                connect_timeout=cfg.store.connect_timeout_s,
            )
        except StoreUnavailable as exc:
            log.warning("store unavailable (%s); retrying in %.1fs", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, cfg.ingest.retry_max_s)
    return None


async def run_ingest(cfg: CollectorConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        store = await _open_store(cfg, stop)
        if store is None:
            return
        version = await store.call(store.store.schema_version)
        log.info("store %s (schema v%d)", describe_url(cfg.store.url), version)
        try:
            await Ingest(cfg.broker, cfg.ingest, store).run(stop)
        finally:
            await store.close()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="collector.toml")
@click.option("--store", "store_url", envvar="VIGIL_STORE", default=None, metavar="URL",
              help="sqlite:///path/to/collector.db or postgresql://user@host/db")
@click.option("--broker-host", default=None)
@click.option("--broker-port", type=click.IntRange(1, 65535), default=None)
@click.option("--tls/--no-tls", default=None, help="TLS to the broker (default: on)")
@click.option("--ca-file", default=None, help="CA bundle that signed the broker's certificate")
@click.option("--cert-file", default=None, help="client certificate (optional)")
@click.option("--key-file", default=None, help="client certificate's key")
@click.option("--username", default=None)
@click.option("--password", default=None,
              help="prefer --password-file or $VIGIL_BROKER_PASSWORD (not in `ps` output)")
@click.option("--password-file", default=None)
@click.option("--client-id", default=None, help="unique per collector process")
@click.option("--share-group", default=None, help="shared-subscription group (collectors)")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=None)
@click.option("--verify-workers", type=click.IntRange(0, 64), default=None,
              help="verification threads (default 0; see --verify-processes)")
@click.option("--verify-processes", type=click.IntRange(-1, 64), default=None,
              help="-1: one worker process on multi-core machines (default); 0: none; N")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def ingest(config_path: Path | None, store_url: str | None, broker_host: str | None,
           broker_port: int | None, tls: bool | None, ca_file: str | None,
           cert_file: str | None, key_file: str | None, username: str | None,
           password: str | None, password_file: str | None, client_id: str | None,
           share_group: str | None, batch_size: int | None, verify_workers: int | None,
           verify_processes: int | None, log_level: str) -> None:
    """Receive probe measurements from the broker, verify them and store them."""
    cfg = load_config(config_path)
    cfg = override(cfg, "store", url=store_url)
    cfg = override(
        cfg, "broker", host=broker_host, port=broker_port, tls=tls, ca_file=ca_file,
        cert_file=cert_file, key_file=key_file, username=username, password=password,
        password_file=password_file, client_id=client_id, share_group=share_group,
    )
    cfg = override(
        cfg, "ingest", batch_size=batch_size, verify_workers=verify_workers,
        verify_processes=verify_processes,
    )
    cfg.validate()
    cfg.broker.resolved_password()  # a missing password file is a config error, up front
    tls_context(cfg.broker)  # so are unreadable TLS files
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(run_ingest(cfg))
