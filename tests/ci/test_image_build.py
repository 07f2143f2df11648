"""The dicom_indexer build template run for real: ci-templates/dicom-indexer-image.yml's job under
gitlab-ci-local's docker executor, in an image with Debian's buildah, with exactly the options
runners.yml gives the `build` runner (unprivileged, seccomp unconfined, no socket, no devices),
pushing over TLS with Basic auth to a real registry (Debian's docker-registry, the program of
registry:2). Then `bidsflux images pin` resolves the pushed tag to the registry's digest, site.yml
is pinned (storescp too: same image) and the rendered stack runs name:tag@digest.

The build context is a tiny stand-in for docker/dicom_indexer (static busybox FROM scratch with a
RUN step), so no base image has to be pulled and the build takes seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gcl import GIT, PREDEFINED_OVERRIDES, gitlab_ci_local
from ops_image import build_helper_image

from support import REPO_ROOT, build_dockerfile_image, cli, require
from tls_registry import USER, TlsRegistry

pytestmark = pytest.mark.integration

BUILDAH_REPO = "bidsflux-test/buildah"
BUILDAH_DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah \\
 && apt-get clean && rm -rf /var/lib/apt/lists/*
"""
STANDIN_DOCKERFILE = """FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && echo indexer-standin > /built-by-run"]
COPY entrypoint.sh /entrypoint.sh
ENTRYPOINT ["sh", "/entrypoint.sh"]
"""
def buildah_image(client: Any) -> str:
    """Debian bookworm + buildah (1.28), tagged by the hash of its inputs: built once per machine."""
    return build_dockerfile_image(client, BUILDAH_REPO, BUILDAH_DOCKERFILE)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRegistry]:
    reg = TlsRegistry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import docker

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        require(False, f"no Docker engine: {exc}")
    require(Path("/bin/busybox").exists(), "busybox-static is not installed (/bin/busybox)")
    return {"buildah": buildah_image(client), "helper": build_helper_image(client)}


def build_runner_security_opts() -> list[str]:
    """security_opt of the `build` runner as `bidsflux runners register` writes it into config.toml."""
    import tomllib

    from bidsflux.gitlab.runners import render_config, runner_specs
    from bidsflux.site.yamlsource import load

    site = load(REPO_ROOT / "stack" / "site.yml").data
    spec = next(s for s in runner_specs(load(REPO_ROOT / "stack" / "runners.yml").data, site) if s.name == "build")
    docker = tomllib.loads(render_config([(spec, "glrt-test-not-a-token")], "http://gitlab.invalid"))["runners"][0]["docker"]
    assert not docker.get("privileged") and not docker.get("devices") and not docker.get("cap_add")
    assert not any("docker.sock" in v for v in docker.get("volumes") or [])
    return list(docker.get("security_opt") or [])


def _containers_repo(folder: Path) -> Path:
    """The containers project as its pipeline sees it: the stand-in context under docker/dicom_indexer
    and, as GitLab does for ci_config_path FILE@PROJECT, our template as the pipeline's configuration
    (its `include: project:` made `local:`, the files being copied from this repository)."""
    repo = folder / "containers"
    ctx = repo / "docker" / "dicom_indexer"
    ctx.mkdir(parents=True)
    shutil.copy2("/bin/busybox", ctx / "busybox")
    (ctx / "Dockerfile").write_text(STANDIN_DOCKERFILE)
    (ctx / "entrypoint.sh").write_text("#!/bin/sh\nexec \"$@\"\n")
    (repo / "ci-templates").mkdir()
    shutil.copy2(REPO_ROOT / "ci-templates" / "docker-build.yml", repo / "ci-templates" / "docker-build.yml")
    template = yaml.safe_load((REPO_ROOT / "ci-templates" / "dicom-indexer-image.yml").read_text())
    template["include"] = [{"local": inc["file"]} for inc in template["include"]]
    (repo / ".gitlab-ci.yml").write_text(yaml.safe_dump(template, sort_keys=False))
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "standin"], cwd=repo, check=True)
    # An origin whose main is this commit: `rules: changes:` compare against it as GitLab compares a push.
    subprocess.run(["git", "init", "-q", "--bare", str(folder / "origin.git")], check=True)
    for args in (["remote", "add", "origin", str(folder / "origin.git")], ["push", "-q", "origin", "main"],
                 ["remote", "set-head", "origin", "main"]):
        subprocess.run([*GIT, *args], cwd=repo, check=True)
    return repo


def _docker_wrapper(folder: Path, security_opts: list[str]) -> Path:
    """What the runner adds to each job container it creates (config.toml `security_opt`), for
    gitlab-ci-local, which has no such option; it also records every `docker create`."""
    log = folder / "docker-create.log"
    flags = " ".join(f"--security-opt {o.replace(':', '=', 1)}" for o in security_opts)
    wrapper = folder / "docker"
    wrapper.write_text(f"""#!/bin/sh
if [ "$1" = create ]; then shift; echo "create $*" >> {log}; exec {shutil.which('docker')} create {flags} "$@"; fi
exec {shutil.which('docker')} "$@"
""")
    wrapper.chmod(0o755)
    return wrapper


def run_job(repo: Path, images: dict[str, str], registry: TlsRegistry, security_opts: list[str]) -> subprocess.CompletedProcess[str]:
    wrapper = _docker_wrapper(repo.parent, security_opts)
    variables = {
        "CI_PIPELINE_SOURCE": "web", "CI_DEFAULT_BRANCH": "main", "CI_COMMIT_BRANCH": "main",
        "BIDSFLUX_BUILDAH_IMAGE": images["buildah"],
        "CI_REGISTRY": registry.address, "CI_REGISTRY_IMAGE": f"{registry.address}/ni-dataops/containers",
        "CI_REGISTRY_USER": USER, "CI_REGISTRY_PASSWORD": registry.password,
        # The runner's tls-ca-file reaches jobs as CI_SERVER_TLS_CA_FILE (here: the test CA, mounted).
        "CI_SERVER_TLS_CA_FILE": "/bidsflux-ca/ca.crt",
    }
    args = [gitlab_ci_local(), "--helper-image", images["helper"], "--pull-policy", "if-not-present",
            "--network", "host", "--no-artifacts-to-source", "--ignore-predefined-vars", PREDEFINED_OVERRIDES,
            "--no-json-schema-validation", "--container-executable", str(wrapper),
            "--volume", f"{registry.ca_file.parent}:/bidsflux-ca:ro"]
    for k, v in variables.items():
        args += ["--variable", f"{k}={v}"]
    args.append("dicom-indexer-image")
    env = {**os.environ, "PATH": f"{REPO_ROOT / '.venv/bin'}:{os.environ.get('PATH', '')}"}
    return subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=600, env=env)


def _dotenv(repo: Path) -> dict[str, str]:
    found = list((repo / ".gitlab-ci-local").rglob("image.env"))
    assert found, "the job left no image.env dotenv report"
    return dict(line.split("=", 1) for line in found[0].read_text().splitlines() if "=" in line)


def test_template_builds_unprivileged_and_pin_uses_the_pushed_digest(tmp_path: Path, images: dict[str, str],
                                                                      registry: TlsRegistry, repo_copy: Path) -> None:
    opts = build_runner_security_opts()
    assert opts == ["seccomp:unconfined"]
    repo = _containers_repo(tmp_path)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()

    # Without the runner's one option, Docker's seccomp profile stops Buildah (the option is needed).
    bare = run_job(repo, images, registry, [])
    assert bare.returncode != 0
    assert "unshare(CLONE_NEWUSER): Operation not permitted" in bare.stdout + bare.stderr, bare.stdout[-2000:]

    started = time.monotonic()
    result = run_job(repo, images, registry, opts)
    took = time.monotonic() - started
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    created = (tmp_path / "docker-create.log").read_text()
    job_create = [line for line in created.splitlines() if images["buildah"] in line]
    assert job_create, created
    assert all("--privileged" not in line and "docker.sock" not in line and "--device" not in line
               and "--cap-add" not in line for line in job_create)
    pushed = _dotenv(repo)["IMAGE_REF"]
    name = f"{registry.address}/ni-dataops/containers/dicom_indexer"
    assert pushed.startswith(f"{name}:{sha}@sha256:")
    print(f"template job (buildah, vfs, chroot) took {took:.1f}s")

    # `bidsflux images pin` asks the registry (TLS with the site CA, Basic auth) for the built tag.
    site = repo_copy / "stack" / "site.yml"
    text = site.read_text()
    before = f"{name}:0.1.0"
    text = text.replace("registry.localhost/ni-dataops/containers/dicom_indexer:0.1.0", before)
    text = text.replace("  kind: mercure", "  kind: storescp", 1)  # the endpoint as a swarm service
    site.write_text(text)
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=repo_copy, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=repo_copy, check=True)
    subprocess.run([*GIT, "commit", "-qm", "site"], cwd=repo_copy, check=True)
    env = {"BIDSFLUX_CA_BUNDLE": str(registry.ca_file), "BIDSFLUX_REGISTRY_USER": USER,
           "BIDSFLUX_REGISTRY_PASSWORD": registry.password}

    missing = cli("images", "pin", "--root", str(repo_copy), "--tag", "0" * 40, env=env)
    assert missing.exit_code == 1 and "has no ni-dataops/containers/dicom_indexer:" + "0" * 40 in missing.output
    wrong = cli("images", "pin", "--root", str(repo_copy), "--tag", sha, env={**env, "BIDSFLUX_REGISTRY_PASSWORD": "wrong"})
    assert wrong.exit_code == 1 and "refused" in wrong.output and "wrong" not in wrong.output.replace("wrong.", "")
    untrusted = cli("images", "pin", "--root", str(repo_copy), "--tag", sha, env={**env, "BIDSFLUX_CA_BUNDLE": ""})
    assert untrusted.exit_code == 1 and "certificate" in untrusted.output
    assert site.read_text() == text  # nothing changed by the refusals

    pinned = cli("images", "pin", "--root", str(repo_copy), "--tag", sha, env=env)
    assert pinned.exit_code == 0, pinned.output
    assert registry.password not in pinned.output
    changed = [line for line in site.read_text().splitlines() if line not in text.splitlines()]
    assert changed == [f"  dicom_indexer: {pushed}", f"  storescp: {pushed}"] or \
        [line.split("#")[0].rstrip() for line in changed] == [f"  dicom_indexer: {pushed}", f"  storescp: {pushed}"], changed
    log = subprocess.run(["git", "log", "-1", "--format=%s"], cwd=repo_copy, check=True, capture_output=True, text=True)
    assert log.stdout.startswith("images: pin dicom_indexer, storescp")

    # The rendered stack runs exactly the pushed digest.
    out = tmp_path / "rendered"
    rendered = cli("render", "--root", str(repo_copy), "--output", str(out))
    assert rendered.exit_code == 0, rendered.output
    stack = yaml.safe_load(next(out.rglob("*.yml")).read_text())
    endpoint_images = [s["image"] for s in stack["services"].values() if "ni-dataops/containers" in str(s.get("image"))]
    assert endpoint_images and set(endpoint_images) == {pushed}

    # A second pin finds nothing to change and commits nothing.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_copy, check=True, capture_output=True, text=True).stdout
    again = cli("images", "pin", "--root", str(repo_copy), env=env)
    assert again.exit_code == 0 and "already" in again.output, again.output
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_copy, check=True, capture_output=True,
                          text=True).stdout == head
