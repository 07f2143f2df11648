"""Shared fixtures. Plain helpers (REPO_ROOT, require, cli) live in tests/support.py:
import them with `from support import require, cli` (pytest puts tests/ on the path)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support import REPO_PARTS, REPO_ROOT, cli, copy_repository, require  # noqa: F401  (re-exported for older imports)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A private copy of the repository's site files, safe to mutate."""
    return copy_repository(tmp_path / "repo")


@pytest.fixture
def no_docker_env() -> Iterator[dict[str, str]]:
    """Environment pointing docker clients at a socket where nothing listens."""
    yield {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


@pytest.fixture
def gitlab_emulator() -> Iterator[object]:
    """A fresh GitLab emulator (tests/gitlab_emulator) on http://127.0.0.1:<free port>, stopped after the test.

    It speaks GitLab's REST API v4 over real HTTP, so use the real client:
        gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    Attributes: .url, .admin_token (the `root` administrator's token), .state (raw objects).
    Helpers: create_user(username, admin=False), create_token(username, scopes, expires_at=None)
    -> value, revoke_token(value), token_record(value), set_runner_online(id, online=True),
    set_runner_token_expiry(id, datetime), runner_by_token(glrt), set_health(ready=, live=,
    registry=, failing_checks=("db_check",)), fail_requests("POST /admin/ci/variables", 500, times=1),
    mark() / requests_since(mark) / writes(mark) / reads(mark) to count API requests, stop().
    Health endpoints: /-/health, /-/liveness, /-/readiness?all=1, registry ping /v2/.
    Git smart HTTP: http://127.0.0.1:<port>/<group>/<project>.git with any user name and a token
    as password. See tests/gitlab_emulator/server.py for the endpoints served."""
    from gitlab_emulator import GitLabEmulator

    emulator = GitLabEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()
