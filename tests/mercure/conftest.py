"""Fixtures for the DICOM endpoint tests: a repository copy and the Mercure reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mercure_testlib import REFERENCE

from support import REPO_PARTS, REPO_ROOT


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A private copy of the repository's site files, safe to mutate."""
    dest = tmp_path / "repo"
    dest.mkdir()
    for part in REPO_PARTS:
        src = REPO_ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        elif src.exists():
            shutil.copy2(src, dest / part)
    return dest


@pytest.fixture(scope="session")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())
