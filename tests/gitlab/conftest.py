"""Fixtures for the GitLab tests: a repository copy with a unique stack name, and cleanup of the
docker secrets that stack gets (real swarm secrets; the test removes only its own)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import require


def _docker():  # type: ignore[no-untyped-def]
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
        swarm = client.info().get("Swarm", {}).get("LocalNodeState") == "active"
    except Exception:  # noqa: BLE001 - any failure means no engine
        return None
    return client if swarm else None


@pytest.fixture
def swarm_client() -> Iterator[object]:
    client = _docker()
    require(client is not None, "needs a Docker engine that is a swarm manager (docker swarm init)")
    yield client


@pytest.fixture
def git_upstream() -> Iterator[object]:
    """A real git server (git http-backend) standing for GitHub, with the repositories gitlab.yml imports."""
    from gitserver import GitServer

    server = GitServer()
    server.add_repo("UNFmontreal/containers.git", {"dicom_indexer/Dockerfile": "FROM scratch\n"})
    server.add_repo("UNFmontreal/ci-pipelines.git", {"bids.yml": "stages: [convert]\n"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def site_repo(repo_copy: Path, swarm_client, git_upstream) -> Iterator[tuple[Path, str]]:  # type: ignore[no-untyped-def]
    """(repository copy, stack name) where site.name is unique and imports come from the test's
    git server; its swarm secrets are removed after."""
    from gitserver import point_imports_at

    point_imports_at(repo_copy, git_upstream.url)  # type: ignore[attr-defined]
    stack = "bfgl" + uuid.uuid4().hex[:8]
    site = repo_copy / "stack" / "site.yml"
    text = site.read_text()
    text = re.sub(r"(?m)^(\s+name:\s*)\S+", rf"\g<1>{stack}", text, count=1)
    text = text.replace("/var/lib/bidsflux/secrets.env", str(repo_copy / "state" / "secrets.env"))
    site.write_text(text)
    try:
        yield repo_copy, stack
    finally:
        for s in swarm_client.secrets.list(filters={"label": f"io.bidsflux.stack={stack}"}):
            s.remove()
