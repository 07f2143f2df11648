"""The GitLab emulator behaves as GitLab documents it, seen through the real python-gitlab client."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import gitlab
import pytest
import requests


def admin(emu) -> gitlab.Gitlab:  # type: ignore[no-untyped-def]
    gl = gitlab.Gitlab(emu.url, private_token=emu.admin_token)
    gl.auth()
    return gl


def test_auth_errors_and_admin_checks(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(gitlab.GitlabAuthenticationError) as bad:
        gitlab.Gitlab(gitlab_emulator.url, private_token="glpat-wrong").auth()
    assert bad.value.response_code == 401
    gitlab_emulator.create_user("alice")
    alice = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.create_token("alice", ["api"]))
    with pytest.raises(gitlab.GitlabListError) as forbidden:
        alice.variables.list()
    assert forbidden.value.response_code == 403
    reader = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.create_token("alice", ["read_api"]))
    with pytest.raises(gitlab.GitlabCreateError) as scope:
        reader.groups.create({"name": "g", "path": "g"})
    assert scope.value.response_code == 403 and "insufficient_scope" in scope.value.response_body.decode()
    expired = gitlab_emulator.create_token("alice", ["api"], expires_at=dt.date.today() + dt.timedelta(days=1))
    gitlab_emulator.token_record(expired).expires_at = dt.date.today()
    with pytest.raises(gitlab.GitlabAuthenticationError):
        gitlab.Gitlab(gitlab_emulator.url, private_token=expired).auth()


def test_paths_validation_conflicts_and_pagination(gitlab_emulator, git_upstream) -> None:  # type: ignore[no-untyped-def]
    gl = admin(gitlab_emulator)
    with pytest.raises(gitlab.GitlabGetError) as missing:
        gl.projects.get("ni-dataops/containers")
    assert missing.value.response_code == 404 and "Project Not Found" in str(missing.value)
    group = gl.groups.create({"name": "NI", "path": "ni-dataops", "visibility": "internal"})
    git_upstream.add_repo("c.git")
    gl.settings.update(new_data={"import_sources": ["git"]})
    source = git_upstream.url.replace("http://", "http://user:pw@") + "/c.git"
    gl.projects.create({"name": "containers", "namespace_id": group.id, "import_url": source})
    project = gl.projects.get("ni-dataops/containers")
    assert project.import_status == "finished" and "pw" not in project.import_url
    with pytest.raises(gitlab.GitlabCreateError) as taken:
        gl.projects.create({"name": "containers", "namespace_id": group.id})
    assert taken.value.response_code == 400
    gl.users.create({"username": "bot", "name": "Bot", "email": "b@example.org", "force_random_password": True})
    with pytest.raises(gitlab.GitlabCreateError) as conflict:
        gl.users.create({"username": "bot", "name": "Bot", "email": "c@example.org", "force_random_password": True})
    assert conflict.value.response_code == 409
    with pytest.raises(gitlab.GitlabCreateError) as masked:
        gl.variables.create({"key": "SHORT", "value": "abc", "masked": True, "protected": False, "raw": True})
    assert masked.value.response_code == 400
    for i in range(23):
        gl.variables.create({"key": f"V{i}", "value": f"value-{i:04d}", "masked": True, "protected": True, "raw": True})
    r = requests.get(f"{gitlab_emulator.url}/api/v4/admin/ci/variables", headers={"PRIVATE-TOKEN": gitlab_emulator.admin_token},
                     params={"per_page": 10, "page": 2}, timeout=10)
    assert (r.headers["X-Total"], r.headers["X-Total-Pages"], r.headers["X-Next-Page"]) == ("23", "3", "3")
    assert 'rel="next"' in r.headers["Link"] and len(r.json()) == 10
    assert len(list(gl.variables.list(iterator=True, per_page=10))) == 23


def test_token_rotation_and_family_revocation(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    gl = admin(gitlab_emulator)
    user = gl.users.create({"username": "dicom_bot", "name": "DICOM", "email": "d@example.org", "force_random_password": True})
    created = user.personal_access_tokens.create({"name": "indexer", "scopes": ["api"],
                                                  "expires_at": (dt.date.today() + dt.timedelta(days=30)).isoformat()})
    assert created.token.startswith("glpat-")
    bot = gitlab.Gitlab(gitlab_emulator.url, private_token=created.token)
    me = bot.personal_access_tokens.get("self")
    rotated = bot.personal_access_tokens.rotate(me.id)
    assert rotated["token"] != created.token and rotated["active"]
    # Replaying the rotation with the old token is refused and burns the whole family.
    with pytest.raises(gitlab.GitlabAuthenticationError):
        bot.personal_access_tokens.rotate(me.id)
    with pytest.raises(gitlab.GitlabAuthenticationError):
        gitlab.Gitlab(gitlab_emulator.url, private_token=rotated["token"]).auth()
    states = {t.id: t.active for t in gl.personal_access_tokens.list(user_id=user.id, get_all=True)}
    assert states == {me.id: False, rotated["id"]: False}
    with pytest.raises(gitlab.GitlabCreateError) as too_long:
        user.personal_access_tokens.create({"name": "x", "scopes": ["api"],
                                            "expires_at": (dt.date.today() + dt.timedelta(days=400)).isoformat()})
    assert too_long.value.response_code == 400


def test_runners_schedules_issues_notes_and_request_log(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    gl = admin(gitlab_emulator)
    start = gitlab_emulator.mark()
    runner = gl.user.runners.create({"runner_type": "instance_type", "description": "dind", "tag_list": ["dind"]})
    assert runner.token.startswith("glrt-")
    assert [(r.id, r.status, r.online) for r in gl.runners_all.list()] == [(runner.id, "never_contacted", False)]
    gitlab_emulator.set_runner_online(runner.id)
    details = gl.runners.get(runner.id)
    assert details.status == "online" and details.contacted_at and details.tag_list == ["dind"]
    assert "token" not in details.attributes
    gl.runners.delete(runner.id)
    assert gl.runners_all.list() == []
    group = gl.groups.create({"name": "g", "path": "g"})
    project = gl.projects.create({"name": "p", "namespace_id": group.id})
    # A full ref passes GitLab 17's ref check without a branch (base_save_service.rb); a short one needs it.
    sched = project.pipelineschedules.create({"description": "health", "ref": "refs/heads/main", "cron": "*/30 * * * *"})
    sched.variables.create({"key": "BIDSFLUX_TASK", "value": "health"})
    assert project.pipelineschedules.get(sched.id).attributes["variables"] == [
        {"key": "BIDSFLUX_TASK", "value": "health", "variable_type": "env_var"}]
    with pytest.raises(gitlab.GitlabCreateError):
        project.pipelineschedules.create({"description": "bad", "ref": "refs/heads/main", "cron": "every day"})
    issue = project.issues.create({"title": "health: gitlab down", "labels": "bidsflux-health"})
    issue.state_event = "close"
    issue.save()
    assert [i.iid for i in project.issues.list(labels="bidsflux-health", state="closed")] == [issue.iid]
    mr = project.mergerequests.create({"source_branch": "f", "target_branch": "main", "title": "t"})
    note = mr.notes.create({"body": "plan"})
    note.body = "plan v2"
    note.save()
    assert [n.body for n in mr.notes.list()] == ["plan v2"]
    log = gitlab_emulator.requests_since(start)
    assert {(r.method, r.path) for r in log} >= {("POST", "/user/runners"), ("DELETE", f"/runners/{runner.id}")}
    assert len(gitlab_emulator.writes(start)) == 12  # the refused schedule counts too


def test_health_endpoints_and_injected_failures(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    url = gitlab_emulator.url
    assert requests.get(f"{url}/-/readiness", params={"all": 1}, timeout=5).json()["db_check"] == [{"status": "ok"}]
    assert requests.get(f"{url}/v2/", timeout=5).headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    gitlab_emulator.set_health(failing_checks=("gitaly_check",), registry=False)
    ready = requests.get(f"{url}/-/readiness", params={"all": 1}, timeout=5)
    assert ready.status_code == 503 and ready.json()["gitaly_check"][0]["status"] == "failed"
    assert requests.get(f"{url}/v2/", timeout=5).status_code == 503
    gitlab_emulator.fail_requests(r"^GET /user$", 502)
    gl = gitlab.Gitlab(url, private_token=gitlab_emulator.admin_token, retry_transient_errors=False)
    with pytest.raises(gitlab.GitlabError) as err:
        gl.auth()
    assert err.value.response_code == 502
    gl.auth()  # only the next request was failed


def test_git_push_over_smart_http(gitlab_emulator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gl = admin(gitlab_emulator)
    group = gl.groups.create({"name": "g", "path": "g"})
    gl.projects.create({"name": "p", "namespace_id": group.id})
    work = tmp_path / "w"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "README").write_text("hello\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run(["git", "-C", str(work), "add", "README"], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "first"], check=True, env=env)
    remote = gitlab_emulator.url.replace("http://", f"http://oauth2:{gitlab_emulator.admin_token}@") + "/g/p.git"
    subprocess.run(["git", "-C", str(work), "push", "-q", remote, "main"], check=True, env=env, capture_output=True)
    clone = tmp_path / "c"
    subprocess.run(["git", "clone", "-q", remote, str(clone)], check=True, env=env, capture_output=True)
    assert (clone / "README").read_text() == "hello\n"
    bad = remote.replace(gitlab_emulator.admin_token, "glpat-nope")
    denied = subprocess.run(["git", "-C", str(work), "push", "-q", bad, "main"], env={**env, "GIT_TERMINAL_PROMPT": "0"},
                            capture_output=True, text=True)
    assert denied.returncode != 0
