"""Fixtures for the swarm engine tests: stand-in images, a test site, one bootstrapped stack."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import swarm_images as images
from swarm_site import SiteUnderTest, docker_or_skip, make_site, node_labels, remove_stack, restore_node_labels


@pytest.fixture(scope="session")
def docker_client() -> Any:
    return docker_or_skip()


@pytest.fixture(scope="session")
def stand_in_images(docker_client: Any) -> dict[str, str]:
    return images.build_all(docker_client)


@pytest.fixture(scope="session")
def deployed_site(tmp_path_factory: pytest.TempPathFactory, docker_client: Any,
                  stand_in_images: dict[str, str]) -> Iterator[SiteUnderTest]:
    """One site bootstrapped from nothing (network, labels, secrets, five services) for the session."""
    before = node_labels(docker_client)
    site = make_site(tmp_path_factory.mktemp("swarm-site"), docker_client, stand_in_images)
    try:
        result = site.run("bootstrap", "--create-dirs", "--yes", "--skip-gitlab", "--timeout", "180")
        site.bootstrap_result = result  # type: ignore[attr-defined]
        yield site
    finally:
        remove_stack(docker_client, site.stack, site.network)
        restore_node_labels(docker_client, before)


@pytest.fixture
def site_backup(deployed_site: SiteUnderTest) -> Iterator[SiteUnderTest]:
    """Restores the session site's site.yml after a test that edits it."""
    saved = deployed_site.site_file.read_text()
    yield deployed_site
    deployed_site.site_file.write_text(saved)


@pytest.fixture
def fresh_site(tmp_path: Path, docker_client: Any, stand_in_images: dict[str, str]) -> Iterator[SiteUnderTest]:
    """A test site never deployed (for preflight failures); removes anything a test created."""
    site = make_site(tmp_path, docker_client, stand_in_images)
    yield site
    remove_stack(docker_client, site.stack, site.network)


os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
