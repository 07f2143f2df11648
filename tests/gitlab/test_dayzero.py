"""Bootstrap's GitLab step (bidsflux.gitlab.dayzero.run) against the GitLab emulator.

What is real: the HTTP readiness endpoint and REST API of the emulator driven by python-gitlab,
git push over smart HTTP, docker secrets on the swarm, and a container found by its swarm service
label whose `gitlab-rails` is a STAND-IN script (see test_gitlab_root_token.py) that asks the
emulator to mint/revoke the admin token as GitLab's Rails code would. GitLab itself cannot run here."""

from __future__ import annotations

import io
import subprocess
import uuid
from pathlib import Path

import gitlab
import pytest
from rich.console import Console
from test_gitlab_apply import S3, commit_all
from test_gitlab_root_token import standin_image, swarm_client_module  # noqa: F401 - fixtures

from bidsflux.diagnostics import UserError
from bidsflux.gitlab.dayzero import run
from bidsflux.gitlab.runners import config_secrets
from bidsflux.swarm import secretstore
from bidsflux.swarm.deploy import load_context

RUNNERS = {"deploy", "mercure", "plan", "build", "processing", "processing-fuse", "processing-untagged"}


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, highlight=False), buf


@pytest.fixture
def day_zero_site(gitlab_emulator, site_repo, swarm_client, monkeypatch):  # type: ignore[no-untyped-def]
    """A committed site repository in the state bootstrap leaves before its GitLab step: the values
    file holds the generated secrets and every runner config secret has its empty v1."""
    root, stack = site_repo
    monkeypatch.setenv("BIDSFLUX_GITLAB_URL", gitlab_emulator.url)
    head = commit_all(root)
    ctx = load_context(None, str(root), "auto")
    values_file = Path(ctx.site["secrets"]["file"])
    values_file.parent.mkdir(parents=True, exist_ok=True)
    secretstore.write_values_file(values_file, dict(S3))
    for logical in config_secrets(ctx.template.data).values():
        secretstore.create_secret(swarm_client, stack, logical, 1, secretstore.generate_value("runner_config"))
    return ctx, head


@pytest.fixture
def gitlab_task(gitlab_emulator, standin_image, swarm_client_module, site_repo):  # type: ignore[no-untyped-def]  # noqa: F811
    """A container labelled as the task of service <stack>_gitlab, with the stand-in gitlab-rails."""
    _, stack = site_repo
    container = swarm_client_module.containers.run(
        standin_image, detach=True, network_mode="host", name=f"{stack}-gitlab-{uuid.uuid4().hex[:4]}",
        environment={"EMULATOR_URL": gitlab_emulator.url,
                     # the task's own localhost: day zero probes readiness from inside the task
                     "BIDSFLUX_READINESS_URL": f"{gitlab_emulator.inside_url}/-/readiness?all=1"},
        labels={"com.docker.swarm.service.name": f"{stack}_gitlab"})
    try:
        yield container
    finally:
        container.remove(force=True)


@pytest.mark.integration
def test_day_zero_sets_up_gitlab_and_second_run_writes_nothing(gitlab_emulator, day_zero_site, gitlab_task,  # type: ignore[no-untyped-def]
                                                               swarm_client) -> None:
    ctx, head = day_zero_site
    stack = ctx.stack
    console, out = _console()
    gitlab_emulator.set_health(ready=False)
    # Fault 6: through a host-mode published port GitLab sees docker_gwbridge's gateway, which is
    # not in monitoring_whitelist: /-/readiness answers 404 there. Day zero probes inside the task.
    gitlab_emulator.published_source_ip = "172.18.0.1"
    mark = gitlab_emulator.mark()
    # GitLab becomes ready while day zero waits for it.
    import threading

    threading.Timer(1.5, lambda: gitlab_emulator.set_health(ready=True)).start()
    run(ctx, console, ready_timeout_s=60, poll_interval=0.3)
    text = out.getvalue()
    assert "is ready (waited" in text

    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    assert {u.username for u in gl.users.list(get_all=True)} >= {"dicom_bot", "bids_bot", "bidsflux_bot"}
    assert gl.projects.get("ni-dataops/containers").path_with_namespace == "ni-dataops/containers"
    remote = gitlab_emulator.url.replace("http://", f"http://x:{gitlab_emulator.admin_token}@") + "/ni-dataops/bidsflux.git"
    ls = subprocess.run(["git", "ls-remote", remote, "main"], check=True, capture_output=True, text=True).stdout
    assert ls.split()[0] == head
    live = gl.runners_all.list(get_all=True)
    assert sorted(r.description for r in live) == sorted(RUNNERS)
    names = {s.name for s in swarm_client.secrets.list(filters={"label": f"io.bidsflux.stack={stack}"})}
    assert {f"{stack}_runner_dind_config_v2", f"{stack}_runner_processing_config_v2"} <= names
    # The admin token was minted through the stand-in gitlab-rails, used, then revoked.
    minted = [t for t in gitlab_emulator.state.tokens.values() if t.name == "bidsflux-bootstrap"]
    assert len(minted) == 1 and minted[0].revoked
    used = {r.user for r in gitlab_emulator.requests_since(mark) if r.is_write}
    assert used == {"root"}
    # No token value in what the operator sees.
    dicom_value = gl.variables.get("DICOM_BOT_GITLAB_TOKEN").value
    for value in (minted[0].value, dicom_value, gitlab_emulator.admin_token, *S3.values()):
        assert value not in text
    assert "glrt-" not in text.replace("glrt-****", "") and "glpat-" not in text.replace("glpat-****", "")
    assert "runners" in text and "revoked" in text

    # Second run: nothing to do, zero write requests to GitLab, the same runners stay.
    console2, out2 = _console()
    mark = gitlab_emulator.mark()
    run(ctx, console2, ready_timeout_s=30, poll_interval=0.3)
    assert gitlab_emulator.writes(mark) == []
    assert {r.id for r in gl.runners_all.list(get_all=True)} == {r.id for r in live}
    assert "GitLab: no changes" in out2.getvalue()
    second = [t for t in gitlab_emulator.state.tokens.values() if t.name == "bidsflux-bootstrap"]
    assert len(second) == 2 and all(t.revoked for t in second)


@pytest.mark.integration
def test_unreachable_gitlab_gives_resume_command(site_repo, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import socket

    root, _ = site_repo
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("BIDSFLUX_GITLAB_URL", f"http://127.0.0.1:{port}")
    ctx = load_context(None, str(root), "auto")
    console, out = _console()
    with pytest.raises(UserError) as err:
        run(ctx, console, ready_timeout_s=1, poll_interval=0.2)
    message = str(err.value)
    assert "not ready after" in message and "no running container of service" in message
    assert "swarm part of bootstrap is done" in message
    assert f"bidsflux gitlab apply --root-token --site {ctx.repo.site_file}" in message
    assert f"bidsflux runners register --root-token --site {ctx.repo.site_file}" in message
    assert "Traceback" not in out.getvalue()


@pytest.mark.integration
def test_missing_gitlab_task_gives_resume_command(gitlab_emulator, site_repo, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root, stack = site_repo
    monkeypatch.setenv("BIDSFLUX_GITLAB_URL", gitlab_emulator.url)
    ctx = load_context(None, str(root), "auto")
    console, _ = _console()
    with pytest.raises(UserError) as err:
        run(ctx, console, ready_timeout_s=10, poll_interval=0.2)
    assert f"no running container of service {stack}_gitlab" in str(err.value)
    assert "bidsflux runners register --root-token" in str(err.value)
    assert gitlab_emulator.writes(0) == []
