"""The pipeline definition: valid against GitLab's CI schema, and the job graph of each event
as gitlab-ci-local (the real rules engine, not a re-implementation) computes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from gcl import PipelineRepo

from bidsflux.site import schemas
from bidsflux.site.yamlsource import load
from support import REPO_ROOT

MR = "CI_PIPELINE_SOURCE=merge_request_event"
PUSH = "CI_PIPELINE_SOURCE=push"
SCHEDULE = "CI_PIPELINE_SOURCE=schedule"
MANUAL_OPS = ["rotate-secrets", "rotate-tokens", "reregister-runners"]

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("path", [REPO_ROOT / ".gitlab-ci.yml", *sorted((REPO_ROOT / "ci-templates").glob("*.yml"))], ids=lambda p: p.name)
def test_ci_files_match_gitlab_ci_schema(path: Path) -> None:
    doc = load(path, REPO_ROOT)
    assert schemas.check_vendor(doc, "gitlab-ci") == []


def test_templates_are_documented_at_the_top() -> None:
    for path in (REPO_ROOT / "ci-templates").glob("*.yml"):
        head = path.read_text().splitlines()[:3]
        assert all(line.startswith("#") for line in head), f"{path.name} must start with a comment explaining its use"


@pytest.fixture
def repo(tmp_path: Path) -> PipelineRepo:
    return PipelineRepo(tmp_path / "site")


def test_merge_request_runs_only_validate_and_plan(repo: PipelineRepo) -> None:
    assert repo.jobs(MR) == ["build-ops-image", "validate", "plan"]


def test_default_branch_push_deploys_and_skips_unchanged_runners_and_mercure(repo: PipelineRepo) -> None:
    repo.commit_change("stack/site.yml")
    assert repo.jobs(PUSH) == ["build-ops-image", "validate", "deploy", "gitlab-apply", "verify", *MANUAL_OPS]
    assert all(repo.when(job, PUSH) == "manual" for job in MANUAL_OPS)


def test_runner_registration_only_when_runners_changed(repo: PipelineRepo) -> None:
    repo.commit_change("stack/runners.yml")
    jobs = repo.jobs(PUSH)
    assert "runners-register" in jobs and "mercure-push" not in jobs


def test_mercure_push_only_when_rules_changed(repo: PipelineRepo) -> None:
    repo.commit_change("stack/mercure/rules.yml")
    jobs = repo.jobs(PUSH)
    assert "mercure-push" in jobs and "runners-register" not in jobs


@pytest.mark.parametrize("task,expected", [("health", ["health"]), ("drift", ["drift"]), ("backup", ["backup"]), ("", [])])
def test_schedule_runs_only_its_task(repo: PipelineRepo, task: str, expected: list[str]) -> None:
    assert repo.jobs(SCHEDULE, f"BIDSFLUX_TASK={task}") == expected


def test_feature_branch_push_runs_nothing(repo: PipelineRepo) -> None:
    assert repo.jobs(PUSH, "CI_COMMIT_BRANCH=feature") == []


def test_deploy_jobs_are_serialised() -> None:
    import yaml

    ci = yaml.safe_load((REPO_ROOT / ".gitlab-ci.yml").read_text())
    for job in ["deploy", "gitlab-apply", "runners-register", "mercure-push", *MANUAL_OPS]:
        assert ci[job]["resource_group"] == "production", job
        assert ci[job]["script"][0] == "bidsflux ci require-default-branch", job
    assert ci["deploy"]["environment"]["name"] == "production"
