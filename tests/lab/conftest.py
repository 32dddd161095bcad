"""Fixtures for the lab: one lab per test session, skipped with a reason when unprivileged.

In CI (``CI=true``) a missing privilege or tool is a failure, never a skip: the lab is how
every verdict is proven, and a silently skipped lab proves nothing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

_REPORTS: list[str] = []


def lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, nftables, tc); run as root"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [t for t in ("ip", "nft", "tc", "tcpdump", "sysctl")
               if shutil.which(t, path=path) is None]
    if missing:
        return f"the lab needs {', '.join(missing)} (run `make deps`)"
    if not os.path.isdir("/proc/self/ns") or not os.path.exists("/proc/self/ns/net"):
        return "this kernel has no network namespaces"
    return None


def agent_unavailable() -> str | None:
    for module in ("agent.commands.run", "collector.commands.helper"):
        if importlib.util.find_spec(module) is None:
            return f"{module} does not exist yet (the agent or helper is not built)"
    return None


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the lab cannot run: {reason}")
    pytest.skip(reason)


def require_lab() -> None:
    why = lab_unavailable()
    if why:
        skip_or_fail(why)


@pytest.fixture(scope="session")
def lab() -> Iterator[Any]:
    require_lab()
    from tests.lab.lab import Lab

    built = Lab.up()
    try:
        yield built
    finally:
        built.down()


def add_report(text: str) -> None:
    _REPORTS.append(text)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for text in _REPORTS:
        terminalreporter.write_sep("=", "vigil lab: agent vs scenario table")
        for line in text.splitlines():
            terminalreporter.write_line(line)
