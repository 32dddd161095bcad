"""Fixtures several unit-test modules share: a throwaway test CA and its PEM file."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A fresh certificate authority per test module (trustme: nothing leaves the process)."""
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    """The CA's certificate as a PEM file, for code that takes a CA bundle path."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path
