"""Secrets and private data on a real filesystem: keys, the outbox, the SQLite store.

A key file is never written through a planted symlink nor read through one; files holding
measurements are created 0600 (not created readable, then chmodded); passwords stay out of
reprs and of the URLs written to logs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import identity
from agent.errors import IdentityError
from agent.uplink.outbox import Outbox
from collector.config import BrokerConfig, CollectorConfig, StoreConfig
from collector.store import describe_url, open_store
from lab.records import make_record


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: new files are world-readable unless asked
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_key_is_never_written_through_a_planted_temp_symlink(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    loot = tmp_path / "loot"
    loot.write_bytes(b"")
    identity.key_path(state).with_suffix(".tmp").symlink_to(loot)
    ident = identity.create(state)
    assert loot.read_bytes() == b""  # nothing went through the link
    assert mode(identity.key_path(state)) == 0o600
    assert identity.load(state).probe_id == ident.probe_id


def test_key_behind_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    ident = identity.create(real)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    identity.key_path(state).symlink_to(identity.key_path(real))
    with pytest.raises(IdentityError, match="cannot open"):
        identity.load(state)
    assert identity.load(real).probe_id == ident.probe_id


def test_outbox_files_are_private_from_creation(
    tmp_path: Path, permissive_umask: None
) -> None:
    ident = identity.create(tmp_path / "p")
    with Outbox(tmp_path / "p", ident) as ob:
        ob.enqueue(make_record(ident.probe_id))
        files = [f for f in (tmp_path / "p").iterdir() if f.name.startswith(ob.path.name)]
        assert {f.name for f in files} >= {ob.path.name, ob.path.name + "-wal"}
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}


def test_sqlite_store_files_are_private_from_creation(
    tmp_path: Path, permissive_umask: None
) -> None:
    path = tmp_path / "collector.db"
    store = open_store(f"sqlite://{path}")
    try:
        files = [f for f in tmp_path.iterdir() if f.name.startswith("collector.db")]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        store.close()


@pytest.mark.parametrize("url,secret", [
    ("postgresql://vigil:s3cret@db.example:5432/vigil", "s3cret"),
    ("postgresql://vigil:p%40ss%3Aw0rd@db/vigil", "p%40ss%3Aw0rd"),  # percent-encoded
    ("postgresql://vigil@db/vigil?sslmode=require&password=s3cret", "s3cret"),
])
def test_passwords_stay_out_of_reprs_and_logged_urls(url: str, secret: str) -> None:
    shown = describe_url(url)
    assert secret not in shown and "***" in shown and "db" in shown
    broker = BrokerConfig(password="hunter2-broker")
    config = CollectorConfig(broker=broker, store=StoreConfig(url=url))
    assert "hunter2-broker" not in repr(broker)
    assert secret not in repr(config) and "hunter2-broker" not in repr(config)
