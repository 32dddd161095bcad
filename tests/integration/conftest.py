"""Shared fixtures for integration tests.

Broker fixtures (lab/broker.py has the full API):

``broker``
    A started :class:`MosquittoBroker` running configs/mosquitto/ with no probe users yet;
    ``broker.add_probe(probe_id)`` enrols one live, ``broker.info`` has ports, CA and users.
``broker_factory(probe_ids=(), start=True, **limits)``
    More brokers, or one with other limits (``message_size_limit=...``); all stopped at the end.

Tests that use either fixture get the ``broker`` marker automatically (``-m "not broker"``
deselects them).  Without the mosquitto binaries they skip, except under CI=true where they
fail: CI must not silently stop testing the broker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.broker import MosquittoBroker, mosquitto_available

BROKER_FIXTURES = {"broker", "broker_factory"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)


def require_mosquitto() -> None:
    reason = mosquitto_available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


BrokerFactory = Callable[..., MosquittoBroker]


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    require_mosquitto()
    made: list[MosquittoBroker] = []

    def make(*, probe_ids: Any = (), start: bool = True, **kwargs: Any) -> MosquittoBroker:
        b = MosquittoBroker(tmp_path / f"broker{len(made)}", probe_ids=probe_ids, **kwargs)
        made.append(b)
        if start:
            b.start()
        return b

    try:
        yield make
    finally:
        for b in made:
            b.stop()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> MosquittoBroker:
    return broker_factory()


# ---- PostgreSQL (added by the collector ingest/storage work) -----------------------------------
@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh, uniquely named database on the test server; dropped afterwards.

    Skips without a server, except under CI=true where it fails.
    """
    from lab.pg import pg_unavailable, temporary_database

    reason = pg_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    with temporary_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store on each backend: SQLite in the test's directory, and PostgreSQL (a
    database of its own, ``pg_url``) for tests marked ``postgres``.  A module may define its
    own ``store_url`` (a store filled with its data) instead."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/collector.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Any]:
    """The store at ``store_url``, closed after the test."""
    from collector.store import open_store

    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()
