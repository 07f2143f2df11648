"""GitLab 17 rules the emulator enforces (each cites its GitLab source there) and the client fixes
that follow them (issue 11). Real HTTP, real python-gitlab, real git (http-backend) everywhere."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import gitlab
import pytest
import requests

from bidsflux.diagnostics import UserError
from bidsflux.gitlab.imports import create_imported, push_local
from bidsflux.gitlab.objects import connect, desired, diff, observe
from bidsflux.gitlab.tokens import TokenStore, expiry_date, rotate_token
from bidsflux.site.yamlsource import load


def admin(emu):  # type: ignore[no-untyped-def]
    gl = gitlab.Gitlab(emu.url, private_token=emu.admin_token)
    gl.auth()
    return gl


def test_schedule_ref_must_exist_and_is_stored_expanded(gitlab_emulator, git_upstream) -> None:  # type: ignore[no-untyped-def]
    gl = admin(gitlab_emulator)
    group = gl.groups.create({"name": "g", "path": "g"})
    project = gl.projects.create({"name": "p", "namespace_id": group.id})
    with pytest.raises(gitlab.GitlabCreateError) as refused:  # empty repository: `main` names nothing
        project.pipelineschedules.create({"description": "h", "ref": "main", "cron": "0 * * * *"})
    assert refused.value.response_code == 400 and "is ambiguous" in str(refused.value)
    git_upstream.add_repo("p.git")
    push_local(str(git_upstream.root / "p.git"), project.http_url_to_repo, gitlab_emulator.admin_token)
    sched = project.pipelineschedules.create({"description": "h", "ref": "main", "cron": "0 * * * *"})
    assert project.pipelineschedules.get(sched.id).ref == "refs/heads/main"


def test_schedule_plan_compares_expanded_refs() -> None:
    from bidsflux.gitlab.objects import Observed

    want = desired({"projects": {"g/p": {}}, "schedules": {"h": {"project": "g/p", "cron": "0 * * * *"}}}, {})
    obs = Observed(projects={"g/p": {"id": 1}},
                   schedules={"h": {"cron": "0 * * * *", "ref": "refs/heads/main", "active": True, "variables": []}})
    assert diff(want, obs).empty


def test_import_probe_then_import_source_then_failure_reported(gitlab_emulator, git_upstream) -> None:  # type: ignore[no-untyped-def]
    gl = admin(gitlab_emulator)
    group = gl.groups.create({"name": "g", "path": "g"})
    data = {"name": "c", "path": "c", "namespace_id": group.id}
    with pytest.raises(UserError) as unreachable:  # 422 first: the URL is probed before anything else
        create_imported(gl, "g/c", data, f"{git_upstream.url}/missing.git")
    assert "cannot reach" in str(unreachable.value) and "local clone or `git bundle`" in str(unreachable.value)
    git_upstream.add_repo("c.git")
    with pytest.raises(UserError) as disabled:  # 16.0+ default: no import source -> bare 403
        create_imported(gl, "g/c", data, f"{git_upstream.url}/c.git")
    assert "import source" in str(disabled.value) and "scope" not in str(disabled.value)
    r = requests.put(f"{gitlab_emulator.url}/api/v4/application/settings", json={"import_sources": ["git"]},
                     headers={"PRIVATE-TOKEN": gitlab_emulator.create_token("root", ["read_api"])}, timeout=10)
    assert r.status_code == 403  # read_api cannot change settings
    gl.settings.update(new_data={"import_sources": ["git"]})
    project = create_imported(gl, "g/c", data, f"{git_upstream.url}/c.git")
    assert project.import_status == "finished"


def test_offline_site_pushes_a_bundle(gitlab_emulator, git_upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    head = git_upstream.add_repo("b.git", tag="v1")
    bundle = tmp_path / "b.bundle"
    subprocess.run(["git", "-C", str(git_upstream.root / "b.git"), "bundle", "create", str(bundle), "--all"],
                   check=True, capture_output=True)
    gl = admin(gitlab_emulator)
    group = gl.groups.create({"name": "g", "path": "g"})
    project = gl.projects.create({"name": "b", "namespace_id": group.id})
    push_local(str(bundle), project.http_url_to_repo, gitlab_emulator.admin_token)
    remote = gitlab_emulator.url.replace("http://", f"http://x:{gitlab_emulator.admin_token}@") + "/g/b.git"
    refs = subprocess.run(["git", "ls-remote", remote], check=True, capture_output=True, text=True).stdout
    assert f"{head}\trefs/heads/main" in refs and "refs/tags/v1" in refs


def test_rotating_own_token_switches_client_before_storing(gitlab_emulator, repo_copy: Path) -> None:  # type: ignore[no-untyped-def]
    """Fault 5: the ops bot rotates the token it is using; the CI variable write must use the new one."""
    gitlab_emulator.create_user("bidsflux_bot", admin=True)
    own = gitlab_emulator.create_token("bidsflux_bot", ["api"], name="bidsflux-automation")
    gdoc = load(repo_copy / "stack" / "gitlab.yml").data
    site = load(repo_copy / "stack" / "site.yml").data
    bot = next(u for u in desired(gdoc, site).users if u.key == "bidsflux_bot")
    gl = connect(gitlab_emulator.url, own)
    rotate_token(gl, bot, TokenStore(gl, "unused", None))
    stored = admin(gitlab_emulator).variables.get("BIDSFLUX_GITLAB_TOKEN")
    record = gitlab_emulator.token_record(stored.value)
    assert record is not None and record.active() and gitlab_emulator.token_record(own).revoked
    assert stored.protected is True


def test_token_expiry_counts_from_utc_date(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Fault 7: pick a zone whose date differs from UTC's right now; the date sent must be UTC's."""
    hour = dt.datetime.now(dt.UTC).hour
    monkeypatch.setenv("TZ", "Etc/GMT+12" if hour < 12 else "Etc/GMT-14")
    time.tzset()
    try:
        assert dt.date.today() != dt.datetime.now(dt.UTC).date()  # the zone really differs
        assert expiry_date(365) == (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=365)).isoformat()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_rotate_past_365_days_is_refused_with_gitlab_message(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    gl = admin(gitlab_emulator)
    gitlab_emulator.create_user("bot")
    tok = gitlab_emulator.token_record(gitlab_emulator.create_token("bot", ["api"]))
    too_far = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=366)).isoformat()
    with pytest.raises(gitlab.GitlabError) as refused:
        gl.personal_access_tokens.rotate(tok.id, expires_at=too_far)
    assert refused.value.response_code == 400 and "Expiration date must be before" in str(refused.value)


def test_token_warn_days_comes_from_health_token_warn_days(repo_copy: Path) -> None:
    """Fault 10: the schema's key (health.token_warn_days) is the one the plan reads."""
    site = load(repo_copy / "stack" / "site.yml").data
    site["health"]["token_warn_days"] = 400
    assert desired(load(repo_copy / "stack" / "gitlab.yml").data, site).token_warn_days == 400


def test_readiness_and_health_hidden_from_addresses_outside_allowlist(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    gitlab_emulator.published_source_ip = "172.18.0.1"  # what a host-mode published port looks like
    r = requests.get(f"{gitlab_emulator.url}/-/readiness?all=1", timeout=5)
    assert r.status_code == 404 and r.headers["Content-Type"].startswith("text/html")
    h = requests.get(f"{gitlab_emulator.url}/-/health", timeout=5)
    assert h.status_code == 404 and h.text == ""
    inside = requests.get(f"{gitlab_emulator.inside_url}/-/readiness?all=1", timeout=5)
    assert inside.status_code == 200 and inside.json()["status"] == "ok"


def test_runner_rules(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    gl = admin(gitlab_emulator)
    with pytest.raises(gitlab.GitlabCreateError) as untagged:
        gl.user.runners.create({"runner_type": "instance_type", "description": "x", "run_untagged": False})
    assert untagged.value.response_code == 400 and "Tags list can not be empty" in str(untagged.value)
    group = gl.groups.create({"name": "g", "path": "g"})
    gitlab_emulator.create_user("dev")
    dev = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.create_token("dev", ["api"]))
    dev.auth()
    with pytest.raises(gitlab.GitlabCreateError) as not_owner:
        dev.user.runners.create({"runner_type": "group_type", "group_id": group.id, "tag_list": ["t"]})
    assert not_owner.value.response_code == 403 and "Insufficient permissions" in str(not_owner.value)
    with pytest.raises(gitlab.GitlabCreateError) as missing:
        gl.user.runners.create({"runner_type": "group_type", "group_id": 999, "tag_list": ["t"]})
    assert "Missing/invalid group" in str(missing.value)
    gitlab_emulator.runner_token_expiration_interval = 86400
    created = gl.user.runners.create({"runner_type": "group_type", "group_id": group.id, "tag_list": ["t"],
                                      "access_level": "ref_protected", "locked": True})
    assert created.token_expires_at  # the create answer carries the expiry ...
    details = gl.runners.get(created.id)
    assert "token_expires_at" not in details.attributes  # ... GET /runners/:id never does
    assert details.access_level == "ref_protected" and details.runner_type == "group_type"


def test_masked_raw_variables_accept_any_8_non_space_characters(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    gl = admin(gitlab_emulator)
    gl.variables.create({"key": "RAW", "value": "hello$VARIABLEworld", "masked": True, "raw": True})
    gl.variables.create({"key": "RAW2", "value": "HelloWorld%#^", "masked": True, "raw": True})
    for key, value, raw in (("A", "hello$VARIABLEworld", False), ("B", "hello world", True), ("C", "short", True)):
        with pytest.raises(gitlab.GitlabCreateError) as bad:
            gl.variables.create({"key": key, "value": value, "masked": True, "raw": raw})
        assert bad.value.response_code == 400 and "is invalid" in str(bad.value)


def test_protected_variables_never_reach_merge_request_pipelines(gitlab_emulator, site_repo, swarm_client) -> None:  # type: ignore[no-untyped-def]
    """Fault 4: what the MR plan job uses is in an MR pipeline's variables; the write token is not."""
    from test_gitlab_apply import S3, commit_all

    from bidsflux.gitlab.dayzero import gitlab_day_zero
    from bidsflux.site.repository import open_repository

    root, stack = site_repo
    commit_all(root)
    gitlab_day_zero(open_repository(root=root), gitlab_emulator.url, gitlab_emulator.admin_token, stack=stack,
                    secret_values=S3, values_file=str(root / "state" / "secrets.env"), docker_client=swarm_client)
    mr = gitlab_emulator.pipeline_variables("ni-dataops/bidsflux", "refs/merge-requests/1/head")
    main = gitlab_emulator.pipeline_variables("ni-dataops/bidsflux", "refs/heads/main")
    assert "BIDSFLUX_GITLAB_READ_TOKEN" in mr and "BIDSFLUX_GITLAB_TOKEN" not in mr and "S3_SECRET" not in mr
    assert "BIDSFLUX_GITLAB_TOKEN" in main
    reader = gitlab_emulator.token_record(mr["BIDSFLUX_GITLAB_READ_TOKEN"])
    assert reader.scopes == ["read_api"] and not gitlab_emulator.state.users[reader.user_id]["is_admin"]
    # The MR plan with that token: reads what it may, notes what only administrators may read.
    gdoc, site = load(root / "stack" / "gitlab.yml").data, load(root / "stack" / "site.yml").data
    want = desired(gdoc, site)
    plan = diff(want, observe(connect(gitlab_emulator.url, mr["BIDSFLUX_GITLAB_READ_TOKEN"]), want))
    assert any("read-only token" in n for n in plan.notes)
    # As a Reporter of the ops group it sees the private projects as they are: nothing to create.
    assert not [c.line() for c in plan.changes if c.action == "create"], plan.lines()
    ci = (Path(root) / ".gitlab-ci.yml").read_text()
    assert "bidsflux gitlab plan --token-env BIDSFLUX_GITLAB_READ_TOKEN" in ci


def test_group_members_need_an_owner_and_are_added_once(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    gl = admin(gitlab_emulator)
    group = gl.groups.create({"name": "g", "path": "g"})
    bot = gitlab_emulator.create_user("bot")
    dev = gitlab_emulator.create_user("dev")
    other = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.create_token("dev", ["api"]))
    with pytest.raises(gitlab.GitlabCreateError) as not_owner:
        other.groups.get(group.id, lazy=True).members.create({"user_id": bot["id"], "access_level": 20})
    assert not_owner.value.response_code in (403, 404)
    group.members.create({"user_id": bot["id"], "access_level": 20})
    with pytest.raises(gitlab.GitlabCreateError) as again:
        group.members.create({"user_id": bot["id"], "access_level": 20})
    assert again.value.response_code == 409 and "Member already exists" in str(again.value)
    assert group.members.get(bot["id"]).access_level == 20
    with pytest.raises(gitlab.GitlabGetError):
        group.members.get(dev["id"])
