"""`bidsflux validate`: the cross-file rules no schema can express, output formats, and that
no input whatsoever produces a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import REPO_ROOT, cli, edit_text, validate_problems

edit, problems = edit_text, validate_problems


def test_default_site_is_valid() -> None:
    result = cli("validate", "--root", str(REPO_ROOT))
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_public_subnet_is_rejected_with_the_reason(repo_copy: Path) -> None:
    edit(repo_copy, "stack/site.yml", "subnet: 10.87.0.0/16", "subnet: 192.11.0.0/16")
    found = problems(repo_copy)
    assert [(p["file"], p["key"]) for p in found] == [("stack/site.yml", "swarm.network.subnet")]
    assert "192.11.0.0/16 is not a private range" in found[0]["message"]
    assert found[0]["line"] == next(
        i + 1 for i, ln in enumerate((repo_copy / "stack/site.yml").read_text().splitlines()) if "192.11.0.0/16" in ln
    )


def test_undefined_module_is_rejected(repo_copy: Path) -> None:
    edit(repo_copy, "stack/mercure/rules.yml", "processing_module: dicom_indexer", "processing_module: dicom_indxer")
    found = problems(repo_copy)
    assert [(p["file"], p["key"]) for p in found] == [("stack/mercure/rules.yml", "rules.mr_completed_study.processing_module")]
    assert "undefined module 'dicom_indxer'" in found[0]["message"]


def test_port_collision_is_rejected(repo_copy: Path) -> None:
    edit(repo_copy, "stack/site.yml", "  mercure_web: 8000", "  mercure_web: 9000")
    found = problems(repo_copy)
    assert [(p["key"], p["message"]) for p in found] == [("ports.s3_api", "port 9000 is already used by ports.mercure_web")] or [
        (p["key"], p["message"]) for p in found
    ] == [("ports.mercure_web", "port 9000 is already used by ports.s3_api")]


def test_ci_job_tag_no_runner_offers(repo_copy: Path) -> None:
    edit(repo_copy, "ci-templates/bidsflux-ops.yml", "  tags: [dind, swarm-manager]", "  tags: [dind, gpu]")
    found = problems(repo_copy)
    assert [(p["file"], p["key"]) for p in found] == [("ci-templates/bidsflux-ops.yml", ".bidsflux-ops.tags")]
    assert "no runner in stack/runners.yml offers all of dind, gpu" in found[0]["message"]


def test_gitlab_ci_schema_is_enforced(repo_copy: Path) -> None:
    edit(repo_copy, ".gitlab-ci.yml", "  stage: validate", "  stage: validate\n  when: sometimes")
    found = problems(repo_copy)
    assert any(p["file"] == ".gitlab-ci.yml" and p["key"].startswith("validate") for p in found), found


def test_indexer_placeholder_must_be_dicom_metadata(repo_copy: Path) -> None:
    edit(repo_copy, "stack/site.yml", '"{ReferringPhysicianName}/{StudyDescriptionPath[1]}"', '"{ReferringPhysicianName}/{Scanner}"')
    found = problems(repo_copy)
    assert [p["key"] for p in found] == ["indexer.gitlab_group_template"]
    assert "{Scanner}" in found[0]["message"]


def test_s3_remote_on_console_port_is_rejected(repo_copy: Path) -> None:
    edit(repo_copy, "stack/site.yml", "s3://s3.localhost/", "s3://s3-console.localhost/")
    found = problems(repo_copy)
    assert [p["key"] for p in found] == ["indexer.storage_remote"]
    assert "console" in found[0]["message"]


def test_role_naming_unknown_service_and_unplaced_service(repo_copy: Path) -> None:
    edit(repo_copy, "stack/site.yml", "  processing: [gitlab-runner]", "  processing: [gitlab-runners]")
    found = {(p["file"], p["key"]): p["message"] for p in problems(repo_copy)}
    assert "no service 'gitlab-runners'" in found[("stack/site.yml", "roles.processing[0]")]
    assert "on no node role" in found[("stack/bidsflux.stack.yml", "services.gitlab-runner")]


def test_placement_label_no_role_provides(repo_copy: Path) -> None:
    edit(repo_copy, "stack/bidsflux.stack.yml", "      resources:\n        limits: {memory: 8g}",
         "      placement: {constraints: ['node.labels.bidsflux.role.gpu == true']}\n      resources:\n        limits: {memory: 8g}")
    found = problems(repo_copy)
    assert [p["key"] for p in found] == ["services.gitlab.deploy.placement.constraints[0]"]
    assert "bidsflux.role.gpu is provided by no node role" in found[0]["message"]


def test_unsafe_rule_expression_is_rejected(repo_copy: Path) -> None:
    edit(repo_copy, "stack/mercure/rules.yml", "rule: \"tags.Modality == 'MR'\"", "rule: \"__import__('os').system('id')\"")
    found = problems(repo_copy)
    assert [p["key"] for p in found] == ["rules.mr_completed_study.rule"]
    assert "__import__" in found[0]["message"]


def test_rendered_stack_checked_against_compose_spec(repo_copy: Path) -> None:
    edit(repo_copy, "stack/bidsflux.stack.yml", "    networks: [bidsflux]\n    healthcheck:\n      test: [\"CMD\", \"/opt/gitlab",
         "    networks: [bidsflux]\n    stop_signal: [SIGTERM]\n    healthcheck:\n      test: [\"CMD\", \"/opt/gitlab")
    found = problems(repo_copy)
    assert any(p["message"].startswith("rendered stack:") and p["key"].startswith("services.gitlab") for p in found), found


def test_every_problem_is_reported_at_once(repo_copy: Path) -> None:
    edit(repo_copy, "stack/site.yml", "subnet: 10.87.0.0/16", "subnet: 192.11.0.0/16")
    edit(repo_copy, "stack/site.yml", "  mercure_web: 8000", "  mercure_web: 9000")
    edit(repo_copy, "stack/mercure/rules.yml", "processing_module: dicom_indexer", "processing_module: nope")
    result = cli("validate", "--root", str(repo_copy))
    assert result.exit_code == 1
    assert len([ln for ln in result.output.splitlines() if ln.startswith("stack/")]) == 3


def test_missing_site_file_is_a_clear_error(tmp_path: Path) -> None:
    result = cli("validate", "--site", str(tmp_path / "nope.yml"), "--root", str(REPO_ROOT))
    assert result.exit_code == 1
    assert "nope.yml:0:0: file not found" in result.output


def test_not_a_repository_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("validate")
    assert result.exit_code == 1
    assert "no bidsflux repository here" in result.output


# --- nothing a user can write produces a traceback ---------------------------------------

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=30), st.sampled_from(["10.0.0.0/8", "192.11.0.0/16", "{PatientID}", "{{ x }}", "{", "/", ":latest"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=20,
)
DEFAULT_SITE = yaml.safe_load((REPO_ROOT / "stack/site.yml").read_text())


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


SITE_PATHS = _paths(DEFAULT_SITE)[1:]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_arbitrary_text_never_raises(repo_copy: Path, text: str) -> None:
    (repo_copy / "stack/site.yml").write_text(text)
    assert cli("validate", "--root", str(repo_copy)).exit_code == 1


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(SITE_PATHS), value=yaml_values, delete=st.booleans())
def test_mutated_site_never_raises(repo_copy: Path, path: tuple, value: object, delete: bool) -> None:
    site = json.loads(json.dumps(DEFAULT_SITE))
    parent = site
    for part in path[:-1]:
        parent = parent[part]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    (repo_copy / "stack/site.yml").write_text(yaml.safe_dump(site))
    result = cli("validate", "--root", str(repo_copy))
    assert result.exit_code in (0, 1)
    for command in (("render", "--secret-versions", "initial"),):
        assert cli(*command, "--root", str(repo_copy)).exit_code in (0, 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rel=st.sampled_from(["stack/runners.yml", "stack/gitlab.yml", "stack/mercure/rules.yml", "stack/bidsflux.stack.yml", ".gitlab-ci.yml"]),
       value=yaml_values)
def test_random_other_files_never_raise(repo_copy: Path, rel: str, value: object) -> None:
    (repo_copy / rel).write_text(yaml.safe_dump(value))
    assert cli("validate", "--root", str(repo_copy)).exit_code in (0, 1)
