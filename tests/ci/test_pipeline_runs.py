"""The real pipeline definition run by gitlab-ci-local (shell executor) against the real local
swarm and the GitLab emulator: what each event does to the site, not just which jobs it lists."""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import gitlab
import pytest
import swarm_images as images
from gcl import PipelineRepo
from swarm_site import SiteUnderTest, docker_or_skip, make_site, node_labels, remove_stack, restore_node_labels

from bidsflux.ci.reports import PLAN_MARKER
from bidsflux.swarm.secretstore import live_versions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def docker_client() -> Any:
    return docker_or_skip()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[SiteUnderTest]:
    """A bootstrapped test site whose folder is also the pipeline's git repository."""
    before = node_labels(docker_client)
    tags = images.build_all(docker_client)
    site = make_site(tmp_path_factory.mktemp("pipeline-site"), docker_client, tags)
    try:
        result = site.run("bootstrap", "--create-dirs", "--yes", "--skip-gitlab", "--timeout", "180")
        assert result.exit_code == 0, result.output
        yield site
    finally:
        remove_stack(docker_client, site.stack, site.network)
        restore_node_labels(docker_client, before)


@pytest.fixture(scope="module")
def repo(site: SiteUnderTest) -> PipelineRepo:
    return PipelineRepo(site.root)


@pytest.fixture
def project(gitlab_emulator: Any) -> Any:
    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    group = gl.groups.create({"name": "ni-dataops", "path": "ni-dataops"})
    return gl.projects.create({"name": "bidsflux", "path": "bidsflux", "namespace_id": group.id})


def _vars(gitlab_emulator: Any, project: Any, **extra: str) -> dict[str, str]:
    return {"CI_SERVER_URL": gitlab_emulator.url, "BIDSFLUX_GITLAB_TOKEN": gitlab_emulator.admin_token,
            "CI_PROJECT_ID": str(project.id), "CI_DEFAULT_BRANCH": "main", **extra}


def scale(client: Any, name: str, replicas: int) -> None:
    """Scale like an operator would; retried because swarm refuses an update built on a stale version."""
    from docker.errors import APIError

    for _ in range(10):
        try:
            client.services.get(name).scale(replicas)
            return
        except APIError as exc:
            if "out of sequence" not in str(exc):
                raise
            time.sleep(1)
    raise AssertionError(f"could not scale {name}")


def test_merge_request_validates_plans_and_keeps_one_note(repo: PipelineRepo, gitlab_emulator: Any, project: Any, site: SiteUnderTest) -> None:
    mr = project.mergerequests.create({"source_branch": "change", "target_branch": "main", "title": "more replicas"})
    # What a merge-request pipeline receives: no protected variable (BIDSFLUX_GITLAB_TOKEN), the
    # read_api token of a non-admin bot for plans, and optionally a note token of a project member.
    reader = gitlab_emulator.create_user("reader")
    noter = gitlab_emulator.create_user("noter")
    gitlab_emulator.state.projects[project.id]["_members"][noter["id"]] = 20  # Reporter of the project
    variables = _vars(gitlab_emulator, project, CI_PIPELINE_SOURCE="merge_request_event",
                      CI_MERGE_REQUEST_IID=str(mr.iid), CI_COMMIT_BRANCH="change",
                      BIDSFLUX_GITLAB_TOKEN="",
                      BIDSFLUX_GITLAB_READ_TOKEN=gitlab_emulator.create_token(reader["username"], ["read_api"]),
                      BIDSFLUX_GITLAB_NOTE_TOKEN=gitlab_emulator.create_token(noter["username"], ["api"]))
    jobs = repo.jobs(*(f"{k}={v}" for k, v in variables.items()))
    assert "deploy" not in jobs and {"validate", "plan"} <= set(jobs)
    first = repo.run(["validate", "plan"], variables)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    notes = [n for n in mr.notes.list(get_all=True) if PLAN_MARKER in n.body]
    assert len(notes) == 1
    assert "**swarm**: no changes" in notes[0].body, notes[0].body
    assert "**gitlab**:" in notes[0].body and "**mercure**:" in notes[0].body
    plan = json.loads((repo.path / "plan-swarm.json").read_text())
    assert plan["changes"] == []
    # A second push to the merge request updates the same note.
    site.edit(lambda d: d["dicom_endpoint"].__setitem__("study_timeout", 7))
    second = repo.run(["plan"], variables)
    assert second.returncode == 0, second.stdout[-4000:]
    notes = [n for n in mr.notes.list(get_all=True) if PLAN_MARKER in n.body]
    assert len(notes) == 1 and "**swarm**: 1 change(s)" in notes[0].body, notes[0].body
    assert gitlab_emulator.admin_token not in first.stdout + second.stdout
    site.edit(lambda d: d["dicom_endpoint"].__setitem__("study_timeout", 5))


def test_default_branch_deploy_converges(repo: PipelineRepo, gitlab_emulator: Any, project: Any, site: SiteUnderTest, docker_client: Any) -> None:
    site.edit(lambda d: d["dicom_endpoint"].__setitem__("study_timeout", 9))
    variables = _vars(gitlab_emulator, project, CI_PIPELINE_SOURCE="push", CI_COMMIT_BRANCH="main")
    result = repo.run(["deploy"], variables)
    assert result.returncode == 0, result.stdout[-4000:]
    svc = docker_client.services.get(f"{site.stack}_dicom_endpoint")
    command = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"]
    assert command[command.index("--eostudy-timeout") + 1] == "9"
    assert site.run("plan").exit_code == 0, "after the deploy job the live stack matches the repository"
    refused = repo.run(["deploy"], {**variables, "CI_COMMIT_BRANCH": "feature"})
    assert refused.returncode != 0 and "only the default branch" in refused.stdout


def test_scheduled_health_reports_a_stopped_service_and_closes_on_recovery(
        repo: PipelineRepo, gitlab_emulator: Any, project: Any, site: SiteUnderTest, docker_client: Any) -> None:
    variables = _vars(gitlab_emulator, project, CI_PIPELINE_SOURCE="schedule", BIDSFLUX_TASK="health", CI_COMMIT_BRANCH="main")
    assert repo.jobs(*(f"{k}={v}" for k, v in variables.items())) == ["health"]
    scale(docker_client, f"{site.stack}_gitlab-runner", 0)
    try:
        failing = repo.run(["health"], {**variables, "BIDSFLUX_HEALTH_CHECKS": "swarm"})
        assert failing.returncode != 0
        cases = {c.get("name"): c for c in ET.parse(repo.path / "health.xml").getroot().iter("testcase")}
        assert cases["swarm"].find("failure") is not None
        opened = project.issues.list(labels=["bidsflux-health", "check:swarm"], state="opened", get_all=True)
        assert len(opened) == 1 and "gitlab-runner" in opened[0].description
    finally:
        scale(docker_client, f"{site.stack}_gitlab-runner", 1)
    deadline = time.monotonic() + 90
    while True:
        recovered = repo.run(["health"], {**variables, "BIDSFLUX_HEALTH_CHECKS": "swarm"})
        if recovered.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert project.issues.list(labels=["bidsflux-health", "check:swarm"], state="opened", get_all=True) == []
    assert len(project.issues.list(labels=["bidsflux-health"], state="closed", get_all=True)) == 1


def test_manual_rotation_advances_the_secret_and_services_converge(
        repo: PipelineRepo, gitlab_emulator: Any, project: Any, site: SiteUnderTest) -> None:
    # The processing runner's config: a secret its service reads and rolls start-first.
    secret = "runner_processing_config"
    before = live_versions(site.stack)[secret]
    variables = _vars(gitlab_emulator, project, CI_PIPELINE_SOURCE="push", CI_COMMIT_BRANCH="main",
                      BIDSFLUX_SECRETS=secret)
    result = repo.run(["rotate-secrets"], variables)
    # A manual job may fail without failing the pipeline, so read the job's own verdict.
    assert re.search(r"PASS\s+rotate-secrets", result.stdout), result.stdout[-4000:]
    assert live_versions(site.stack)[secret] == before + 1
    plan = site.run("plan")
    assert plan.exit_code == 0, plan.output + result.stdout[-3000:]
    values = site.secret_values()
    assert all(v not in result.stdout for v in values.values() if len(v) >= 8)


def test_manual_reregistration_creates_runners_and_rolls_their_services(
        repo: PipelineRepo, gitlab_emulator: Any, project: Any, site: SiteUnderTest) -> None:
    before = live_versions(site.stack)
    variables = _vars(gitlab_emulator, project, CI_PIPELINE_SOURCE="push", CI_COMMIT_BRANCH="main")
    result = repo.run(["reregister-runners"], variables)
    assert re.search(r"PASS\s+reregister-runners", result.stdout), result.stdout[-4000:]
    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    runners = gl.runners_all.list(get_all=True)
    assert sorted(r.description for r in runners) == [
        "build", "deploy", "plan", "processing", "processing-fuse", "processing-untagged"]
    after = live_versions(site.stack)
    for secret in ("runner_dind_config", "runner_processing_config"):
        assert after[secret] == before[secret] + 1, secret
    # The runner services run their new config: the live stack matches the repository again.
    plan = site.run("plan")
    assert plan.exit_code == 0, plan.output
    assert "glrt-" not in result.stdout
