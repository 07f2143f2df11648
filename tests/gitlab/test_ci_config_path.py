"""The containers project builds the dicom_indexer image through our template: gitlab.yml's
`ci_config_path` (GitLab project attribute; FILE@GROUP/PROJECT names a file of another project),
planned and applied by `bidsflux gitlab plan|apply`, and GitLab's validation of it (emulator,
app/models/project.rb)."""

from __future__ import annotations

import json
from pathlib import Path

import gitlab
import pytest
from test_gitlab_apply import S3, commit_all, env_for

from support import REPO_ROOT, cli, edit_text, validate_problems

WANTED = "ci-templates/dicom-indexer-image.yml@ni-dataops/bidsflux"


def test_shipped_gitlab_yml_points_containers_at_a_template_of_this_repository() -> None:
    import yaml

    doc = yaml.safe_load((REPO_ROOT / "stack" / "gitlab.yml").read_text())
    path = doc["projects"]["ni-dataops/containers"]["ci_config_path"]
    file, _, project = path.partition("@")
    # FILE@GROUP/PROJECT: the file must exist in the project marked self (this repository, pushed there).
    assert project == next(p for p, v in doc["projects"].items() if v.get("self"))
    assert (REPO_ROOT / file).is_file()
    # The template's nested include names the same project.
    template = yaml.safe_load((REPO_ROOT / file).read_text())
    assert {"project": project, "file": "ci-templates/docker-build.yml"} in template["include"]


@pytest.mark.parametrize("bad", ["/ci.yml", "ci/../../x.yml"])
def test_validate_refuses_leading_slash_and_traversal(repo_copy: Path, bad: str) -> None:
    edit_text(repo_copy, "stack/gitlab.yml", f"ci_config_path: {WANTED}", f"ci_config_path: {bad}")
    problems = validate_problems(repo_copy)
    assert any(p["file"].endswith("gitlab.yml") and "ci_config_path" in p["message"] + json.dumps(p) for p in problems), problems


def test_validate_refuses_a_template_this_repository_lacks(repo_copy: Path) -> None:
    edit_text(repo_copy, "stack/gitlab.yml", f"ci_config_path: {WANTED}",
              "ci_config_path: ci-templates/nothing.yml@ni-dataops/bidsflux")
    problems = [p for p in validate_problems(repo_copy) if "nothing.yml" in json.dumps(p)]
    assert len(problems) == 1 and problems[0]["file"].endswith("gitlab.yml") and problems[0]["line"] > 1, problems
    assert "is not a file of this repository (pushed to ni-dataops/bidsflux)" in json.dumps(problems[0])


@pytest.mark.integration
def test_emulator_refuses_what_gitlab_refuses(gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    group = gl.groups.create({"name": "g", "path": "g"})
    project = gl.projects.create({"name": "p", "path": "p", "namespace_id": group.id})
    for bad in ("/ci.yml", "a/../b.yml@g/q", "x" * 256):
        with pytest.raises(gitlab.GitlabUpdateError) as err:
            gl.projects.update(project.id, {"ci_config_path": bad})
        assert err.value.response_code == 400 and "ci_config_path" in str(err.value.error_message)
    gl.projects.update(project.id, {"ci_config_path": WANTED})
    assert gl.projects.get(project.id).ci_config_path == WANTED


@pytest.mark.integration
def test_plan_shows_and_apply_sets_ci_config_path(gitlab_emulator, site_repo, swarm_client) -> None:  # type: ignore[no-untyped-def]
    from bidsflux.gitlab.dayzero import gitlab_day_zero
    from bidsflux.site.repository import open_repository

    root, stack = site_repo
    env = env_for(gitlab_emulator)
    commit_all(root)
    gitlab_day_zero(open_repository(root=root), gitlab_emulator.url, gitlab_emulator.admin_token, stack=stack,
                    secret_values=S3, values_file=str(root / "state" / "secrets.env"), docker_client=swarm_client)
    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    assert gl.projects.get("ni-dataops/containers").ci_config_path == WANTED
    # Someone changes it in GitLab's settings: plan shows the drift, apply puts it back.
    gl.projects.update("ni-dataops/containers", {"ci_config_path": ".gitlab-ci.yml"})
    plan = cli("gitlab", "plan", "--root", str(root), env=env)
    assert plan.exit_code == 2, plan.output
    assert "ci_config_path" in plan.output and WANTED in plan.output
    again = cli("gitlab", "apply", "--root", str(root), "--yes", env=env)
    assert again.exit_code == 0, again.output
    assert gl.projects.get("ni-dataops/containers").ci_config_path == WANTED
    assert cli("gitlab", "plan", "--root", str(root), env=env).exit_code == 0
