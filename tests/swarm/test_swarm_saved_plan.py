"""`deploy --plan FILE` applies exactly a reviewed plan: it refuses, changing nothing, when the site
files or the live swarm moved since the plan was made (issue 19)."""

from __future__ import annotations

import json
from typing import Any

import pytest


@pytest.mark.integration
def test_deploy_of_a_saved_plan_refuses_when_files_or_the_swarm_moved(fresh_site: Any, docker_client: Any,
                                                                      tmp_path: Any) -> None:
    site = fresh_site
    made = site.run("plan", "--format", "json")
    assert made.exit_code == 2, made.output
    saved = tmp_path / "plan.json"
    saved.write_text(made.output)
    assert json.loads(made.output)["rendered_sha256"]

    # The site file changed after the review: the saved plan is no longer what would be applied.
    before = site.site_file.read_text()
    site.edit(_move_dicom_port)
    refused = site.run("deploy", "--plan", str(saved), "--yes")
    assert refused.exit_code == 1 and "render a different stack file" in refused.output, refused.output
    assert not docker_client.networks.list(names=[site.network]), "a refused deploy created the network"
    site.site_file.write_text(before)

    # The live swarm moved: someone created the network the plan was going to create.
    from ruamel.yaml import YAML

    net = YAML().load(site.site_file.read_text())["swarm"]["network"]
    import docker

    docker_client.networks.create(net["name"], driver="overlay", attachable=True,
                                  ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=net["subnet"])]),
                                  labels={"test": "saved-plan"})
    refused = site.run("deploy", "--plan", str(saved), "--yes")
    assert refused.exit_code == 1, refused.output
    assert "the live swarm moved since the plan was made" in refused.output
    assert "network create" in refused.output and "no longer planned" in refused.output
    assert not docker_client.services.list(filters={"label": f"com.docker.stack.namespace={site.stack}"})


@pytest.mark.integration
def test_json_results_of_secrets_list_and_deploy(deployed_site: Any) -> None:
    site = deployed_site
    listed = site.run("secrets", "list", "--format", "json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert {r["secret"] for r in rows} >= {"s3_id", "s3_secret"}
    assert all(r["name"] == f"{site.stack}_{r['secret']}_v{r['version']}" for r in rows)
    assert not [v for v in site.secret_values().values() if len(v) > 4 and v in listed.output]
    assert site.run("plan").exit_code == 0, "the session site drifted; this test needs it in sync"
    deployed = site.run("deploy", "--format", "json")
    assert deployed.exit_code == 0, deployed.output
    assert json.loads(deployed.stdout) == {"stack": site.stack, "result": "no change",
                                           "plan": {"stack": site.stack, "changes": [], "warnings": [],
                                                    "summary": {"create": 0, "update": 0, "remove": 0}}}


def _move_dicom_port(d: Any) -> None:
    """ports.dicom to a port no other key of ports uses (the site's ports are random free ports)."""
    used, port = set(d["ports"].values()), d["ports"]["dicom"] + 1
    while port in used:
        port += 1
    d["ports"]["dicom"] = port
