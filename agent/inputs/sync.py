"""Refresh the Citizen Lab test lists into the state directory, atomically.

The new lists are downloaded into a fresh directory next to the current one, each file is
parsed and checked (a valid header, at least one measurable URL, mostly good rows), and only
then does a symlink switch point ``<state>/testlists`` at the new directory in one
``rename()``.  Any failure before the switch deletes the new directory and leaves the lists in
use untouched; a reader never sees a half-written set.

Layout::

    <state>/testlists -> testlists.d/20260701T120000Z-1a2b3c   (symlink, replaced atomically)
    <state>/testlists.d/<stamp>-<rand>/{global,ir,...}.csv, SOURCE.txt, README.md

The lists are CC BY-NC-SA 4.0: the attribution (SOURCE.txt) and the license text travel with
every copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from agent.config import AgentConfig
from agent.errors import ListError, VigilError
from agent.inputs.testlists import LISTS_SUBDIR, MAX_FILE_BYTES, bundled_dir, parse_text

LEGENDS = ("00-LEGEND-category_codes", "00-LEGEND-new_category_codes", "00-LEGEND-country_codes")
VERSIONS_SUBDIR = "testlists.d"
MANUAL_PREFIX = "manual-"
MAX_BAD_SHARE = 0.5  # a list with more bad rows than this is a format change, not an update


class UpdateError(VigilError):
    """The lists could not be refreshed; the ones in use were kept."""


@dataclass
class UpdateResult:
    directory: Path
    counts: dict[str, int] = field(default_factory=dict)  # list name -> URLs
    missing: list[str] = field(default_factory=list)  # country lists upstream does not have

    def summary(self) -> str:
        lists = ", ".join(f"{name} {n}" for name, n in self.counts.items())
        text = f"updated {len(self.counts)} list(s) in {self.directory}: {lists}"
        if self.missing:
            text += f"; not available upstream: {', '.join(self.missing)}"
        return text


def wanted_countries(current: Path, configured: Iterable[str]) -> list[str]:
    """Country lists to fetch: the configured ones and every one already present."""
    names = {cc.lower() for cc in configured}
    if current.is_dir():
        for path in current.glob("*.csv"):
            stem = path.stem.lower()
            if len(stem) == 2 and stem.isalpha():
                names.add(stem)
    return sorted(names)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / ".testlists.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateError("another list update is running") from None
        yield
    finally:
        os.close(fd)


async def _fetch(session: aiohttp.ClientSession, url: str) -> bytes | None:
    """The file's bytes; None for a 404 (that list does not exist upstream)."""
    try:
        async with session.get(url) as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise UpdateError(f"{url}: HTTP {resp.status}")
            data = await resp.content.read(MAX_FILE_BYTES + 1)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise UpdateError(f"{url}: {type(exc).__name__}: {exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UpdateError(f"{url}: larger than {MAX_FILE_BYTES} bytes")
    return data


def check_list(name: str, data: bytes) -> int:
    """Number of measurable URLs in a downloaded list; UpdateError when it looks wrong."""
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise UpdateError(f"{name}.csv is not UTF-8 text") from None
    try:
        parsed = parse_text(text, f"{name}.csv")
    except ListError as exc:
        raise UpdateError(f"downloaded {exc}") from None
    total = len(parsed.targets) + len(parsed.problems) + parsed.duplicates
    if not parsed.targets:
        raise UpdateError(f"{name}.csv has no measurable URL")
    if len(parsed.problems) > MAX_BAD_SHARE * total:
        raise UpdateError(f"{name}.csv: {len(parsed.problems)} of {total} rows are bad")
    return len(parsed.targets)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _attribution(source_url: str) -> bytes:
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"Citizen Lab test lists (github.com/citizenlab/test-lists), lists/ folder, fetched from\n"
        f"{source_url} on {when} by `vigil-agent lists update`.\n"
        "License: Creative Commons Attribution-NonCommercial-ShareAlike 4.0 (see README.md here).\n"
        "Anything bundled from these files must keep this attribution and license notice.\n"
    ).encode()


def _switch(state_dir: Path, new_dir: Path) -> None:
    """Point ``<state>/testlists`` at ``new_dir`` atomically."""
    link = state_dir / LISTS_SUBDIR
    if link.exists() and not link.is_symlink():
        # A plain directory (made by hand): kept aside, never deleted; links from now on.
        os.rename(link, state_dir / VERSIONS_SUBDIR / f"{MANUAL_PREFIX}{secrets.token_hex(3)}")
    tmp = state_dir / f".{LISTS_SUBDIR}.tmp-{secrets.token_hex(4)}"
    os.symlink(os.path.relpath(new_dir, state_dir), tmp)
    try:
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(state_dir)


async def update_lists(
    state_dir: Path,
    source_url: str,
    countries: Iterable[str],
    *,
    timeout: float = 60.0,
) -> UpdateResult:
    """Download global + country lists (+ legends), check them, switch atomically."""
    base = source_url if source_url.endswith("/") else source_url + "/"
    with _locked(state_dir):
        from agent.inputs.testlists import lists_dir

        current = lists_dir(state_dir)
        countries = wanted_countries(current, countries)
        versions = state_dir / VERSIONS_SUBDIR
        versions.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        new_dir = versions / f"{stamp}-{secrets.token_hex(3)}"
        new_dir.mkdir()
        result = UpdateResult(directory=new_dir)
        try:
            await _download_into(new_dir, base, countries, result, timeout)
            _write(new_dir / "SOURCE.txt", _attribution(base))
            license_text = bundled_dir() / "README.md"
            if license_text.is_file():
                _write(new_dir / "README.md", license_text.read_bytes())
            _fsync_dir(new_dir)
            _switch(state_dir, new_dir)
        except BaseException:
            shutil.rmtree(new_dir, ignore_errors=True)
            raise
        _prune(versions, keep=new_dir)
        result.directory = state_dir / LISTS_SUBDIR
        return result


async def _download_into(
    new_dir: Path, base: str, countries: list[str], result: UpdateResult, timeout: float
) -> None:
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(
        timeout=client_timeout, headers={"User-Agent": "vigil-agent lists update"}
    ) as session:
        for name in ("global", *countries):
            data = await _fetch(session, f"{base}{name}.csv")
            if data is None:
                if name == "global":
                    raise UpdateError(f"{base}global.csv: HTTP 404")
                result.missing.append(name)
                continue
            result.counts[name] = check_list(name, data)
            _write(new_dir / f"{name}.csv", data)
        for name in LEGENDS:  # category and country names: useful, not required
            data = await _fetch(session, f"{base}{name}.csv")
            if data is not None and data.strip():
                _write(new_dir / f"{name}.csv", data)


def _prune(versions: Path, keep: Path) -> None:
    """Remove list directories this module made and the switch superseded."""
    for child in versions.iterdir():
        if child == keep or child.name.startswith(MANUAL_PREFIX) or not child.is_dir():
            continue
        shutil.rmtree(child, ignore_errors=True)


def update_from_config(config: AgentConfig) -> str:
    """Refresh the lists from the configured source (blocking; run it in a worker thread).

    Used by the long-running agent's refresh job; ``vigil-agent lists update`` is the manual
    equivalent.  Raises ``agent.inputs.sync.UpdateError`` and keeps the old lists on failure.
    """
    result = asyncio.run(
        update_lists(config.state_dir, config.lists.source_url, config.lists.countries)
    )
    return result.summary()
