"""Bootstrap from nothing, idempotence, plan precision, rollback on a failing image."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import pytest
from swarm_site import SiteUnderTest

from support import local_names

pytestmark = pytest.mark.integration


def _service(client: Any, name: str) -> dict[str, Any]:
    return client.api.inspect_service(name)


def _running_images(client: Any, name: str) -> set[str]:
    tasks = client.api.tasks(filters={"service": name, "desired-state": "running"})
    return {t["Spec"]["ContainerSpec"]["Image"].split("@")[0] for t in tasks if t["Status"]["State"] == "running"}


def test_bootstrap_converges_from_nothing(deployed_site: SiteUnderTest, docker_client: Any) -> None:
    result = deployed_site.bootstrap_result  # type: ignore[attr-defined]
    assert result.exit_code == 0, result.output
    stack = deployed_site.stack
    services = {s["Spec"]["Name"] for s in docker_client.api.services(filters={"label": f"com.docker.stack.namespace={stack}"})}
    assert services == {f"{stack}_{n}" for n in ("proxy", "node-trust", "gitlab", "gitlab-runner", "gitlab-runner-dind",
                                                 "docker-readonly", "minio", "dicom_endpoint")}
    for name in services:
        assert _running_images(docker_client, name), f"{name} has no running task"
    net = docker_client.networks.get(deployed_site.network)
    assert net.attrs["Attachable"] and net.attrs["Driver"] == "overlay"
    labels = [n["Spec"].get("Labels") or {} for n in docker_client.api.nodes()]
    assert any(lb.get("bidsflux.role.data") == "true" for lb in labels)
    assert any(lb.get("bidsflux.role.processing") == "true" for lb in labels)
    assert "docker swarm join --token" in result.output
    secrets_file = deployed_site.tmp / "state" / "secrets.env"
    assert stat.S_IMODE(os.stat(secrets_file).st_mode) == 0o600
    values = deployed_site.secret_values()
    assert {"gitlab_root_password", "minio_root_user", "s3_id", "runner_dind_config"} <= set(values)
    # TLS: the site CA made at bootstrap; node-trust (global) put it where Docker looks on this node.
    ca = deployed_site.tmp / "state" / "proxy" / "ca.crt"
    trusted = deployed_site.tmp / "certs.d" / f"registry.localhost:{deployed_site.ports['https']}" / "ca.crt"
    assert ca.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert trusted.read_text() == ca.read_text()
    # A real S3 (SeaweedFS) answers with the generated root credentials, through the real Caddy
    # on the published https port, verified with the site CA (the name resolved to 127.0.0.1 here).
    import boto3

    with local_names(["s3.localhost"]):
        s3 = boto3.client("s3", endpoint_url=f"https://s3.localhost:{deployed_site.ports['https']}", verify=str(ca),
                          aws_access_key_id=values["minio_root_user"], aws_secret_access_key=values["minio_root_password"],
                          region_name="us-east-1")
        s3.create_bucket(Bucket="bootstrap-check")
        assert "bootstrap-check" in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_second_bootstrap_changes_nothing(deployed_site: SiteUnderTest, docker_client: Any) -> None:
    stack = deployed_site.stack
    before = {s["Spec"]["Name"]: s["Version"]["Index"] for s in
              docker_client.api.services(filters={"label": f"com.docker.stack.namespace={stack}"})}
    result = deployed_site.run("bootstrap", "--yes", "--skip-gitlab", "--timeout", "120")
    assert result.exit_code == 0, result.output
    assert "No changes" in result.output and "GitLab day zero skipped (--skip-gitlab)" in result.output, result.output[-3000:]
    after = {s["Spec"]["Name"]: s["Version"]["Index"] for s in
             docker_client.api.services(filters={"label": f"com.docker.stack.namespace={stack}"})}
    assert after == before  # no service spec was touched
    plan = deployed_site.run("plan")
    assert plan.exit_code == 0, plan.output
    assert plan.output.strip().startswith("No changes")


def test_one_config_change_shows_exactly_that(site_backup: SiteUnderTest) -> None:
    site_backup.edit(lambda d: d["dicom_endpoint"].__setitem__("study_timeout", 7))
    result = site_backup.run("plan", "--format", "json")
    assert result.exit_code == 2, result.output
    plan = json.loads(result.output)
    assert len(plan["changes"]) == 1, plan
    change = plan["changes"][0]
    assert (change["kind"], change["action"], change["name"]) == ("service", "update", f"{site_backup.stack}_dicom_endpoint")
    assert list(change["fields"]) == ["command"]
    assert "5" in change["fields"]["command"]["live"] and "7" in change["fields"]["command"]["desired"]
    text = site_backup.run("plan")
    assert text.exit_code == 2
    assert "~ service" in text.output and "command:" in text.output and "Plan: 0 to create, 1 to update" in text.output


def test_overlay_encryption_switch(site_backup: SiteUnderTest, docker_client: Any) -> None:
    """swarm.network.encrypted: a new network is created with Docker's `encrypted` option; an
    existing one that differs shows in the plan (a swarm network cannot change in place)."""
    from swarm_site import free_subnet

    from bidsflux.swarm.engine import ensure_network

    site_backup.edit(lambda d: d["swarm"]["network"].__setitem__("encrypted", True))
    result = site_backup.run("plan", "--format", "json")
    assert result.exit_code == 2, result.output
    change = next(c for c in json.loads(result.output)["changes"] if c["kind"] == "network")
    assert change["fields"] == {"encrypted": {"live": False, "desired": True}}
    name = f"{site_backup.network}-enc"
    ensure_network(docker_client, name, free_subnet(docker_client), encrypted=True)
    try:
        assert "encrypted" in (docker_client.networks.get(name).attrs.get("Options") or {})
    finally:
        docker_client.networks.get(name).remove()


def test_failing_healthcheck_rolls_back(site_backup: SiteUnderTest, docker_client: Any) -> None:
    name = f"{site_backup.stack}_gitlab-runner"
    good = site_backup.images["runner"]
    assert _running_images(docker_client, name) == {good}
    site_backup.edit(lambda d: d["images"].__setitem__("gitlab_runner", site_backup.images["runner-bad"]))
    result = site_backup.run("deploy", "--timeout", "120")
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and name in result.output
    assert "rollback_completed" in result.output
    assert good in result.output  # the report says what runs now
    assert _running_images(docker_client, name) == {good}
    assert _service(docker_client, name)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0] == good


def test_no_op_deploy_touches_nothing(deployed_site: SiteUnderTest, docker_client: Any) -> None:
    stack = deployed_site.stack
    services = docker_client.api.services(filters={"label": f"com.docker.stack.namespace={stack}"})
    before = {s["Spec"]["Name"]: s["Version"]["Index"] for s in services}
    tasks_before = {t["ID"] for s in services for t in docker_client.api.tasks(filters={"service": s["ID"]})}
    result = deployed_site.run("deploy")
    assert result.exit_code == 0, result.output
    assert "No changes" in result.output
    services = docker_client.api.services(filters={"label": f"com.docker.stack.namespace={stack}"})
    assert {s["Spec"]["Name"]: s["Version"]["Index"] for s in services} == before
    assert {t["ID"] for s in services for t in docker_client.api.tasks(filters={"service": s["ID"]})} == tasks_before
