"""Refresh the helper's IP database from its public source, whole or not at all.

Source: iptoasn.com's ``ip2asn-combined.tsv.gz`` (public domain data, PDDL; updated hourly;
https://iptoasn.com/), or any file in the same format (a mirror, DB-IP's ASN lite converted to
it).  ``vigil-collector ipdb update`` streams the download to a temporary file beside the
target, then checks, before anything is replaced:

1. the transfer completed (the announced length arrived, the gzip stream ends cleanly);
2. an optional SHA-256 given by the operator matches;
3. the file parses (``collector.helper.ipdb.load``) with at least ``min_ranges`` usable ranges
   and at most ``max_bad_fraction`` unusable lines;
4. it did not shrink below ``min_keep_fraction`` of the database it replaces (a truncated or
   wrong file must not silently turn every probe into AS0).

Only then is the file renamed over the old one (atomic, fsynced).  On any failure the old
database stays in place and the error says why.  A stale database still works (networks
change slowly; the helper logs its age at start); a missing one makes every probe AS0/ZZ, which
``vigil-agent doctor`` reports.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from collector.helper.ipdb import IPDB, IPDBError, LoadReport, load

DEFAULT_URL = "https://iptoasn.com/data/ip2asn-combined.tsv.gz"
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024  # the combined file is ~7 MB gzipped today
CHUNK = 65_536


class UpdateError(Exception):
    """The new database was refused; the old one is untouched."""


@dataclass(frozen=True, slots=True)
class UpdatePolicy:
    min_ranges: int = 1_000
    max_bad_fraction: float = 0.01
    min_keep_fraction: float = 0.5
    sha256: str | None = None
    timeout_s: float = 300.0
    max_bytes: int = MAX_DOWNLOAD_BYTES


@dataclass(frozen=True, slots=True)
class UpdateResult:
    path: Path
    ranges: int
    previous_ranges: int | None
    bytes: int
    sha256: str

    def summary(self) -> str:
        before = "none" if self.previous_ranges is None else f"{self.previous_ranges:,}"
        return (f"{self.path}: {self.ranges:,} ranges (was {before}), {self.bytes:,} bytes, "
                f"sha256 {self.sha256}")


async def download(url: str, dest: Path, policy: UpdatePolicy) -> tuple[int, str]:
    """Stream ``url`` into ``dest``; (bytes, sha256).  UpdateError when it is cut or too big."""
    digest = hashlib.sha256()
    size = 0
    timeout = aiohttp.ClientTimeout(total=policy.timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            if resp.status != 200:
                raise UpdateError(f"{url}: HTTP {resp.status}")
            announced = resp.content_length
            with dest.open("wb") as fh:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if size > policy.max_bytes:
                        raise UpdateError(f"{url}: larger than {policy.max_bytes:,} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if announced is not None and size != announced:
                raise UpdateError(f"{url}: transfer cut at {size:,} of {announced:,} bytes")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise UpdateError(f"{url}: download failed: {type(exc).__name__}: {exc}") from None
    return size, digest.hexdigest()


def check_gzip(path: Path) -> None:
    """A ``.gz`` file must decompress to its end (a cut download fails here)."""
    if path.suffix != ".gz":
        return
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise UpdateError(f"{path.name}: not a complete gzip file ({exc})") from None


def check_database(path: Path, policy: UpdatePolicy, previous: int | None) -> tuple[IPDB, int]:
    """Parse the candidate; refuse it when it is too small, too broken or shrank too much."""
    try:
        db, report = load([path])
    except IPDBError as exc:
        raise UpdateError(str(exc)) from None
    ranges = report.ranges_v4 + report.ranges_v6
    _check_report(report, ranges, policy)
    if previous and ranges < previous * policy.min_keep_fraction:
        raise UpdateError(
            f"the new database has {ranges:,} ranges, under {policy.min_keep_fraction:.0%} of "
            f"the {previous:,} it would replace: refused (pass --allow-shrink to force)"
        )
    return db, ranges


def _check_report(report: LoadReport, ranges: int, policy: UpdatePolicy) -> None:
    if ranges < policy.min_ranges:
        raise UpdateError(
            f"only {ranges:,} usable ranges (at least {policy.min_ranges:,} expected)"
        )
    lines = ranges + report.unrouted + report.bad_lines
    if lines and report.bad_lines / lines > policy.max_bad_fraction:
        first = "; ".join(report.errors[:3])
        raise UpdateError(f"{report.bad_lines:,} of {lines:,} lines unusable ({first})")


def current_ranges(path: Path) -> int | None:
    """How many ranges the installed database has (None when there is none or it is broken)."""
    if not path.exists():
        return None
    try:
        _, report = load([path])
    except IPDBError:
        return None
    return report.ranges_v4 + report.ranges_v6


async def update(url: str, target: Path, policy: UpdatePolicy = UpdatePolicy()) -> UpdateResult:
    """Download, check and atomically install the database at ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = current_ranges(target)
    fd, tmp_name = tempfile.mkstemp(prefix=".ipdb-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        size, sha = await download(url, tmp, policy)
        if policy.sha256 is not None and sha != policy.sha256.lower():
            raise UpdateError(f"sha256 {sha} does not match the expected {policy.sha256}")
        check_gzip(tmp)
        _, ranges = check_database(tmp, policy, previous)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return UpdateResult(target, ranges, previous, size, sha)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
