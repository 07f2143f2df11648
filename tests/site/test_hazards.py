"""Input that parses but would do harm is refused with file:line: YAML that costs too much,
YAML-typed values and keys, trailing newlines, unsafe rule expressions and templates, bad S3 URLs,
credentials in plain text, system folders and the secrets file in the wrong place."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from bidsflux.diagnostics import UserError
from bidsflux.mercure.rules import check_rule_expression
from bidsflux.site import hazards
from bidsflux.site.credentials import credential_problem
from bidsflux.site.schemas import check_schema_files, ecma_regex
from bidsflux.site.yamlsource import loads
from support import cli


def problems(repo: Path) -> list[dict]:
    result = cli("validate", "--root", str(repo), "--format", "json")
    found = json.loads(result.stdout)
    assert result.exit_code == (1 if found else 0)
    return found


def set_site(repo: Path, change: object) -> None:
    path = repo / "stack/site.yml"
    first = path.read_text().splitlines()[0]
    data = yaml.safe_load(path.read_text())
    change(data)  # type: ignore[operator]
    path.write_text(first + "\n" + yaml.safe_dump(data, sort_keys=False))


def refused(text: str) -> list[str]:
    try:
        loads(text, Path("f.yml"), "f.yml")
    except UserError as exc:
        return [str(d) for d in exc.diagnostics]
    return []


# ---- the loader ---------------------------------------------------------------------------------

def test_alias_bomb_is_refused_at_the_alias_before_expanding() -> None:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    start = time.process_time()
    found = refused("\n".join(lines))
    assert time.process_time() - start < 1
    assert len(found) == 1 and found[0].startswith("f.yml:5:") and "once aliases are expanded" in found[0], found


@pytest.mark.parametrize("text", ["x: " + "[" * 100_000 + "]" * 100_000, "x: " + "{a: " * 5000 + "1" + "}" * 5000,
                                  "x:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(80)) + "  " * 81 + "v: 1\n"])
def test_deep_nesting_is_refused_quickly(text: str) -> None:
    start = time.process_time()
    found = refused(text)
    assert time.process_time() - start < 1
    assert len(found) == 1 and "nested more than 50 levels deep" in found[0] and found[0].startswith("f.yml:")


def test_recursive_alias_and_huge_document_are_refused() -> None:
    assert "refers to a value that contains it" in refused("a: &x [*x]")[0]
    assert refused("x: " + "a" * 300_000)[0].startswith("f.yml:1:1: document is")


def test_yaml_typed_values_and_keys_are_refused_with_the_type_found() -> None:
    found = refused("a: 2024-01-01\nb:\n  1: x\n  c: !!binary aGVsbG8=\n  d: !custom x\n  e: !!set {a}\n  ? [a, b]\n  : 1\n")
    assert found == [
        "f.yml:1:1: a: is a date, which no setting takes; quote it if you mean text",
        "f.yml:3:3: b[1]: the key 1 is an integer; keys must be text (quote it: '1')",
        "f.yml:4:3: b.c: is binary data (!!binary), which no setting takes; quote it if you mean text",
        "f.yml:5:3: b.d: the tag !custom is not supported here; write a plain value",
        "f.yml:6:3: b.e: is a set (!!set); write a list",
        "f.yml:7:5: b.('a', 'b'): the key [a, b] is a list; keys must be text (quote it: '[a, b]')",
    ]


def test_an_anchored_boolean_stays_a_boolean() -> None:
    assert loads("a: &t true\nb: *t\n", Path("f.yml"), "f.yml").data == {"a": True, "b": True}


def test_integer_key_and_date_value_never_crash_mercure_render(repo_copy: Path) -> None:
    rules = repo_copy / "stack/mercure/rules.yml"
    rules.write_text(rules.read_text().replace("      LOG_LEVEL: INFO", "      1: INFO\n      WHEN: 2024-01-01"))
    result = cli("mercure", "render", "--root", str(repo_copy))
    assert result.exit_code == 1
    assert "stack/mercure/rules.yml:19:7: modules.dicom_indexer.environment[1]: the key 1 is an integer" in result.output
    assert "stack/mercure/rules.yml:20:7: modules.dicom_indexer.environment.WHEN: is a date" in result.output


def test_string_field_names_the_type_found(repo_copy: Path) -> None:
    set_site(repo_copy, lambda d: d["site"].update(name=5))
    assert [p["message"] for p in problems(repo_copy)] == ["5 should be of type string, found integer"]


# ---- patterns match the whole value -------------------------------------------------------------

@pytest.mark.parametrize("key, value", [(("site", "name"), "bidsflux\n"), (("images", "gitlab"), "x:latest\n"),
                                        (("paths", "state_dir", "path"), "/var/lib/bidsflux\n"),
                                        (("site", "admin_email"), "a@b\x00")])
def test_trailing_newline_or_control_character_is_refused(repo_copy: Path, key: tuple[str, ...], value: str) -> None:
    def change(d: dict) -> None:
        node = d
        for part in key[:-1]:
            node = node[part]
        node[key[-1]] = value

    set_site(repo_copy, change)
    found = problems(repo_copy)
    assert [p["key"] for p in found] == [".".join(key)] and found[0]["line"] >= 1


def test_dollar_means_end_of_text_and_python_only_anchors_are_refused(tmp_path: Path) -> None:
    assert ecma_regex("^[a-z]+$").search("abc") and not ecma_regex("^[a-z]+$").search("abc\n")
    assert ecma_regex("^[$]+$").search("$$")
    (tmp_path / "x.schema.json").write_text(json.dumps({"type": "string", "pattern": "^[a-z]+\\Z"}))
    [found] = check_schema_files(tmp_path)
    assert "Python-only syntax" in found.message


# ---- rule expressions, templates, URLs ----------------------------------------------------------

@pytest.mark.parametrize("expr, reason", [
    ("tags" + ".a" * 100000, "characters long"), ("tags" + ".a" * 500, "nested more than"),
    ("(" * 1000 + "tags" + ")" * 1000, "characters long"), ("'{0.__init__.__globals__}'.format(tags)", ".format()"),
    ("'{.x}'.format_map(tags)", ".format_map()"), ("'a' * 99999999999", "repeats a value"),
    ("'a' * 10**10", "Pow"), ("tags.a * int(tags.b)", "multiplies two computed values"),
    ("tags.a.ljust(99999)", "calls .ljust()"), ("'%s' % tags.a", "formats text with '%'"),
])
def test_unsafe_rule_expressions_are_refused(expr: str, reason: str) -> None:
    problem = check_rule_expression(expr)
    assert problem is not None and reason in problem


def test_ordinary_rule_expressions_pass() -> None:
    for expr in ("tags.Modality == 'MR'", "'T1' in tags.SeriesDescription.lower() and int(tags.SeriesNumber) > 3",
                 "tags.x * 3 == 'aaa'"):
        assert check_rule_expression(expr) is None


@pytest.mark.parametrize("image, message", [
    ("{{ 1/0 }}", "ZeroDivisionError"), ("{{ 'a' * 10**10 }}", "repeating a value"),
    ("{{ 'x' | center(10**10) }}", "beyond 100000"), ("{{ 'x' | truncate(-1) }}", "AssertionError"),
    ("{{ '%099999999d' % 1 }}", "format width"), ("{{ 10**(10**10) }}", "too large a number"),
    ("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}", "took longer than"),
])
def test_template_runtime_errors_are_positioned(repo_copy: Path, image: str, message: str) -> None:
    rules = repo_copy / "stack/mercure/rules.yml"
    rules.write_text(rules.read_text().replace('image: "{{ images.dicom_indexer }}"', f"image: {json.dumps(image)}"))
    found = problems(repo_copy)
    assert [(p["file"], p["line"], p["key"]) for p in found] == [("stack/mercure/rules.yml", 17, "modules.dicom_indexer.image")]
    assert message in found[0]["message"]


@pytest.mark.parametrize("url, message", [
    ("s3://host:{PatientID}/x", "cannot come from DICOM metadata"), ("s3://host:99999/x", "not a valid S3 URL"),
    ("s3://host:0/x", "port 0"), ("s3://[::1/x", "not a valid S3 URL"), ("s3://u:pw@host/x", "credentials"),
    ("s3://host:9000/{PatientID.__class__}", "reaches into the value"), ("s3://host:9000/{PatientID!r:>9999}", "conversion"),
    ("s3://ho st/x", "whitespace"), ("s3:///x", "not a host name"),
])
def test_storage_remote_problems(url: str, message: str) -> None:
    found = hazards.storage_remote_problems(url, "console", 9090) + hazards.template_problems(url)
    assert any(message in p for p in found), found


def test_bad_storage_remote_is_positioned(repo_copy: Path) -> None:
    set_site(repo_copy, lambda d: d["indexer"].update(storage_remote="s3://s3.localhost:-1/x"))
    found = problems(repo_copy)
    assert [p["key"] for p in found] == ["indexer.storage_remote"] and found[0]["line"] > 1


# ---- credentials ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("PASS", "x"), ("DB_PASS", "x"), ("CREDENTIALS", "x"), ("S3_KEY", "x"), ("SSH_KEY", "x"), ("APIKEY", "x"),
    ("DATABASE_URL", "postgres://u:pw@db/x"), ("UPSTREAM", "glpat-abcdefghijklmnopqrst"), ("password", "x"),
    ("token", "x"), ("secret_key", "x"), ("MYSQL_PWD", "x"), ("X", "glrt-abcdefghijklmnopqrst"),
])
def test_credentials_are_recognised(name: str, value: str) -> None:
    assert credential_problem(name, value) is not None


@pytest.mark.parametrize("name, value", [("LOG_LEVEL", "INFO"), ("MINIO_ROOT_PASSWORD_FILE", "/run/secrets/x"),
                                         ("URL", "https://gitlab.example.org/x"), ("TOKEN_URL", "{{ hosts.gitlab }}")])
def test_ordinary_settings_are_not_credentials(name: str, value: str) -> None:
    assert credential_problem(name, value) is None


def test_credentials_in_module_environment_target_and_variables_are_refused(repo_copy: Path) -> None:
    rules = repo_copy / "stack/mercure/rules.yml"
    rules.write_text(rules.read_text().replace("      LOG_LEVEL: INFO", "      LOG_LEVEL: INFO\n      DB_PASS: hunter2")
                     .replace("targets: {}", "targets: {t: {type: sftp, token: abc}}"))
    gitlab = repo_copy / "stack/gitlab.yml"
    gitlab.write_text(gitlab.read_text().replace(
        "variables:\n", "variables:\n  DATABASE_URL: {value: 'postgres://u:pw@db/x', masked: false, protected: false, raw: true}\n"))
    found = {(p["file"], p["key"]) for p in problems(repo_copy)}
    assert found == {("stack/mercure/rules.yml", "modules.dicom_indexer.environment.DB_PASS"),
                     ("stack/mercure/rules.yml", "targets.t.token"), ("stack/gitlab.yml", "variables.DATABASE_URL.value")}


# ---- paths ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, message", [
    ("/", "system folder"), ("/etc", "system folder"), ("/srv/../../etc", "'..'"), ("/etc/bidsflux", "inside /etc"),
    ("//etc", "plain form"), ("/var/lib/docker/x", "inside /var/lib/docker"),
])
def test_system_folders_and_escapes_are_refused(path: str, message: str) -> None:
    problem = hazards.path_problem(path, "x")
    assert problem is not None and message in problem


def test_dangerous_paths_mode_and_secrets_file_are_refused(repo_copy: Path) -> None:
    def change(d: dict) -> None:
        d["paths"]["gitlab_home"]["path"] = "/etc"
        d["paths"]["state_dir"]["mode"] = "0777"
        d["paths"]["dicom_incoming"]["path"] = "/srv/bidsflux/mercure/incoming"
        d["secrets"]["file"] = "/tmp/secrets.env"

    set_site(repo_copy, change)
    found = {p["key"]: p["message"] for p in problems(repo_copy)}
    assert set(found) == {"paths.gitlab_home.path", "paths.state_dir.mode", "paths.mercure_base.path", "secrets.file"}
    assert "system folder" in found["paths.gitlab_home.path"] and "world" not in found["secrets.file"]
    assert "every user" in found["paths.state_dir.mode"] and "directly in /tmp" in found["secrets.file"]


def test_secrets_file_inside_gitlabs_bind_mount_is_refused(repo_copy: Path) -> None:
    set_site(repo_copy, lambda d: d["secrets"].update(file="/srv/bidsflux/gitlab/config/secrets.env"))
    [found] = problems(repo_copy)
    assert found["key"] == "secrets.file" and "paths.gitlab_home" in found["message"]
