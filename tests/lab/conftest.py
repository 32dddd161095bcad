"""Fixtures for the lab: one lab per test session, skipped with a reason when unprivileged.

In CI (``CI=true``) a missing privilege or tool is a failure, never a skip: the lab is how
every verdict is proven, and a silently skipped lab proves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from lab.preflight import lab_unavailable
from tests.support.reports import REPORTS


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
    from lab.lab import Lab

    built = Lab.up()
    try:
        yield built
    finally:
        built.down()


def add_report(text: str) -> None:
    """Printed at the end of the session (tests/conftest.py), also under pytest-xdist."""
    REPORTS.append(text)
