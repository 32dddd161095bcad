"""Storage behind one interface: ``open_store(url)`` picks the backend from the URL.

``sqlite:///var/lib/vigil/collector.db`` (embedded default, one file) or
``postgresql://user@host:5432/dbname`` (psycopg 3).  See :mod:`collector.store.base` for the
contract and the error types.
"""

from __future__ import annotations

from agent.errors import ConfigError
from collector.store.base import (
    Dimension,
    Filter,
    IngestBatch,
    InsertResult,
    MeasurementRow,
    ProbeExists,
    ProbeRecord,
    QuarantineItem,
    StatusUpdate,
    Store,
    StoreError,
    StoreUnavailable,
    UnknownProbe,
)

__all__ = [
    "Dimension",
    "Filter",
    "IngestBatch",
    "InsertResult",
    "MeasurementRow",
    "ProbeExists",
    "ProbeRecord",
    "QuarantineItem",
    "StatusUpdate",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UnknownProbe",
    "describe_url",
    "open_store",
]


def open_store(url: str, *, busy_timeout_ms: int = 5000, connect_timeout: int = 10) -> Store:
    """Open (and migrate) the store named by ``url``.

    Raises ConfigError for a URL of no known kind, StoreUnavailable when the database cannot
    be reached now.
    """
    if url.startswith("sqlite:"):
        from collector.store.sqlite import SqliteStore, path_from_url

        return SqliteStore(path_from_url(url), busy_timeout_ms=busy_timeout_ms)
    if url.startswith(("postgresql://", "postgres://")):
        from collector.store.postgres import PostgresStore

        return PostgresStore(url, connect_timeout=connect_timeout)
    raise ConfigError(
        f"unknown store URL {describe_url(url)!r}: use sqlite:///path/to/file.db or "
        "postgresql://user@host:5432/dbname"
    )


def describe_url(url: str) -> str:
    """The URL with any password replaced, for logs and error messages.

    The network location is rebuilt from its parts (a percent-encoded password would survive a
    textual replace), and libpq ``password=`` parameters in the query are masked too.
    """
    import re
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    query = re.sub(r"(?i)(^|&)(password|passfile)=[^&]*", r"\1\2=***", parts.query)
    if "@" not in parts.netloc and query == parts.query:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        user = parts.netloc.rpartition("@")[0].partition(":")[0]
        secret = ":***" if ":" in parts.netloc.rpartition("@")[0] else ""
        netloc = f"{user}{secret}@{host}" + (f":{port}" if port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
