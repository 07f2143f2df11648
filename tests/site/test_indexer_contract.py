"""`validate` refuses site.yml values that would break the upstream dicom_indexer contract, and the
Mercure module gets upstream's command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import cli

SEED_GROUP = '"{ReferringPhysicianName}/{StudyDescriptionPath[1]}"'
SEED_REMOTE = '"s3://s3.localhost/dicoms/{ReferringPhysicianName}/{StudyDescriptionPath[1]}"'


def problems(repo: Path, old: str, new: str) -> list[dict]:
    path = repo / "stack/site.yml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    result = cli("validate", "--root", str(repo), "--format", "json")
    return json.loads(result.output)


@pytest.mark.parametrize(("old", "new", "words"), [
    (SEED_GROUP, '"{ReferringPhysicianName}/{StudyDescriptionPath}"', "is a list"),
    (SEED_GROUP, '"{ReferringPhysicianName} data/x"', "unquoted ($@)"),
    (SEED_REMOTE, '"s3://s3.localhost:9000/dicoms/{PatientID}"', "port 9000 is ignored"),
    (SEED_REMOTE, '"s3://s3.localhost"', "needs a bucket"),
])
def test_contract_breaking_values_are_refused(repo_copy: Path, old: str, new: str, words: str) -> None:
    found = problems(repo_copy, old, new)
    assert [p["key"].split(".")[0] for p in found] == ["indexer"], found
    assert words in found[0]["message"], found
    assert found[0]["line"] > 0


def test_seed_site_is_valid_and_mercure_module_runs_upstreams_indexer(repo_copy: Path) -> None:
    assert problems(repo_copy, "session_name_tag: PatientName", "session_name_tag: PatientName") == []
    result = cli("mercure", "render", "--root", str(repo_copy))
    module = json.loads(result.output)["modules"]["dicom_indexer"]
    command = json.loads(module["docker_arguments"])["command"]
    assert command[:4] == ["python3", "/indexer/index_dicom.py", "--gitlab-url", "https://gitlab.localhost"]
    assert not any(c.isspace() for word in command for c in word)
    assert module["requires_root"] is True and json.loads(result.output)["support_root_modules"] is True
