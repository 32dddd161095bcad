"""Retention and backups from the command line: ``prune`` and ``backup``, and a restore."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.wire import envelope as wire
from collector.cli.main import main
from collector.store import open_store
from collector.store.base import IngestBatch
from collector.store.rollups import AggDimension as D
from lab.archive import Archive, generate

UNTIL = datetime(2026, 4, 1, tzinfo=UTC).timestamp()


@pytest.fixture(scope="module")
def archive() -> Archive:
    return generate(500, days=60, until=UNTIL, seed=31)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, archive: Archive
              ) -> Iterator[str]:
    url = f"sqlite://{tmp_path}/collector.db" if request.param == "sqlite" else \
        str(request.getfixturevalue("pg_url"))
    s = open_store(url)
    try:
        for p in archive.probes.values():
            s.add_probe(p.probe_id, p.public_raw)
        s.write_batch(IngestBatch(measurements=archive.rows))
    finally:
        s.close()
    yield url


def test_prune_before_a_date(store_url: str, archive: Archive,
                             capsys: pytest.CaptureFixture[str]) -> None:
    cutoff = "2026-03-01T06:30:00Z"
    ts = datetime.fromisoformat(cutoff).timestamp()
    kept = [r for r in archive.rows if r.start_ts >= ts]
    assert main(["prune", "--store", store_url, "--before", cutoff, "--batch", "64"]) == 0
    out = capsys.readouterr().out
    assert f"deleted {len(archive.rows) - len(kept)} measurement(s)" in out
    assert f"{len(kept)} kept" in out
    s = open_store(store_url)
    try:
        assert s.measurement_count() == len(kept)
        assert s.aggregate((D.COUNTRY,)).total == len(kept)
    finally:
        s.close()
    assert main(["prune", "--store", store_url, "--before", cutoff]) == 0
    assert "deleted 0 measurement(s)" in capsys.readouterr().out


def test_prune_keep_days_relative_to_now(store_url: str, archive: Archive,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "--store", store_url, "--keep-days", "36500"]) == 0
    assert "deleted 0 measurement(s)" in capsys.readouterr().out
    assert main(["prune", "--store", store_url, "--keep-days", "1"]) == 0
    assert f"deleted {len(archive.rows)} measurement(s)" in capsys.readouterr().out


@pytest.mark.parametrize("args", [[], ["--before", "2026-01-01", "--keep-days", "3"],
                                  ["--keep-days", "0"], ["--before", "soon"]])
def test_prune_usage_errors(store_url: str, args: list[str]) -> None:
    assert main(["prune", "--store", store_url, *args]) == 2


def test_backup_and_restore_sqlite(tmp_path: Path, archive: Archive,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite://{tmp_path}/collector.db"
    s = open_store(url)
    for p in archive.probes.values():
        s.add_probe(p.probe_id, p.public_raw)
    s.write_batch(IngestBatch(measurements=archive.rows[:300]))
    # The store stays open and keeps being written around the backup, as under the ingest.
    backup = tmp_path / "backups" / "vigil.db"
    backup.parent.mkdir()
    assert main(["backup", "--store", url, "--out", str(backup)]) == 0
    assert f"{backup}: 300 measurement(s)" in capsys.readouterr().out
    s.write_batch(IngestBatch(measurements=archive.rows[300:]))
    assert main(["backup", "--store", url, "--out", str(backup)]) == 2  # never overwritten
    want = s.aggregate((D.DAY, D.NETWORK), limit=10_000)
    s.close()

    # Restore: the collector stopped, the backup copied over the store's file.
    live = tmp_path / "collector.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(live) + suffix).unlink(missing_ok=True)
    shutil.copyfile(backup, live)
    restored = open_store(url)
    try:
        assert restored.measurement_count() == 300
        mid = archive.rows[7].measurement_id
        m = restored.get_measurement(mid)
        assert m is not None
        probe = archive.probes[m.summary.probe_id]
        probe.key.public_key().verify(m.signature, wire.pae(m.payload_type, m.payload))
        got = restored.aggregate((D.DAY, D.NETWORK), limit=10_000)
        assert got.total == 300 < want.total
        # Ingest resumes on the restored file; re-sent measurements are stored once.
        restored.write_batch(IngestBatch(measurements=archive.rows))
        assert restored.aggregate((D.DAY, D.NETWORK), limit=10_000).rows == want.rows
    finally:
        restored.close()


@pytest.mark.postgres
def test_backup_refuses_postgresql(pg_url: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backup", "--store", pg_url, "--out", str(tmp_path / "b.db")]) == 2
    assert "pg_dump" in capsys.readouterr().err
    assert not (tmp_path / "b.db").exists()
