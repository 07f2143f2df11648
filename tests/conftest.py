"""Shared fixtures. Plain helpers (REPO_ROOT, require, cli) live in tests/support.py:
import them with `from support import require, cli` (pytest puts tests/ on the path)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import REPO_PARTS, REPO_ROOT, cli, require  # noqa: F401  (re-exported for older imports)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
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


@pytest.fixture
def no_docker_env() -> Iterator[dict[str, str]]:
    """Environment pointing docker clients at a socket where nothing listens."""
    yield {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
