"""Project deploy tokens: the emulator's rules (GitLab's API and registry token service), gitlab.yml's
`deploy_tokens` through `bidsflux gitlab plan|apply|tokens rotate` (created once, stored first, never
shown), and the pull they exist for: a real docker-registry trusting the emulator's /jwt/auth, a
real `docker stack deploy` by bidsflux's deploy login, the daemon pulling the private image."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gitlab
import pytest
import requests
from test_gitlab_apply import S3, commit_all, env_for

from bidsflux.swarm.secretstore import read_values_file
from support import cli


def _project(gl: gitlab.Gitlab, group: str, name: str) -> Any:
    try:
        g = gl.groups.get(group)
    except gitlab.GitlabGetError:
        g = gl.groups.create({"name": group, "path": group})
    return gl.projects.create({"name": name, "path": name, "namespace_id": g.id, "visibility": "private"})


def _jwt_access(emu: Any, user: str, password: str, scope: str) -> tuple[int, list[Any]]:
    r = requests.get(f"{emu.url}/jwt/auth", params={"service": "container_registry", "scope": scope},
                     auth=(user, password), timeout=10)
    if r.status_code != 200:
        return r.status_code, []
    body = r.json()["token"].split(".")[1]
    return 200, json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["access"]


def test_emulator_deploy_token_rules(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    emu = gitlab_emulator
    gl = gitlab.Gitlab(emu.url, private_token=emu.admin_token)
    containers = _project(gl, "ni-dataops", "containers")
    other = _project(gl, "ni-dataops", "other")
    # Created: the value (gldt- prefix) only in this answer, GitLab's default user name.
    made = containers.deploytokens.create({"name": "registry-pull", "scopes": ["read_registry"]})
    assert made.token.startswith("gldt-") and made.username == f"gitlab+deploy-token-{made.id}"
    assert made.expires_at is None and made.revoked is False and made.scopes == ["read_registry"]
    listed = [t.asdict() for t in containers.deploytokens.list(get_all=True)]
    assert listed and all("token" not in t for t in listed)
    assert "token" not in containers.deploytokens.get(made.id).asdict()
    assert other.deploytokens.list(get_all=True) == []
    # Refusals as GitLab answers them.
    for data, status, text in [({"name": "x"}, 400, "scopes is missing"),
                               ({"scopes": ["read_registry"]}, 400, "name is missing"),
                               ({"name": "x", "scopes": ["api"]}, 400, "scopes does not have a valid value"),
                               ({"name": "x", "scopes": ["read_registry"], "username": "bad name!"}, 400,
                                "Username can contain only letters")]:
        with pytest.raises(gitlab.GitlabHttpError) as err:  # python-gitlab would refuse some before sending
            gl.http_post(f"/projects/{containers.id}/deploy_tokens", post_data=data)
        assert err.value.response_code == status and text in str(err.value.error_message), data
    # Maintainers only: a developer gets 403, a stranger does not see the private project (404).
    dev = emu.create_user("dev")
    gl.groups.get("ni-dataops").members.create({"user_id": dev["id"], "access_level": 30})
    as_dev = gitlab.Gitlab(emu.url, private_token=emu.create_token("dev", ["api"]))
    with pytest.raises(gitlab.GitlabCreateError) as err:
        as_dev.projects.get("ni-dataops/containers", lazy=True).deploytokens.create({"name": "x", "scopes": ["read_registry"]})
    assert err.value.response_code == 403
    emu.create_user("stranger")
    as_stranger = gitlab.Gitlab(emu.url, private_token=emu.create_token("stranger", ["api"]))
    with pytest.raises(gitlab.GitlabListError) as err:
        as_stranger.projects.get("ni-dataops/containers", lazy=True).deploytokens.list(get_all=True)
    assert err.value.response_code == 404

    # /jwt/auth: pull of its own project's repositories only, with read_registry, its exact user name.
    repo_scope = "repository:ni-dataops/containers/dicom_indexer:pull,push"
    assert _jwt_access(emu, made.username, made.token, repo_scope) == (
        200, [{"type": "repository", "name": "ni-dataops/containers/dicom_indexer", "actions": ["pull"]}])
    assert _jwt_access(emu, made.username, made.token, "repository:ni-dataops/other/x:pull") == (200, [])
    assert _jwt_access(emu, "gitlab+deploy-token-999", made.token, repo_scope)[0] == 401
    assert _jwt_access(emu, made.username, made.token[:-2] + "xx", repo_scope)[0] == 401
    code_only = containers.deploytokens.create({"name": "code", "scopes": ["read_repository"], "username": "code-reader"})
    assert _jwt_access(emu, "code-reader", code_only.token, repo_scope) == (200, [])
    # Deleted (GitLab's DestroyService): 204, then it authenticates nowhere, and a second delete is 404.
    containers.deploytokens.delete(made.id)
    assert _jwt_access(emu, made.username, made.token, repo_scope)[0] == 401
    with pytest.raises(gitlab.GitlabDeleteError) as err:
        containers.deploytokens.delete(made.id)
    assert err.value.response_code == 404


def _prepared_repo(emu: Any, repo_copy: Path, git_upstream: Any) -> tuple[dict[str, str], Path]:
    from gitserver import point_imports_at

    from bidsflux.gitlab.dayzero import push_repository

    point_imports_at(repo_copy, git_upstream.url)
    values = repo_copy / "state" / "secrets.env"
    values.parent.mkdir(exist_ok=True)
    site = repo_copy / "stack" / "site.yml"
    site.write_text(site.read_text().replace("/var/lib/bidsflux/secrets.env", str(values)))
    gl_file = repo_copy / "stack" / "gitlab.yml"  # the bot token's docker secret is not this test's business
    gl_file.write_text(gl_file.read_text().replace("      secret: dicom_bot_gitlab_token\n", ""))
    env = env_for(emu)
    commit_all(repo_copy)
    cli("gitlab", "apply", "--root", str(repo_copy), env=env)  # all but the schedules (no branch yet)
    push_repository(repo_copy, emu.url, "ni-dataops/bidsflux", emu.admin_token)
    return env, values


def test_apply_creates_the_deploy_token_once_stores_it_and_rotate_renews_it(gitlab_emulator, repo_copy: Path,  # type: ignore[no-untyped-def]
                                                                           git_upstream) -> None:
    emu = gitlab_emulator
    env, values_file = _prepared_repo(emu, repo_copy, git_upstream)
    applied = cli("gitlab", "apply", "--root", str(repo_copy), env=env)
    assert applied.exit_code == 0, applied.output
    live = list(emu.state.deploy_tokens.values())
    assert len(live) == 1
    tok = live[0]
    assert (tok.name, tok.scopes) == ("registry-pull", ["read_registry"])
    assert emu.project_by_ref("ni-dataops/containers")["id"] == tok.project_id
    values = read_values_file(values_file)
    assert values["registry_pull_token"] == tok.value and values["registry_pull_token_username"] == tok.username
    assert oct(values_file.stat().st_mode & 0o777) == "0o600"
    # Never shown: not in apply's output, nor in a plan (text or JSON).
    plan = cli("gitlab", "plan", "--root", str(repo_copy), "--format", "json", env=env)
    assert plan.exit_code == 0, plan.output
    assert tok.value not in applied.output + plan.output
    # A second apply writes nothing.
    mark = emu.mark()
    again = cli("gitlab", "apply", "--root", str(repo_copy), env=env)
    assert again.exit_code == 0 and "no change" in again.output and emu.writes(mark) == []

    # Renewed: a new token stored first, the old one deleted (it no longer authenticates).
    rotated = cli("gitlab", "tokens", "rotate", "registry-pull", "--root", str(repo_copy), "--yes", env=env)
    assert rotated.exit_code == 0, rotated.output
    assert "renewed deploy token ni-dataops/containers:registry-pull" in rotated.output
    (new,) = emu.state.deploy_tokens.values()
    assert new.id != tok.id and read_values_file(values_file)["registry_pull_token"] == new.value
    assert new.value not in rotated.output and tok.value not in rotated.output
    assert _jwt_access(emu, tok.username, tok.value, "repository:ni-dataops/containers/x:pull")[0] == 401

    # The value lost from the values file: the plan says so (without a value), apply makes a new one.
    text = values_file.read_text().replace(new.value, "")
    values_file.write_text(text)
    lost = cli("gitlab", "plan", "--root", str(repo_copy), env=env)
    assert lost.exit_code == 2 and "↻ deploy_token ni-dataops/containers:registry-pull" in lost.output
    assert "not in the values file" in lost.output
    assert cli("gitlab", "apply", "--root", str(repo_copy), env=env).exit_code == 0
    (third,) = emu.state.deploy_tokens.values()
    assert third.id != new.id and read_values_file(values_file)["registry_pull_token"] == third.value

    # The values file unusable (a folder): refused with its name before any token is made.
    for t in list(emu.state.deploy_tokens.values()):
        del emu.state.deploy_tokens[t.id]
    values_file.unlink()
    values_file.mkdir()
    refused = cli("gitlab", "apply", "--root", str(repo_copy), env=env)
    assert refused.exit_code == 1 and emu.state.deploy_tokens == {}, refused.output
    assert f"cannot read {values_file}" in refused.output
    assert S3["s3_secret"] not in refused.output and "gldt-" not in refused.output


@pytest.mark.integration
def test_deploy_logs_in_with_the_deploy_token_and_the_swarm_pulls_the_private_image(  # type: ignore[no-untyped-def]
        gitlab_emulator, swarm_client, tmp_path: Path) -> None:
    import swarm_images
    import yaml

    from bidsflux.gitlab.deploy_tokens import renew
    from bidsflux.gitlab.spec import DeployTokenSpec
    from bidsflux.swarm.deploy import pull_login, refresh_credential
    from bidsflux.swarm.engine import stack_deploy
    from tls_registry import TlsRegistry

    emu = gitlab_emulator
    gl = gitlab.Gitlab(emu.url, private_token=emu.admin_token)
    _project(gl, "ni-dataops", "containers")
    _project(gl, "ni-dataops", "other")
    (tmp_path / "registry").mkdir()
    registry = TlsRegistry(tmp_path / "registry", token_auth=emu)
    host, port = registry.address.split(":")
    image = f"{registry.address}/ni-dataops/containers/dicom_indexer:{uuid.uuid4().hex[:8]}"
    foreign = f"{registry.address}/ni-dataops/other/x:1"
    stack = "bfpull" + uuid.uuid4().hex[:8]
    admin_cfg = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "admin-docker")}
    home_cfg = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    home_before = home_cfg.read_bytes() if home_cfg.exists() else None

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=180, env=env)

    try:
        # The private image, pushed by an administrator (as the build job does).
        assert run("docker", "login", "-u", "root", "-p", emu.admin_token, registry.address, env=admin_cfg).returncode == 0
        source = swarm_images.build(swarm_client, "storescp")
        for ref in (image, foreign):
            run("docker", "tag", source, ref)
            pushed = run("docker", "push", ref, env=admin_cfg)
            assert pushed.returncode == 0, pushed.stderr
            run("docker", "rmi", ref)  # the node must pull it
        # gitlab.yml's token, made and stored by bidsflux.
        values_file = tmp_path / "secrets.env"
        spec = DeployTokenSpec("registry-pull", "ni-dataops/containers", ["read_registry"], "registry_pull_token")
        renew(gl, spec, str(values_file))
        values = read_values_file(values_file)

        site = {"hosts": {"registry": host}, "ports": {"https": int(port)}, "secrets": {"file": str(values_file)}}
        gitlab_doc = {"projects": {"ni-dataops/containers": {"deploy_tokens": {"registry-pull": {
            "scopes": ["read_registry"], "secret": "registry_pull_token"}}}}}
        (tmp_path / "gitlab.yml").write_text(yaml.safe_dump(gitlab_doc))
        compose = {"version": "3.9", "services": {"app": {
            "image": image, "entrypoint": ["/bin/sleep", "600"], "deploy": {"restart_policy": {"condition": "none"}}}}}
        ctx = SimpleNamespace(site=site, repo=SimpleNamespace(gitlab_file=tmp_path / "gitlab.yml", root=tmp_path),
                              rendered=SimpleNamespace(to_yaml=lambda: yaml.safe_dump(compose)))
        from rich.console import Console

        def newest_state(name: str) -> str:
            """The state of the service's newest task once it settled (running, rejected or failed)."""
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                tasks = sorted(swarm_client.services.get(name).tasks(), key=lambda task: task["CreatedAt"])
                if tasks and tasks[-1]["Status"]["State"] in ("running", "rejected", "failed"):
                    return str(tasks[-1]["Status"]["State"])
                time.sleep(1)
            return ""

        def first_task_state(name: str) -> tuple[str, Any]:
            deadline, tasks = time.monotonic() + 120, []
            while time.monotonic() < deadline:
                tasks = swarm_client.services.get(name).tasks()
                state = tasks[0]["Status"]["State"] if tasks else ""
                if state in ("running", "rejected", "failed"):
                    return state, tasks
                time.sleep(1)
            return "", tasks

        # Without the login (today's deploy, no token known) the swarm may not pull it: the project is private.
        stack_deploy(yaml.safe_dump(compose), stack + "n")
        state, tasks = first_task_state(f"{stack}n_app")
        assert state == "rejected", tasks
        seen: dict[str, str] = {}
        with pull_login(ctx, Console(file=open(os.devnull, "w"))):  # noqa: SIM115 - closed with the process
            seen["config"] = os.environ["DOCKER_CONFIG"]
            written = json.loads(Path(seen["config"], "config.json").read_text())
            assert Path(seen["config"], "config.json").stat().st_mode & 0o077 == 0
            stack_deploy(yaml.safe_dump(compose), stack)
        # Bootstrap's image step deploys with the same token once day zero stored it (else its admin token).
        from bidsflux.images.dayzero import pull_credential

        assert pull_credential(gitlab_doc, site, image, ("root", "admin")) == (user_and_token := (
            values["registry_pull_token_username"], values["registry_pull_token"]))
        assert pull_credential(gitlab_doc, site, foreign, ("root", "admin")) == ("root", "admin")
        # The private folder is gone and the user's own Docker config was not touched.
        assert not Path(seen["config"]).exists() and os.environ.get("DOCKER_CONFIG") != seen["config"]
        assert (home_cfg.read_bytes() if home_cfg.exists() else None) == home_before
        user, _, secret = base64.b64decode(written["auths"][registry.address]["auth"]).decode().partition(":")
        assert (user, secret) == user_and_token

        # The swarm pulled the private image with the credential the deploy handed it.
        state, tasks = first_task_state(f"{stack}_app")
        assert state == "running", tasks

        # The same token, by hand: pulls its project's image, not another project's; a wrong or a
        # renewed-away (deleted) token pulls nothing.
        def pull_as(user: str, token: str, ref: str) -> subprocess.CompletedProcess[str]:
            cfg = {**os.environ, "DOCKER_CONFIG": str(tmp_path / f"cfg-{uuid.uuid4().hex[:6]}")}
            login = subprocess.run(["docker", "login", "-u", user, "--password-stdin", registry.address],
                                   input=token, capture_output=True, text=True, timeout=60, env=cfg)
            if login.returncode != 0:
                return login
            run("docker", "rmi", "-f", ref)
            return run("docker", "pull", ref, env=cfg)

        name, token = values["registry_pull_token_username"], values["registry_pull_token"]
        assert run("docker", "service", "rm", f"{stack}_app").returncode == 0
        assert pull_as(name, token, image).returncode == 0
        assert pull_as(name, token, foreign).returncode != 0
        assert pull_as(name, "gldt-wrong" + token[10:], image).returncode != 0
        renew(gl, spec, str(values_file))
        renewed = read_values_file(values_file)
        assert pull_as(name, token, image).returncode != 0
        assert pull_as(renewed["registry_pull_token_username"], renewed["registry_pull_token"], image).returncode == 0
        run("docker", "rmi", "-f", image)

        # A renewed token reaches the running services at the next deploy, even with nothing else to
        # change: a task rescheduled on a node without the image then pulls with the new token.
        ctx.site["paths"] = {"state_dir": {"path": str(tmp_path)}}
        ctx.stack = stack + "r"
        out = io.StringIO()
        console = Console(file=out, width=300)
        assert refresh_credential(ctx, console)  # the first deploy that knows the token hands it over
        assert newest_state(f"{ctx.stack}_app") == "running"
        assert not refresh_credential(ctx, console)  # same token: nothing to do

        def restart_without_image() -> str:
            run("docker", "rmi", "-f", image)
            assert run("docker", "service", "update", "--force", "--detach", f"{ctx.stack}_app").returncode == 0
            return newest_state(f"{ctx.stack}_app")

        renew(gl, spec, str(values_file))  # the token the services hold is deleted in GitLab
        assert restart_without_image() == "rejected"
        assert refresh_credential(ctx, console)
        assert restart_without_image() == "running"
        current = read_values_file(values_file)["registry_pull_token"]
        assert current not in out.getvalue() and token not in out.getvalue()
        assert "registry credential changed" in out.getvalue()
    finally:
        run("docker", "stack", "rm", stack + "r")
        run("docker", "stack", "rm", stack)
        run("docker", "stack", "rm", stack + "n")
        for ref in (image, foreign):
            run("docker", "rmi", ref)
        registry.stop()
