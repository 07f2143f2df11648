"""The real pipeline definition run as a site runs it: each job in the real ops image (built from
the Dockerfile) with gitlab-ci-local's docker executor, given only the volumes that the runner
serving its tags has in the config.toml bidsflux renders, against the real local swarm and the
GitLab emulator. What each event does to the site, and what never leaves it (secret values)."""

from __future__ import annotations

import json
import re
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gitlab
import pytest
import swarm_images as images
from gcl import PipelineRepo, runner_volumes
from ops_image import build_helper_image, build_ops_image
from swarm_site import SiteUnderTest, docker_or_skip, make_site, node_labels, remove_stack, restore_node_labels

from bidsflux.ci.reports import PLAN_MARKER
from bidsflux.swarm.secretstore import live_versions

pytestmark = pytest.mark.integration
REFERENCE_MERCURE = Path(__file__).resolve().parents[1] / "mercure" / "mercure.example.json"
GENERATED = ("gitlab_root_password", "s3_id", "s3_secret")  # the generated secrets this site's services use


@pytest.fixture(scope="module")
def docker_client() -> Any:
    return docker_or_skip()


@pytest.fixture(scope="module")
def job_images(docker_client: Any) -> dict[str, str]:
    return {"ops": build_ops_image(docker_client), "helper": build_helper_image(docker_client)}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[SiteUnderTest]:
    """A bootstrapped test site whose folder is also the pipeline's git repository."""
    before = node_labels(docker_client)
    tags = images.build_all(docker_client)
    site = make_site(tmp_path_factory.mktemp("pipeline-site"), docker_client, tags)
    without_minio(site)
    try:
        result = site.run("bootstrap", "--create-dirs", "--yes", "--skip-gitlab", "--timeout", "180")
        assert result.exit_code == 0, result.output
        yield site
    finally:
        remove_stack(docker_client, site.stack, site.network)
        restore_node_labels(docker_client, before)


def without_minio(site: SiteUnderTest) -> None:
    """This site runs no MinIO: here a task of a service with host-mode published ports cannot be
    replaced ("network sandbox does not exist", shared/recipes/ENVIRONMENT.md), so rotating its root
    credentials could never converge; the jobs under test do not need S3."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    template = site.root / "stack" / "bidsflux.stack.yml"
    data = yaml.load(template.read_text())
    del data["services"]["minio"]
    for name in ("minio_root_user", "minio_root_password"):
        del data["secrets"][name]
    with template.open("w") as fh:
        yaml.dump(data, fh)
    site.edit(lambda d: d["roles"]["data"].remove("minio"))


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


READONLY_SOCKET = "/run/bidsflux-docker-ro/docker.sock"  # where the shipped config listens (in its container)


def plan_socket(root: Path) -> str:
    """Where runners.yml's `plan` runner finds the proxy's socket (mount docker_readonly: paths.docker_readonly)."""
    from bidsflux.gitlab.runners import readonly_socket
    from bidsflux.site.yamlsource import load

    return readonly_socket(load(root / "stack" / "site.yml").data)


@pytest.fixture(scope="module")
def readonly_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shipped read-only Docker API (stack/docker-readonly.haproxy.cfg) run by the real HAProxy
    in front of the real socket; only its listening socket moves into the test's folder."""
    import subprocess

    from support import REPO_ROOT, require

    require(shutil.which("haproxy") is not None, "needs haproxy (Debian package haproxy)")
    tmp = tmp_path_factory.mktemp("docker-ro")
    sock = tmp / "docker.sock"
    cfg = tmp / "haproxy.cfg"
    cfg.write_text((REPO_ROOT / "stack" / "docker-readonly.haproxy.cfg").read_text()
                   .replace(f"unix@{READONLY_SOCKET}", f"unix@{sock}"))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists(), "haproxy did not open its socket"
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_job(repo: PipelineRepo, job: str, variables: dict[str, str], job_images: dict[str, str],
            readonly: str | None = None) -> Any:
    """One job in the ops image with the volumes of the runner its tags select, and no others
    (the read-only Docker API socket is the test's own HAProxy)."""
    site_socket = plan_socket(repo.path)
    volumes = [v.replace(site_socket, readonly) if readonly else v
               for v in runner_volumes(repo.path, repo.job_tags()[job])]
    assert readonly or not any(v.startswith(site_socket) for v in volumes), "this job needs the readonly_socket"
    result = repo.run(job, variables, job_images["ops"], job_images["helper"], volumes)
    result.volumes = volumes  # type: ignore[attr-defined]
    return result


def passed(result: Any, job: str) -> bool:
    # A manual job may fail without failing the pipeline, so read the job's own verdict.
    return re.search(rf"PASS\s+{re.escape(job)}\b", result.stdout) is not None


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


def task_file(client: Any, service: str, path: str) -> str:
    """A file as the running task of `service` sees it (docker secrets cannot be read back otherwise)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for c in client.containers.list(filters={"label": f"com.docker.swarm.service.name={service}"}):
            code, out = c.exec_run(["cat", path])
            if code == 0:
                return out.decode()
        time.sleep(1)
    raise AssertionError(f"no running task of {service} can read {path}")


def gitlab_bodies(gitlab_emulator: Any, project: Any) -> str:
    """Every note and issue text GitLab received for the project (as stored by the emulator)."""
    texts = [n.body for mr in project.mergerequests.list(get_all=True) for n in mr.notes.list(get_all=True)]
    texts += [f"{i.title}\n{i.description}" for i in project.issues.list(state="all", get_all=True)]
    return "\n".join(texts)


def job_outputs(repo: PipelineRepo, result: Any, job: str) -> str:
    """The job log (as printed and as stored) and the text of every artifact file."""
    parts = [result.stdout, result.stderr]
    log = repo.path / ".gitlab-ci-local" / "output" / f"{job}.log"
    if log.exists():
        parts.append(log.read_text(errors="replace"))
    art = repo.artifacts(job)
    if art.exists():
        parts += [f.read_text(errors="replace") for f in art.rglob("*") if f.is_file()]
    return "\n".join(parts)


def mercure_config_dir(site: SiteUnderTest) -> Path:
    from bidsflux.site.yamlsource import load

    return Path(load(site.site_file).data["paths"]["mercure_base"]["path"]) / "config"


def test_each_job_gets_only_its_runners_volumes(repo: PipelineRepo, site: SiteUnderTest) -> None:
    tags = repo.job_tags()
    state = str(site.tmp / "state")
    volumes = {job: runner_volumes(repo.path, tags[job]) for job in ("plan", "deploy", "rotate-secrets", "mercure-push", "health")}
    socket = "/var/run/docker.sock:/var/run/docker.sock"
    mercure = str(mercure_config_dir(site))
    # Merge-request plans: the read-only Docker API, Mercure's config read-only, no state.
    assert socket not in volumes["plan"] and f"{plan_socket(repo.path)}:/var/run/docker.sock" in volumes["plan"]
    assert f"{mercure}:{mercure}:ro" in volumes["plan"] and not any(v.startswith(state) for v in volumes["plan"])
    # The deploying runner: the socket and the state folder (values file), not Mercure's config.
    for job in ("deploy", "rotate-secrets", "health"):
        assert socket in volumes[job] and f"{state}:{state}" in volumes[job]
        assert not any(v.startswith(mercure) for v in volumes[job])
    # mercure-push: Mercure's config folder writable, never the values file.
    assert f"{mercure}:{mercure}" in volumes["mercure-push"]
    assert not any(v.startswith(state) for v in volumes["mercure-push"])


def test_merge_request_plan_and_drift_never_show_a_secret_env_value(
        repo: PipelineRepo, gitlab_emulator: Any, project: Any, site: SiteUnderTest, job_images: dict[str, str],
        readonly_socket: str) -> None:
    mr = project.mergerequests.create({"source_branch": "change", "target_branch": "main", "title": "more replicas"})
    # What a merge-request pipeline receives: no protected variable (BIDSFLUX_GITLAB_TOKEN), the
    # read_api token of a non-admin bot for plans, and a note token of a project member.
    reader = gitlab_emulator.create_user("reader")
    noter = gitlab_emulator.create_user("noter")
    gitlab_emulator.state.projects[project.id]["_members"][noter["id"]] = 20  # Reporter of the project
    variables = _vars(gitlab_emulator, project, CI_PIPELINE_SOURCE="merge_request_event",
                      CI_MERGE_REQUEST_IID=str(mr.iid), CI_COMMIT_BRANCH="change", BIDSFLUX_GITLAB_TOKEN="",
                      BIDSFLUX_GITLAB_READ_TOKEN=gitlab_emulator.create_token(reader["username"], ["read_api"]),
                      BIDSFLUX_GITLAB_NOTE_TOKEN=gitlab_emulator.create_token(noter["username"], ["api"]))
    jobs = repo.jobs(*(f"{k}={v}" for k, v in variables.items()))
    assert "deploy" not in jobs and {"validate", "plan"} <= set(jobs)
    validate = run_job(repo, "validate", variables, job_images, readonly_socket)
    assert passed(validate, "validate"), validate.stdout[-4000:] + validate.stderr[-2000:]
    first = run_job(repo, "plan", variables, job_images, readonly_socket)
    assert passed(first, "plan"), first.stdout[-4000:] + first.stderr[-2000:]
    notes = [n for n in mr.notes.list(get_all=True) if PLAN_MARKER in n.body]
    assert len(notes) == 1
    assert "**swarm**: no changes" in notes[0].body, notes[0].body
    assert "**gitlab**:" in notes[0].body and "**mercure**:" in notes[0].body
    plan = json.loads((repo.artifacts("plan") / "plan-swarm.json").read_text())
    assert plan["changes"] == []

    # A service env var holding a known secret value (the indexer's S3 secret, from the values file).
    secret = site.secret_values()["s3_secret"]
    template = site.root / "stack" / "bidsflux.stack.yml"
    saved = template.read_text()
    anchor = '      GIT_SSH_PORT: "{{ ports.gitlab_ssh | string }}"\n'
    assert anchor in saved
    template.write_text(saved.replace(anchor, anchor + f'      INDEXER_EXTRA_OPTIONS: "{secret}"\n'))
    try:
        second = run_job(repo, "plan", variables, job_images, readonly_socket)
        assert passed(second, "plan"), second.stdout[-4000:]
        notes = [n for n in mr.notes.list(get_all=True) if PLAN_MARKER in n.body]
        assert len(notes) == 1 and "**swarm**: 1 change(s)" in notes[0].body, notes[0].body
        change = json.loads((repo.artifacts("plan") / "plan-swarm.json").read_text())["changes"][0]
        assert change["fields"]["env"]["desired"] == {"INDEXER_EXTRA_OPTIONS": "added"}
        # The same difference live: deployed by hand, then the scheduled drift job reports it.
        deployed = site.run("deploy", "--timeout", "120")
        template.write_text(saved)
        assert deployed.exit_code == 0, deployed.output
        drift_vars = _vars(gitlab_emulator, project, CI_PIPELINE_SOURCE="schedule", BIDSFLUX_TASK="drift",
                           CI_COMMIT_BRANCH="main")
        drift = run_job(repo, "drift", drift_vars, job_images)
        assert "opened: swarm" in drift.stdout, drift.stdout[-4000:]
        issue = project.issues.list(labels=["bidsflux-drift"], state="opened", get_all=True)[0]
        assert "env" in issue.description
        for text in (job_outputs(repo, first, "plan"), job_outputs(repo, second, "plan"),
                     job_outputs(repo, drift, "drift"), gitlab_bodies(gitlab_emulator, project)):
            assert secret not in text
            assert gitlab_emulator.admin_token not in text
    finally:
        # The live env var stays until the next deploy (the deploy job's test converges it).
        template.write_text(saved)


def test_default_branch_deploy_converges(repo: PipelineRepo, gitlab_emulator: Any, project: Any, site: SiteUnderTest,
                                         docker_client: Any, job_images: dict[str, str]) -> None:
    site.edit(lambda d: d["dicom_endpoint"].__setitem__("study_timeout", 9))
    variables = _vars(gitlab_emulator, project, CI_PIPELINE_SOURCE="push", CI_COMMIT_BRANCH="main")
    result = run_job(repo, "deploy", variables, job_images)
    assert passed(result, "deploy"), result.stdout[-4000:]
    svc = docker_client.services.get(f"{site.stack}_dicom_endpoint")
    command = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"]
    assert command[command.index("--eostudy-timeout") + 1] == "9"
    assert site.run("plan").exit_code == 0, "after the deploy job the live stack matches the repository"
    refused = run_job(repo, "deploy", {**variables, "CI_COMMIT_BRANCH": "feature"}, job_images)
    assert not passed(refused, "deploy") and "only the default branch" in refused.stdout


def test_scheduled_health_reports_a_stopped_service_and_closes_on_recovery(
        repo: PipelineRepo, gitlab_emulator: Any, project: Any, site: SiteUnderTest, docker_client: Any,
        job_images: dict[str, str]) -> None:
    variables = _vars(gitlab_emulator, project, CI_PIPELINE_SOURCE="schedule", BIDSFLUX_TASK="health",
                      CI_COMMIT_BRANCH="main", BIDSFLUX_HEALTH_CHECKS="swarm")
    assert repo.jobs(*(f"{k}={v}" for k, v in variables.items())) == ["health"]
    scale(docker_client, f"{site.stack}_gitlab-runner", 0)
    try:
        failing = run_job(repo, "health", variables, job_images)
        assert not passed(failing, "health")
        cases = {c.get("name"): c for c in ET.parse(repo.artifacts("health") / "health.xml").getroot().iter("testcase")}
        assert cases["swarm"].find("failure") is not None
        opened = project.issues.list(labels=["bidsflux-health", "check:swarm"], state="opened", get_all=True)
        assert len(opened) == 1 and "gitlab-runner" in opened[0].description
    finally:
        scale(docker_client, f"{site.stack}_gitlab-runner", 1)
    deadline = time.monotonic() + 90
    while True:
        recovered = run_job(repo, "health", variables, job_images)
        if passed(recovered, "health") or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert project.issues.list(labels=["bidsflux-health", "check:swarm"], state="opened", get_all=True) == []
    assert len(project.issues.list(labels=["bidsflux-health"], state="closed", get_all=True)) == 1
    secrets = [v for v in site.secret_values().values() if len(v) >= 8]
    text = job_outputs(repo, failing, "health") + gitlab_bodies(gitlab_emulator, project)
    assert not [v for v in secrets if v in text]


def test_registered_runners_survive_the_default_rotation_and_new_values_reach_the_host(
        repo: PipelineRepo, gitlab_emulator: Any, project: Any, site: SiteUnderTest, docker_client: Any,
        job_images: dict[str, str]) -> None:
    variables = _vars(gitlab_emulator, project, CI_PIPELINE_SOURCE="push", CI_COMMIT_BRANCH="main")
    before = live_versions(site.stack)
    registered = run_job(repo, "reregister-runners", variables, job_images)
    assert passed(registered, "reregister-runners"), registered.stdout[-4000:]
    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    runners = {r.description: r.id for r in gl.runners_all.list(get_all=True)}
    assert sorted(runners) == ["build", "deploy", "mercure", "plan", "processing", "processing-fuse", "processing-untagged"]
    after_registration = live_versions(site.stack)
    for secret in ("runner_dind_config", "runner_processing_config"):
        assert after_registration[secret] == before[secret] + 1, secret
    assert site.run("plan").exit_code == 0, "the runner services run their new config"
    assert "glrt-" not in registered.stdout.replace("glrt-****", "")

    # The default manual rotation (BIDSFLUX_SECRETS=--all): generated secrets only.
    values_before = site.secret_values()
    rotated = run_job(repo, "rotate-secrets", variables, job_images)
    assert passed(rotated, "rotate-secrets"), rotated.stdout[-6000:] + rotated.stderr[-2000:]
    for line in ("skipped runner_dind_config (registered): renew it with `bidsflux runners register --only gitlab-runner-dind`",
                 "skipped runner_processing_config (registered)",
                 "skipped dicom_bot_gitlab_token (minted): renew it with `bidsflux gitlab tokens rotate dicom_bot`"):
        assert line in rotated.stdout, rotated.stdout[-4000:]
    versions = live_versions(site.stack)
    assert all(versions[s] == after_registration[s] + 1 for s in GENERATED), versions
    assert all(versions[s] == after_registration[s] for s in ("runner_dind_config", "runner_processing_config",
                                                              "dicom_bot_gitlab_token"))
    # The new values are in the host's values file (the job's container is gone), and they are
    # the values the services read.
    values = site.secret_values()
    assert all(values[s] != values_before[s] for s in GENERATED)
    assert task_file(docker_client, f"{site.stack}_dicom_endpoint", "/run/secrets/s3_secret") == values["s3_secret"]
    # The runner keeps its registration: its config still holds a token GitLab knows.
    config = task_file(docker_client, f"{site.stack}_gitlab-runner", "/run/secrets/runner_config.toml")
    token = re.search(r'token = "(glrt-[^"]+)"', config)
    assert token and gitlab_emulator.runner_by_token(token.group(1)) is not None
    assert {r.description: r.id for r in gl.runners_all.list(get_all=True)} == runners
    assert site.run("plan").exit_code == 0
    text = job_outputs(repo, rotated, "rotate-secrets")
    assert not [k for k, v in values.items() if len(v) >= 8 and v in text]
    assert not [k for k, v in values_before.items() if len(v) >= 8 and v in text]

    # Naming a registered secret is refused with the command that renews it; nothing changes.
    refused = run_job(repo, "rotate-secrets", {**variables, "BIDSFLUX_SECRETS": "runner_processing_config"}, job_images)
    assert not passed(refused, "rotate-secrets")
    assert "bidsflux runners register --only gitlab-runner" in refused.stdout + refused.stderr
    assert live_versions(site.stack) == versions


def test_mercure_push_changes_the_hosts_mercure_config(
        repo: PipelineRepo, gitlab_emulator: Any, project: Any, site: SiteUnderTest, job_images: dict[str, str]) -> None:
    config_dir = mercure_config_dir(site)
    config_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REFERENCE_MERCURE, config_dir / "mercure.json")
    before = json.loads((config_dir / "mercure.json").read_text())
    rules = site.root / "stack" / "mercure" / "rules.yml"
    text = rules.read_text()
    assert "comment: run the indexer once both key series have arrived" in text
    repo.git("add", "-A")
    repo.git("commit", "-qm", "state of the site before the change", "--allow-empty")
    repo.git("push", "-q", "origin", "main")
    rules.write_text(text.replace("comment: run the indexer once both key series have arrived",
                                  "comment: changed through the pipeline"))
    repo.git("commit", "-qam", "change a Mercure rule")
    variables = _vars(gitlab_emulator, project, CI_PIPELINE_SOURCE="push", CI_COMMIT_BRANCH="main")
    assert "mercure-push" in repo.jobs(*(f"{k}={v}" for k, v in variables.items()))
    result = run_job(repo, "mercure-push", variables, job_images)
    assert passed(result, "mercure-push"), result.stdout[-4000:] + result.stderr[-2000:]
    after = json.loads((config_dir / "mercure.json").read_text())
    assert after != before
    assert after["rules"]["mr_completed_study"]["comment"] == "changed through the pipeline"
    assert list(config_dir.glob("mercure.json.*.bak")), "push keeps a backup next to the config"
