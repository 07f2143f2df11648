"""Each schema is a valid 2020-12 schema, documents every property, accepts its own examples and
the repository's files, and wrong files are rejected with the exact file, line and key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from bidsflux.site import schemas
from bidsflux.site.yamlsource import load
from support import REPO_ROOT, cli

SCHEMA_FILES = sorted((REPO_ROOT / "schemas").glob("*.schema.json"))


def _walk(node: Any, pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield pointer, node
        for key, value in node.items():
            if key in ("examples", "const", "enum", "default"):
                continue
            yield from _walk(value, f"{pointer}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{pointer}/{i}")


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_schema_is_valid_and_documented(path: Path) -> None:
    schema = json.loads(path.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    undocumented = []
    for pointer, node in _walk(schema):
        if pointer.endswith("/properties"):
            for name, sub in node.items():
                if "description" not in sub:
                    undocumented.append(f"{pointer}/{name}")
    assert not undocumented, f"properties without description: {undocumented}"


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_schema_accepts_its_examples(path: Path) -> None:
    schema = json.loads(path.read_text())
    registry = Registry().with_resource(schema["$id"], Resource.from_contents(schema))
    checked = 0
    for pointer, node in _walk(schema):
        for example in node.get("examples", []):
            validator = Draft202012Validator({"$ref": f"{schema['$id']}#{pointer}"}, registry=registry)
            errors = [e.message for e in validator.iter_errors(example)]
            assert not errors, f"{path.name}#{pointer} rejects its example {example!r}: {errors}"
            checked += 1
    assert checked >= 4, "a schema should carry examples for its properties"


@pytest.mark.parametrize("rel", sorted(schemas.STACK_SCHEMAS), ids=str)
def test_repository_files_match_their_schema(rel: str) -> None:
    doc = load(REPO_ROOT / rel, REPO_ROOT)
    assert schemas.check_document(doc, REPO_ROOT / "schemas" / schemas.STACK_SCHEMAS[rel]) == []
    first = (REPO_ROOT / rel).read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=") and first.endswith(schemas.STACK_SCHEMAS[rel])


# (file, text to replace, replacement, expected key path, text at the expected line and column,
#  words in the message). The position is looked up in the broken file, so edits elsewhere in
#  the default files do not break these tests, but a wrong line or column does.
WRONG_FILES = [
    ("stack/site.yml", "  data_path_port: 9789", "  data_path_port: 70000", "swarm.data_path_port", "data_path_port: 70000", "65535"),
    ("stack/site.yml", "  kind: mercure", "  kind: orthanc", "dicom_endpoint.kind", "kind: orthanc", "not one of mercure, storescp"),
    ("stack/site.yml", "  gitlab: gitlab.localhost", "  gitlab: gitlab..localhost", "hosts.gitlab", "gitlab: gitlab..localhost", "not a valid value"),
    ("stack/site.yml", "    subnet: 10.87.0.0/16", "    subnet: 10.87.0.0/33", "swarm.network.subnet", "subnet: 10.87.0.0/33", "not a valid value"),
    ("stack/site.yml", "  http: 80\n", "  http: 80\n  htps: 8443\n", "ports.htps", "htps: 8443", "unknown key"),
    ("stack/site.yml", "  dicom_bot: dicom_bot\n", "", "bots", "bots:", "missing required key 'dicom_bot'"),
    ("stack/site.yml", "    path: /srv/bidsflux/gitlab\n", "    path: srv/bidsflux/gitlab\n", "paths.gitlab_home.path", "path: srv/bidsflux/gitlab", "Absolute path"),
    ("stack/site.yml", "  data: [proxy, gitlab,", "  data: [proxy, gitlab, gitlab,", "roles.data", "data: [proxy, gitlab, gitlab,", "non-unique"),
    ("stack/runners.yml", "    tags: [dind, swarm-manager]", "    tags: dind", "runners.deploy.tags", "tags: dind", "should be of type array"),
    ("stack/mercure/rules.yml", "    action: process", "    action: forward", "rules.mr_completed_study.action", "action: forward", "not one of"),
    ("stack/gitlab.yml", "  S3_ID: {secret: s3_id, masked: true, protected: true, raw: true}",
     "  S3_ID: {secret: s3_id, masked: true, protected: true}", "variables.S3_ID", "S3_ID:", "missing required key 'raw'"),
    ("stack/bidsflux.stack.yml", "  failure_action: rollback\n", "  failure_action: continue\n",
     "services.gitlab.deploy.update_config.failure_action", "failure_action: continue", "'rollback' was expected"),
]


@pytest.mark.parametrize("rel,old,new,key,anchor,words", WRONG_FILES, ids=[f"{w[0]}:{w[3]}" for w in WRONG_FILES])
def test_wrong_file_is_reported_with_file_line_and_key(
    repo_copy: Path, rel: str, old: str, new: str, key: str, anchor: str, words: str
) -> None:
    target = repo_copy / rel
    text = target.read_text()
    assert old in text, f"fixture out of date: {old!r} not in {rel}"
    broken = text.replace(old, new, 1)
    target.write_text(broken)
    line_no, line = next((i + 1, ln) for i, ln in enumerate(broken.splitlines()) if anchor in ln)
    where = f"{rel}:{line_no}:{line.index(anchor) + 1}: {key}:"
    result = cli("validate", "--root", str(repo_copy))
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.startswith(where)]
    assert lines, f"expected a line starting with {where!r} in:\n{result.output}"
    assert any(words in ln for ln in lines), result.output


def test_yaml_syntax_error_names_line_and_column(repo_copy: Path) -> None:
    site = repo_copy / "stack/site.yml"
    site.write_text(site.read_text().replace("  http: 80", "  http: [80", 1))
    result = cli("validate", "--root", str(repo_copy))
    assert result.exit_code == 1
    assert "stack/site.yml:" in result.output and "YAML syntax" in result.output


def test_duplicate_key_is_an_error(repo_copy: Path) -> None:
    site = repo_copy / "stack/site.yml"
    site.write_text(site.read_text().replace("  http: 80\n", "  http: 80\n  http: 8080\n", 1))
    result = cli("validate", "--root", str(repo_copy))
    assert result.exit_code == 1
    assert "stack/site.yml:" in result.output and "http" in result.output
