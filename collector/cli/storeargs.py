"""The ``--store``/``--config`` pair the store-reading commands share, and opening the store.

``probes``, ``query`` and ``outages`` all find their store the same way (``--store`` or
``$VIGIL_STORE``, else the config file's ``[store] url``) and open it with the config's
timeouts; one definition keeps their flags, help and behaviour identical.
"""

from __future__ import annotations

from pathlib import Path

import click

from collector.config import STORE_ENV, store_url_from
from collector.store import Store, open_store

store_option = click.option(
    "--store", "store_url", envvar=STORE_ENV, default=None, metavar="URL",
    help="sqlite:///path/to/collector.db or postgresql://user@host/db",
)
config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="collector.toml (its [store] url)",
)


def open_command_store(store_url: str | None, config_path: Path | None) -> Store:
    """Open the store the flags name, with the config file's busy and connect timeouts."""
    url, cfg = store_url_from(store_url, config_path)
    return open_store(url, busy_timeout_ms=cfg.busy_timeout_ms,
                      connect_timeout=cfg.connect_timeout_s)
