"""rules.yml -> mercure.json has the structure and field types of a mercure.json known to load in
Mercure 0.4.1, and bad rules are reported with file, line and key by `validate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mercure_testlib import edit

from bidsflux.mercure import config as mc
from bidsflux.site.repository import open_repository
from bidsflux.site.yamlsource import load
from support import REPO_ROOT, cli


def render(repo: Path) -> dict:
    result = cli("mercure", "render", "--root", str(repo))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def types(d: dict) -> dict[str, str]:
    return {k: type(v).__name__ for k, v in d.items()}


def test_rendered_config_matches_the_reference_shape(repo: Path, reference: dict) -> None:
    config = render(repo)
    assert types(config).keys() == types(reference).keys()
    for key in reference:
        if key not in ("rules", "modules", "targets"):
            assert type(config[key]) is type(reference[key]), key
    ref_rule = next(iter(reference["rules"].values()))
    ref_module = next(iter(reference["modules"].values()))
    assert config["rules"] and config["modules"]
    for name, rule in config["rules"].items():
        assert types(rule) == types(ref_rule), name
    for name, module in config["modules"].items():
        assert types(module) == types(ref_module), name
        for key in ("environment", "docker_arguments", "additional_volumes"):
            assert isinstance(json.loads(module[key]) if module[key] else {}, dict)
    assert mc.model_problems(config) == []
    assert mc.model_problems(reference) == []  # the model schema accepts what Mercure loads


def test_indexer_module_gets_options_env_and_secret_files_not_values(repo: Path) -> None:
    module = render(repo)["modules"]["dicom_indexer"]
    env = json.loads(module["environment"])
    assert env["CI_SERVER_HOST"] == "gitlab.localhost"
    assert env["GITLAB_BOT_USERNAME"] == "dicom_bot" and env["GITLAB_BOT_EMAIL"] == "dicom_bot@localhost"
    assert env["GIT_SSH_PORT"] == "222"
    volumes = json.loads(module["additional_volumes"])
    binds = {v["bind"]: (k, v["mode"]) for k, v in volumes.items()}
    for secret in ("dicom_bot_gitlab_token", "s3_id", "s3_secret"):
        source, mode = binds[f"/var/run/secrets/{secret}"]
        assert source == f"/var/lib/bidsflux/mercure-secrets/{secret}" and mode == "ro"
    command = json.loads(module["docker_arguments"])["command"]
    for option in ("--gitlab-url", "--storage-remote", "--gitlab-group-template", "--session-name-tag"):
        assert option in command
    assert command[-1] == "/tmp/data"
    assert command[command.index("--gitlab-url") + 1] == "https://gitlab.localhost"
    assert module["docker_tag"] == "registry.localhost/ni-dataops/containers/dicom_indexer:0.1.0"
    # TLS: the site's CA bundle for requests, git and git-annex, mounted from the manager.
    assert binds["/run/secrets/site-ca.crt"] == ("/var/lib/bidsflux/proxy/ca.crt", "ro")
    for var in ("REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO", "SSL_CERT_FILE"):
        assert env[var] == "/run/secrets/site-ca.crt"


def test_target_gets_explicit_target_type(repo: Path) -> None:
    rules = repo / "stack" / "mercure" / "rules.yml"
    edit(rules, "targets: {}", "targets:\n  archive:\n    type: dicom\n    ip: 10.0.0.5\n    port: 104\n    aet_target: ARCHIVE\n")
    target = render(repo)["targets"]["archive"]
    assert target["target_type"] == "dicom" and target["port"] == "104"
    assert "type" not in target


def test_rendering_is_deterministic(repo: Path) -> None:
    a = cli("mercure", "render", "--root", str(repo)).output
    assert a == cli("mercure", "render", "--root", str(repo)).output


# (replace, with, key path, words in the message)
BAD_RULES = [
    ("rule: \"tags.Modality == 'MR'\"", "rule: \"tags.Modality == 'MR\"", "rules.mr_completed_study.rule", "not a valid Python expression"),
    ("rule: \"tags.Modality == 'MR'\"", "rule: \"__import__('os').system('id')\"", "rules.mr_completed_study.rule", "__import__"),
    ("study_trigger_series: \"'MRSI' and 'STAGE_preproc'\"", "study_trigger_series: \"'MRSI' and 'STAGE_preproc\"",
     "rules.mr_completed_study.study_trigger_series", "unexpected text"),
    ("processing_module: dicom_indexer", "processing_module: dicom_indexr", "rules.mr_completed_study.processing_module", "undefined module 'dicom_indexr'"),
    ("      shm_size: 1g", "      shm_size: 1g\n      privileged: true", "modules.dicom_indexer.docker_arguments", "'privileged' is not one of mem_limit"),
    ("      LOG_LEVEL: INFO", "      LOG_LEVEL: INFO\n      GITLAB_TOKEN: glpat-abc", "modules.dicom_indexer.environment.GITLAB_TOKEN", "looks like a secret"),
]


@pytest.mark.parametrize(("old", "new", "key", "words"), BAD_RULES, ids=[b[2] for b in BAD_RULES])
def test_validate_reports_bad_rules_with_file_line_and_key(repo: Path, tmp_path: Path, old: str, new: str, key: str, words: str) -> None:
    rules = repo / "stack" / "mercure" / "rules.yml"
    edit(rules, old, new)
    result = cli("validate", "--root", str(repo))
    assert result.exit_code == 1
    doc = load(rules, repo)
    line, col = doc.locate(key.split("."))
    expected = f"stack/mercure/rules.yml:{line}:{col}: {key}:"
    hits = [ln for ln in result.output.splitlines() if ln.startswith(expected)]
    assert hits, f"no {expected!r} in:\n{result.output}"
    assert words in hits[0]
    # ...and nothing is pushed.
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    pushed = cli("mercure", "push", "--root", str(repo), "--config-dir", str(config_dir))
    assert pushed.exit_code == 1 and expected in pushed.output
    assert list(config_dir.iterdir()) == []


def test_repository_rules_convert_cleanly() -> None:
    repo = open_repository(root=REPO_ROOT)
    site = load(repo.site_file, repo.root).data
    managed = mc.managed_config(site, load(repo.mercure_rules, repo.root))
    assert "dicom_indexer" in managed.modules


def test_indexer_module_maps_gitlab_and_s3_to_the_node(repo: Path) -> None:
    """Mercure 0.4.1 passes docker_arguments to docker-py's containers.run: the decoded mapping
    becomes the container's ExtraHosts, which dockerd resolves for host-gateway."""
    from docker.types import HostConfig

    arguments = json.loads(render(repo)["modules"]["dicom_indexer"]["docker_arguments"])
    assert arguments["extra_hosts"] == {"gitlab.localhost": "host-gateway", "s3.localhost": "host-gateway"}
    host_config = HostConfig(version="1.41", extra_hosts=arguments["extra_hosts"])
    assert host_config["ExtraHosts"] == ["gitlab.localhost:host-gateway", "s3.localhost:host-gateway"]
    # The same names, mapped the same way, as the storescp swarm service.
    from bidsflux.site.indexer import indexer_extra_hosts

    assert arguments["extra_hosts"] == indexer_extra_hosts(load(repo / "stack/site.yml", repo).data)
