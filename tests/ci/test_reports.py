"""Plan notes and health/drift issues, through python-gitlab against the GitLab emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gitlab
import pytest

from bidsflux.ci.reports import PLAN_MARKER, Problem, sync_issues, upsert_plan_note
from support import cli


@pytest.fixture
def project(gitlab_emulator: Any) -> Any:
    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    group = gl.groups.create({"name": "ni-dataops", "path": "ni-dataops"})
    proj = gl.projects.create({"name": "bidsflux", "path": "bidsflux", "namespace_id": group.id})
    return proj


def _ci_env(gitlab_emulator: Any, project: Any, **extra: str) -> dict[str, str]:
    return {"CI_SERVER_URL": gitlab_emulator.url, "BIDSFLUX_GITLAB_TOKEN": gitlab_emulator.admin_token,
            "CI_PROJECT_ID": str(project.id), **extra}


def test_plan_note_is_created_once_then_updated_in_place(gitlab_emulator: Any, project: Any, tmp_path: Path) -> None:
    mr = project.mergerequests.create({"source_branch": "change", "target_branch": "main", "title": "change"})
    plan = tmp_path / "plan-swarm.json"
    plan.write_text(json.dumps({"stack": "s", "changes": [{"kind": "service", "action": "update", "name": "s_minio", "fields": {"image": {}}}]}))
    env = _ci_env(gitlab_emulator, project, CI_MERGE_REQUEST_IID=str(mr.iid))
    first = cli("ci", "plan-note", str(plan), env=env)
    assert first.exit_code == 0, first.output
    assert "created" in first.output
    plan.write_text(json.dumps({"stack": "s", "changes": []}))
    second = cli("ci", "plan-note", str(plan), env=env)
    assert "updated" in second.output
    notes = [n for n in mr.notes.list(get_all=True) if PLAN_MARKER in n.body]
    assert len(notes) == 1
    assert "**swarm**: no changes" in notes[0].body
    mark = gitlab_emulator.mark()
    assert upsert_plan_note(project, mr.iid, notes[0].body) == "unchanged"
    assert gitlab_emulator.writes(mark) == []


def test_health_issue_opens_once_updates_and_closes_on_recovery(gitlab_emulator: Any, project: Any) -> None:
    failing = [Problem("s3", "Health check failing: s3", "S3 canary round trip failed")]
    assert sync_issues(project, "health", failing, ["s3", "swarm"])["opened"] == ["s3"]
    mark = gitlab_emulator.mark()
    assert sync_issues(project, "health", failing, ["s3", "swarm"])["unchanged"] == ["s3"]
    assert gitlab_emulator.writes(mark) == [], "the same failure must not rewrite the issue"
    worse = [Problem("s3", "Health check failing: s3", "S3 answers with HTML")]
    assert sync_issues(project, "health", worse, ["s3", "swarm"])["updated"] == ["s3"]
    opened = project.issues.list(labels=["bidsflux-health"], state="opened", get_all=True)
    assert len(opened) == 1 and "HTML" in opened[0].description
    assert sync_issues(project, "health", [], ["s3", "swarm"])["closed"] == ["s3"]
    assert project.issues.list(labels=["bidsflux-health"], state="opened", get_all=True) == []


def test_issues_command_from_health_report(gitlab_emulator: Any, project: Any, tmp_path: Path) -> None:
    report = tmp_path / "health.json"
    report.write_text(json.dumps({"status": "fail", "checks": [
        {"name": "swarm", "status": "fail", "reason": "minio 0/1", "fix": "look at the task error", "details": []},
        {"name": "disks", "status": "ok", "reason": "fine", "fix": "", "details": []},
    ]}))
    result = cli("ci", "issues", "--kind", "health", str(report), env=_ci_env(gitlab_emulator, project))
    assert result.exit_code == 0, result.output
    assert "opened: swarm" in result.output
    issues = project.issues.list(labels=["bidsflux-health"], state="opened", get_all=True)
    assert [i.title for i in issues] == ["Health check failing: swarm"]
    assert gitlab_emulator.admin_token not in result.output


def test_drift_opens_issue_listing_changes(gitlab_emulator: Any, project: Any, tmp_path: Path) -> None:
    plan = tmp_path / "drift.json"
    plan.write_text(json.dumps({"stack": "s", "changes": [{"kind": "service", "action": "update", "name": "s_gitlab", "fields": {"replicas": {}}}]}))
    result = cli("ci", "issues", "--kind", "drift", str(plan), env=_ci_env(gitlab_emulator, project))
    assert "opened: swarm" in result.output
    (issue,) = project.issues.list(labels=["bidsflux-drift"], state="opened", get_all=True)
    assert "~ service s_gitlab (replicas)" in issue.description


def test_missing_ci_environment_is_a_clear_error(tmp_path: Path) -> None:
    report = tmp_path / "h.json"
    report.write_text("{}")
    result = cli("ci", "issues", "--kind", "health", str(report), env={"CI_PROJECT_ID": "", "CI_SERVER_URL": ""})
    assert result.exit_code == 1 and "CI_PROJECT_ID is not set" in result.output


def test_deploy_guard_refuses_other_branches() -> None:
    assert cli("ci", "require-default-branch", env={"CI_COMMIT_BRANCH": "feature", "CI_DEFAULT_BRANCH": "main"}).exit_code == 1
    assert cli("ci", "require-default-branch", env={"CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main"}).exit_code == 0
