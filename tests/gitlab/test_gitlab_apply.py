"""gitlab.yml applied to the GitLab emulator through the real python-gitlab client and the CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import gitlab
import pytest

from bidsflux.gitlab.dayzero import gitlab_day_zero
from bidsflux.site.repository import open_repository
from support import cli

S3 = {"s3_id": "AKIAEXAMPLEKEY123456", "s3_secret": "s3-secret-value-0123456789"}
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}


def commit_all(root: Path) -> str:
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(root), "commit", "-qm", "site"], check=True, env=env)
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def env_for(emu, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"BIDSFLUX_GITLAB_URL": emu.url, "BIDSFLUX_GITLAB_TOKEN": emu.admin_token,
            "BIDSFLUX_SECRET_S3_ID": S3["s3_id"], "BIDSFLUX_SECRET_S3_SECRET": S3["s3_secret"], **extra}


@pytest.mark.integration
def test_day_zero_creates_everything_then_second_apply_writes_nothing(gitlab_emulator, site_repo, swarm_client,  # type: ignore[no-untyped-def]
                                                                     git_upstream) -> None:  # type: ignore[no-untyped-def]
    root, stack = site_repo
    head = commit_all(root)
    repo = open_repository(root=root)
    values_file = root / "state" / "secrets.env"
    result = gitlab_day_zero(repo, gitlab_emulator.url, gitlab_emulator.admin_token, stack=stack,
                             secret_values=S3, values_file=str(values_file), docker_client=swarm_client)
    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    # Every object of gitlab.yml exists, as configured.
    assert {u.username for u in gl.users.list(get_all=True)} >= {"dicom_bot", "bids_bot", "bidsflux_bot"}
    assert gl.groups.get("ni-dataops").visibility == "internal"
    imported = gl.projects.get("ni-dataops/containers")
    assert imported.import_status == "finished" and imported.import_url.endswith("/UNFmontreal/containers.git")
    # The import really copied the upstream history (git http-backend on both sides).
    remote_c = gitlab_emulator.url.replace("http://", f"http://x:{gitlab_emulator.admin_token}@") + "/ni-dataops/containers.git"
    upstream = subprocess.run(["git", "ls-remote", f"{git_upstream.url}/UNFmontreal/containers.git", "main"],
                              check=True, capture_output=True, text=True).stdout.split()[0]
    assert subprocess.run(["git", "ls-remote", remote_c, "main"], check=True, capture_output=True,
                          text=True).stdout.split()[0] == upstream
    # Import sources were enabled for `git` only because gitlab.yml imports by URL (16.0+ default: none).
    assert gl.settings.get().import_sources == ["git"]
    own = gl.projects.get("ni-dataops/bidsflux")
    assert own.only_allow_merge_if_pipeline_succeeds is True
    pb = own.protectedbranches.get("main")
    assert pb.push_access_levels[0]["access_level"] == 40 and pb.merge_access_levels[0]["access_level"] == 40
    s3 = gl.variables.get("S3_SECRET")
    assert (s3.value, s3.masked, s3.protected, s3.raw) == (S3["s3_secret"], True, True, True)
    assert gl.variables.get("DICOM_BOT_USERNAME").value == "dicom_bot"
    schedules = {s.description: own.pipelineschedules.get(s.id) for s in own.pipelineschedules.list()}
    assert schedules["health"].cron == "*/30 * * * *"
    assert schedules["health"].ref == "refs/heads/main"  # GitLab stores the expanded ref
    assert schedules["drift"].attributes["variables"][0]["value"] == "drift"
    # Bot tokens: created with an expiry, their values stored where the stack and pipelines read them.
    dicom_value = gl.variables.get("DICOM_BOT_GITLAB_TOKEN").value
    record = gitlab_emulator.token_record(dicom_value)
    assert record is not None and record.active() and record.expires_at is not None
    secret_names = [s.name for s in swarm_client.secrets.list(filters={"label": f"io.bidsflux.stack={stack}"})]
    assert secret_names == [f"{stack}_dicom_bot_gitlab_token_v1"]
    assert f"dicom_bot_gitlab_token='{dicom_value}'" in values_file.read_text() or \
        f"dicom_bot_gitlab_token={dicom_value}" in values_file.read_text()
    # The repository itself was pushed to its project.
    assert result.pushed == "ni-dataops/bidsflux"
    remote = gitlab_emulator.url.replace("http://", f"http://x:{gitlab_emulator.admin_token}@") + "/ni-dataops/bidsflux.git"
    ls = subprocess.run(["git", "ls-remote", remote, "main"], check=True, capture_output=True, text=True).stdout
    assert ls.split()[0] == head

    # Second apply: zero writes; reads bounded by the number of objects in gitlab.yml.
    mark = gitlab_emulator.mark()
    again = cli("gitlab", "apply", "--root", str(root), env=env_for(gitlab_emulator))
    assert again.exit_code == 0, again.output
    assert gitlab_emulator.writes(mark) == []
    assert len(gitlab_emulator.reads(mark)) <= 30
    assert "no change" in again.output


@pytest.mark.integration
def test_deleted_objects_are_restored_and_plan_exit_codes(gitlab_emulator, site_repo) -> None:  # type: ignore[no-untyped-def]
    root, _ = site_repo
    env = env_for(gitlab_emulator)
    (root / "state").mkdir(exist_ok=True)  # the values file's folder (the deploy token's value goes there)
    # Tokens that would go to a docker secret are out of this test's scope: keep it GitLab-only.
    gl_file = root / "stack" / "gitlab.yml"
    gl_file.write_text(gl_file.read_text().replace("      secret: dicom_bot_gitlab_token\n", ""))
    first = cli("gitlab", "plan", "--root", str(root), env=env)
    assert first.exit_code == 2 and "+ project ni-dataops/bidsflux" in first.output
    # Before the repository is pushed, GitLab 17 refuses schedules on its branch: apply says so.
    early = cli("gitlab", "apply", "--root", str(root), env=env)
    assert early.exit_code == 1 and "has no branch main yet; push the repository first" in early.output
    from bidsflux.gitlab.dayzero import push_repository

    commit_all(root)
    push_repository(root, gitlab_emulator.url, "ni-dataops/bidsflux", gitlab_emulator.admin_token)
    applied = cli("gitlab", "apply", "--root", str(root), env=env)
    assert applied.exit_code == 0, applied.output
    assert cli("gitlab", "plan", "--root", str(root), env=env).exit_code == 0
    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    own = gl.projects.get("ni-dataops/bidsflux")
    own.protectedbranches.delete("main")
    gl.variables.delete("S3_ID")
    own.pipelineschedules.delete(own.pipelineschedules.list()[0].id)
    gl.variables.update("S3_SECRET", {"value": "tampered-value-123", "masked": False})
    plan = cli("gitlab", "plan", "--root", str(root), "--format", "json", env=env)
    assert plan.exit_code == 2
    assert "tampered-value-123" not in plan.output and S3["s3_secret"] not in plan.output
    assert cli("gitlab", "apply", "--root", str(root), env=env).exit_code == 0
    assert own.protectedbranches.get("main").name == "main"
    assert gl.variables.get("S3_ID").value == S3["s3_id"]
    assert gl.variables.get("S3_SECRET").masked is True and gl.variables.get("S3_SECRET").value == S3["s3_secret"]
    assert len(own.pipelineschedules.list()) == 4
    assert cli("gitlab", "plan", "--root", str(root), env=env).exit_code == 0


def test_errors_are_messages_without_tokens(gitlab_emulator, repo_copy: Path, git_upstream) -> None:  # type: ignore[no-untyped-def]
    from gitserver import point_imports_at

    point_imports_at(repo_copy, git_upstream.url)
    site = repo_copy / "stack" / "site.yml"
    site.write_text(site.read_text().replace("/var/lib/bidsflux/secrets.env", str(repo_copy / "secrets.env")))
    gitlab_emulator.create_user("reader")
    weak = gitlab_emulator.create_token("reader", ["read_api"])
    # A token without admin rights: a message with the fix, exit 1, no value echoed.
    r = cli("gitlab", "apply", "--root", str(repo_copy), env=env_for(gitlab_emulator, BIDSFLUX_GITLAB_TOKEN=weak))
    assert r.exit_code == 1 and "403" in r.output and "admin" in r.output
    assert weak not in r.output and S3["s3_secret"] not in r.output
    # A 5xx in the middle: a clear message; a re-run repairs everything.
    gitlab_emulator.fail_requests(r"^POST /projects$", 500)
    env = env_for(gitlab_emulator)
    gl_file = repo_copy / "stack" / "gitlab.yml"
    gl_file.write_text(gl_file.read_text().replace("      secret: dicom_bot_gitlab_token\n", ""))
    failed = cli("gitlab", "apply", "--root", str(repo_copy), env=env)
    assert failed.exit_code == 1 and "500" in failed.output and "re-run" in failed.output
    from bidsflux.gitlab.dayzero import push_repository

    cli("gitlab", "apply", "--root", str(repo_copy), env=env)  # everything but the schedules (no branch yet)
    commit_all(repo_copy)
    push_repository(repo_copy, gitlab_emulator.url, "ni-dataops/bidsflux", gitlab_emulator.admin_token)
    assert cli("gitlab", "apply", "--root", str(repo_copy), env=env).exit_code == 0
    assert cli("gitlab", "plan", "--root", str(repo_copy), env=env).exit_code == 0
    # Wrong token and unreachable GitLab.
    r = cli("gitlab", "plan", "--root", str(repo_copy), env=env_for(gitlab_emulator, BIDSFLUX_GITLAB_TOKEN="glpat-notreal12345"))
    assert r.exit_code == 1 and "401" in r.output and "glpat-notreal12345" not in r.output
    url = gitlab_emulator.url
    gitlab_emulator.stop()
    r = cli("gitlab", "plan", "--root", str(repo_copy), env={**env, "BIDSFLUX_GITLAB_URL": url})
    assert r.exit_code == 1 and "cannot reach GitLab" in r.output
    assert gitlab_emulator.admin_token not in r.output
    r = cli("gitlab", "plan", "--root", str(repo_copy), env={"BIDSFLUX_GITLAB_TOKEN": ""})
    assert r.exit_code == 1 and "BIDSFLUX_GITLAB_TOKEN" in r.output
