"""A DICOM endpoint whose image the site builds (the containers project of gitlab.yml, through its
ci_config_path) is held out of bootstrap's first deploy: GitLab's registry does not exist before
that deploy, so the image cannot be there and the service could only fail to start. Once the image
is pinned, a deploy starts it; bootstrap's image step (tests/gitlab/test_image_step.py) does that."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from swarm_site import SiteUnderTest, make_site, node_labels, remove_stack, restore_node_labels

pytestmark = pytest.mark.integration


@pytest.fixture
def held_site(tmp_path: Path, docker_client: Any, stand_in_images: dict[str, str]) -> Iterator[tuple[SiteUnderTest, str]]:
    before = node_labels(docker_client)
    site = make_site(tmp_path, docker_client, stand_in_images)
    built = f"registry.localhost:{site.ports['https']}/ni-dataops/containers/dicom_indexer:{site.stack}"
    docker_client.images.get(stand_in_images["storescp"]).tag(built)  # as if built and pulled later

    def site_built(d: Any) -> None:
        d["images"]["storescp"] = built
        d["images"]["dicom_indexer"] = built

    site.edit(site_built)
    try:
        yield site, built
    finally:
        remove_stack(docker_client, site.stack, site.network)
        restore_node_labels(docker_client, before)
        docker_client.images.remove(built, noprune=True)


def _services(client: Any, stack: str) -> set[str]:
    return {s["Spec"]["Name"].removeprefix(f"{stack}_")
            for s in client.api.services(filters={"label": f"com.docker.stack.namespace={stack}"})}


def test_endpoint_held_until_pinned_then_deployed(held_site: tuple[SiteUnderTest, str], docker_client: Any) -> None:
    site, built = held_site
    first = site.run("bootstrap", "--create-dirs", "--yes", "--skip-gitlab", "--timeout", "180")
    assert first.exit_code == 0, first.output
    assert "held until its image is built and pinned: dicom_endpoint" in first.output
    running = _services(docker_client, site.stack)
    assert "dicom_endpoint" not in running and "gitlab" in running
    # The plan still shows the endpoint to create: nothing hides it from `bidsflux plan`.
    plan = site.run("plan")
    assert plan.exit_code == 2 and "dicom_endpoint" in plan.output
    # Pinned (here: the tag the stand-in carries), the normal deploy starts it.
    deployed = site.run("deploy", "--yes", "--timeout", "120")
    assert deployed.exit_code == 0, deployed.output
    assert "dicom_endpoint" in _services(docker_client, site.stack)
    # A bootstrap after that holds nothing back and changes nothing.
    again = site.run("bootstrap", "--yes", "--skip-gitlab", "--timeout", "120")
    assert again.exit_code == 0, again.output
    assert "held until" not in again.output and "dicom_endpoint" in _services(docker_client, site.stack)
