"""Fixtures for the DICOM endpoint tests: a repository copy and the Mercure reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mercure_testlib import REFERENCE

from support import copy_repository


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A private copy of the repository's site files, safe to mutate."""
    return copy_repository(tmp_path / "repo")


@pytest.fixture(scope="session")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())
