"""`bidsflux render`: what `docker stack deploy` receives."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from support import REPO_ROOT, cli, require


def render(repo: Path, *extra: str) -> str:
    result = cli("render", "--root", str(repo), "--secret-versions", "initial", *extra)
    assert result.exit_code == 0, result.output
    return result.output


def test_render_is_byte_identical_twice() -> None:
    assert render(REPO_ROOT) == render(REPO_ROOT)


def test_rendered_stack_resolves_site_values() -> None:
    stack = yaml.safe_load(render(REPO_ROOT))
    site = yaml.safe_load((REPO_ROOT / "stack/site.yml").read_text())
    gitlab = stack["services"]["gitlab"]
    assert gitlab["image"] == site["images"]["gitlab"]
    published = {p["target"]: p["published"] for p in gitlab["ports"]}
    assert published[22] == site["ports"]["gitlab_ssh"] and isinstance(published[22], int)
    assert "{{" not in render(REPO_ROOT)
    assert "node.labels.bidsflux.role.processing == true" in stack["services"]["gitlab-runner"]["deploy"]["placement"]["constraints"]
    assert stack["networks"]["bidsflux"] == {"external": True, "name": site["swarm"]["network"]["name"]}
    # Mercure is the default endpoint: no storescp service and none of its secrets.
    assert "dicom_endpoint" not in stack["services"]
    assert "s3_id" not in stack["secrets"]
    for name, spec in stack["services"].items():
        assert spec["deploy"]["update_config"]["failure_action"] == "rollback", name
        assert "healthcheck" in spec, name


def test_secrets_are_external_and_versioned() -> None:
    stack = yaml.safe_load(render(REPO_ROOT))
    for logical, spec in stack["secrets"].items():
        assert spec == {"external": True, "name": f"bidsflux_{logical}_v1"}


def test_storescp_switch_renders_dicom_endpoint(repo_copy: Path) -> None:
    site = repo_copy / "stack/site.yml"
    site.write_text(site.read_text().replace("  kind: mercure", "  kind: storescp"))
    stack = yaml.safe_load(render(repo_copy))
    svc = stack["services"]["dicom_endpoint"]
    cmd = svc["command"]
    assert cmd[0] == "storescp" and cmd[-1] == "11112"
    assert cmd[cmd.index("--eostudy-timeout") + 1] == "60"
    # What the container runs: the image's entrypoint does an unquoted `$@` (bash), storescp then
    # runs the end-of-study command with /bin/sh -c after replacing #p by the study folder.
    deployed = [c.replace("$$", "$") for c in cmd]  # docker stack deploy's interpolation
    words = subprocess.run(["bash", "-c", 'f() { printf "%s\\0" "$@"; }; f $@', "_", *deployed],
                           capture_output=True, check=True, cwd="/").stdout.split(b"\0")[:-1]
    assert [w.decode() for w in words] == deployed  # nothing split or globbed by the entrypoint
    exec_cmd = deployed[deployed.index("--exec-on-eostudy") + 1].replace("#p", "/data/incoming/study_1.2.3")
    argv = subprocess.run(["sh", "-c", f'set -- {exec_cmd}; printf "%s\\0" "$@"'], capture_output=True,
                          check=True, cwd="/").stdout.decode().split("\0")[:-1]
    assert argv == ["python3", "/indexer/index_dicom.py", "--gitlab-url", "https://gitlab.localhost",
                    "--storage-remote", "s3://s3.localhost/dicoms/{ReferringPhysicianName}/{StudyDescriptionPath[1]}",
                    "--gitlab-group-template", "{ReferringPhysicianName}/{StudyDescriptionPath[1]}",
                    "--session-name-tag", "PatientName", "/data/incoming/study_1.2.3"]
    assert {s["source"] for s in svc["secrets"]} == {"dicom_bot_gitlab_token", "s3_id", "s3_secret", "tls_ca_bundle"}
    assert svc["environment"]["REQUESTS_CA_BUNDLE"] == svc["environment"]["SYSTEM_CERTIFICATE_PATH"] == "/run/secrets/site-ca.crt"
    assert svc["environment"]["GIT_SSH_PORT"] == "222"
    assert {"s3_id", "s3_secret", "dicom_bot_gitlab_token"} <= set(stack["secrets"])


def test_output_dir_writes_stack_and_mercure_compose(tmp_path: Path) -> None:
    result = cli("render", "--root", str(REPO_ROOT), "--secret-versions", "initial", "--output", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    stack = (tmp_path / "out/bidsflux.stack.yml").read_text()
    assert stack == render(REPO_ROOT)
    compose = yaml.safe_load((tmp_path / "out/mercure/docker-compose.yml").read_text())
    assert compose["services"]["receiver"]["ports"] == ["11112:11112"]
    assert compose["services"]["ui"]["image"] == "mercureimaging/mercure-ui:0.4.1"
    assert not any(k.startswith("x-") for k in compose)


def test_render_refuses_invalid_site_without_output(repo_copy: Path) -> None:
    site = repo_copy / "stack/site.yml"
    site.write_text(site.read_text().replace("subnet: 10.87.0.0/16", "subnet: 192.11.0.0/16"))
    result = cli("render", "--root", str(repo_copy), "--secret-versions", "initial")
    assert result.exit_code == 1
    assert "swarm.network.subnet" in result.output and "services:" not in result.output


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["mercure", "storescp"])
def test_docker_stack_config_accepts_rendered_stack(repo_copy: Path, tmp_path: Path, kind: str) -> None:
    docker = shutil.which("docker")
    require(docker is not None, "the docker CLI is not installed")
    site = repo_copy / "stack/site.yml"
    site.write_text(site.read_text().replace("  kind: mercure", f"  kind: {kind}"))
    out = tmp_path / "stack.yml"
    out.write_text(render(repo_copy))
    proc = subprocess.run([docker, "stack", "config", "-c", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    expected = {"proxy", "node-trust", "gitlab", "gitlab-runner", "gitlab-runner-dind", "docker-readonly", "minio"} | ({"dicom_endpoint"} if kind == "storescp" else set())
    assert set(resolved["services"]) == expected
