"""A throw-away PostgreSQL database per test (server from $VIGIL_TEST_PG_DSN).

The server is the machine's (127.0.0.1:5432, trust auth; .ci/run starts it); each test gets a
uniquely named database, dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_dsn() -> str:
    return os.environ.get("VIGIL_TEST_PG_DSN", DEFAULT_DSN)


def pg_unavailable() -> str | None:
    """None when the server answers, else why not."""
    try:
        with psycopg.connect(admin_dsn(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {admin_dsn()} unavailable: {str(exc).strip()[:200]}"
    return None


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def temporary_database(prefix: str = "vigil_test") -> Iterator[str]:
    """Create a database, yield its URL, drop it (terminating leftover sessions)."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(admin_dsn(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(admin_dsn(), name)
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
