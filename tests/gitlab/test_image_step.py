"""Bootstrap's image step (bidsflux.images.dayzero.run) after GitLab's day zero: the containers
project's pipeline is started through the API, the step waits for the built tag in the registry,
resolves it to its digest, pins site.yml, commits and pushes it to the self project.

What is real: the GitLab emulator's REST API (pipelines checked against the project's
ci_config_path, which must name a file of the pushed self project) driven by python-gitlab; a real
registry (docker-registry over TLS) with GitLab's token auth (the emulator's /jwt/auth, which the
registry verifies); `docker push` by the Docker daemon; git push over smart HTTP. The job itself is
played by the test (the template's real job run is tests/ci/test_image_build.py): it pushes the
busybox storescp stand-in under the commit's tag, then sets the pipeline's status."""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gitlab
import pytest
from rich.console import Console
from test_dayzero import gitlab_task  # noqa: F401 - fixture
from test_gitlab_apply import S3, commit_all
from test_gitlab_root_token import standin_image, swarm_client_module  # noqa: F401 - fixtures

from bidsflux.diagnostics import UserError
from bidsflux.gitlab.dayzero import gitlab_day_zero
from bidsflux.swarm.deploy import load_context
from tls_registry import TlsRegistry

pytestmark = pytest.mark.integration


class PlayedRunner:
    """Takes each new pipeline: pushes the stand-in image as <registry>/<project>/dicom_indexer:<sha>
    with the Docker daemon (logged in through the registry's token auth), then marks it
    success; or marks it failed when told to."""

    def __init__(self, emu: Any, registry: TlsRegistry, image: str, folder: Path) -> None:
        self.emu, self.registry, self.image = emu, registry, image
        self.fail_next = False
        self.seen: set[int] = set()
        self.pushed: dict[str, str] = {}
        self.errors: list[str] = []
        self.env = {**os.environ, "DOCKER_CONFIG": str(folder / "docker-config")}  # credentials stay in the test
        self._stop = threading.Event()
        login = subprocess.run(["docker", "login", "-u", "root", "--password-stdin", registry.address],
                               input=emu.admin_token, capture_output=True, text=True, env=self.env, timeout=60)
        assert login.returncode == 0, login.stderr
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid, p in list(self.emu.state.pipelines.items()):
                if pid in self.seen:
                    continue
                self.seen.add(pid)
                self.emu.set_pipeline_status(pid, "running")
                if self.fail_next:
                    self.fail_next = False
                    self.emu.set_pipeline_status(pid, "failed")
                    continue
                ref = f"{self.registry.address}/ni-dataops/containers/dicom_indexer:{p['sha']}"
                subprocess.run(["docker", "tag", self.image, ref], check=True)
                push = subprocess.run(["docker", "push", ref], capture_output=True, text=True, env=self.env, timeout=120)
                if push.returncode != 0:
                    self.errors.append(push.stderr)
                    self.emu.set_pipeline_status(pid, "failed")
                    continue
                self.pushed[p["sha"]] = ref
                self.emu.set_pipeline_status(pid, "success")
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)
        repo = f"{self.registry.address}/ni-dataops/containers/dicom_indexer"
        listed = subprocess.run(["docker", "image", "ls", "--digests", "--format", "{{.Repository}}@{{.Digest}}", repo],
                                capture_output=True, text=True, check=False).stdout.split()
        for ref in [*self.pushed.values(), *listed]:
            subprocess.run(["docker", "rmi", ref], capture_output=True, check=False)


@pytest.fixture
def registry(tmp_path: Path, gitlab_emulator: Any) -> Iterator[TlsRegistry]:
    (tmp_path / "registry").mkdir()
    reg = TlsRegistry(tmp_path / "registry", token_auth=gitlab_emulator)
    try:
        yield reg
    finally:
        reg.stop()


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, highlight=False), buf


def test_image_step_runs_pipeline_waits_pins_and_pushes(gitlab_emulator, site_repo, swarm_client, gitlab_task,  # type: ignore[no-untyped-def]  # noqa: F811
                                                        registry, tmp_path, monkeypatch) -> None:
    import swarm_images

    root, stack = site_repo
    name = f"{registry.address}/ni-dataops/containers/dicom_indexer"
    site = root / "stack" / "site.yml"
    site.write_text(site.read_text().replace("registry.localhost/ni-dataops/containers/dicom_indexer:0.1.0",
                                             f"{name}:0.1.0").replace("  kind: mercure", "  kind: storescp", 1))
    monkeypatch.setenv("BIDSFLUX_GITLAB_URL", gitlab_emulator.url)
    monkeypatch.setenv("BIDSFLUX_CA_BUNDLE", str(registry.ca_file))
    commit_all(root)
    ctx = load_context(None, str(root), "auto")
    gitlab_day_zero(ctx.repo, gitlab_emulator.url, gitlab_emulator.admin_token, stack=stack, secret_values=S3,
                    values_file=str(root / "state" / "secrets.env"), docker_client=swarm_client)
    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    containers = gl.projects.get("ni-dataops/containers")
    head = containers.branches.get(containers.default_branch).commit["id"]

    from bidsflux.images.dayzero import run

    runner = PlayedRunner(gitlab_emulator, registry, swarm_images.build(swarm_client, "storescp"), tmp_path)
    try:
        # A build that fails: the step says which pipeline, and how to resume; site.yml untouched.
        runner.fail_next = True
        before = site.read_text()
        console, out = _console()
        with pytest.raises(UserError) as err:
            run(ctx, console, container=gitlab_task, timeout=60, interval=0.2)
        message = str(err.value)
        assert "ended failed" in message and "pipeline #1" in message
        assert "bidsflux images pin --tag" in message and f"bidsflux bootstrap --site {ctx.repo.site_file} --yes" in message
        assert site.read_text() == before

        # Resume: a new pipeline (the last one failed), the tag appears, site.yml is pinned and pushed.
        # `then` (bootstrap deploys the endpoint there) runs with the Docker CLI logged in with the
        # step's token: the daemon pulls the pinned image through the registry's token auth.
        seen: dict[str, str] = {}

        def pull_as_the_deploy_would() -> str:
            import yaml

            ref = yaml.safe_load(site.read_text())["images"]["storescp"]
            config = os.environ.get("DOCKER_CONFIG", "")
            assert config and Path(config, "config.json").stat().st_mode & 0o077 == 0
            seen["digests"] = subprocess.run(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}",
                                              runner.pushed[head]], check=True, capture_output=True, text=True).stdout
            subprocess.run(["docker", "rmi", runner.pushed[head], ref], capture_output=True, check=False)
            pulled = subprocess.run(["docker", "pull", ref], capture_output=True, text=True, timeout=120)
            assert pulled.returncode == 0, pulled.stderr
            return config

        console, out = _console()
        result = run(ctx, console, container=gitlab_task, timeout=60, interval=0.2, then=pull_as_the_deploy_would)
        assert not Path(result.then).exists() and os.environ.get("DOCKER_CONFIG") != result.then
        # Without that login the daemon may not pull it (the project is private): the login mattered.
        ref = f"{name}:{head}"
        denied = subprocess.run(["docker", "pull", ref], capture_output=True, text=True, timeout=120,
                                env={k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"})
        assert denied.returncode != 0, denied.stdout
        assert not runner.errors, runner.errors
        pipelines = containers.pipelines.list(get_all=True)
        assert [(p.id, p.ref, p.sha, p.status) for p in sorted(pipelines, key=lambda p: p.id)] == [
            (1, containers.default_branch, head, "failed"), (2, containers.default_branch, head, "success")]
        digest = seen["digests"]  # what the daemon recorded when it pushed
        pinned = f"{name}:{head}@" + digest.split(f"{name}@", 1)[1].split('"', 1)[0]
        assert [p.after for p in result.pins] == [pinned, pinned]
        assert f"  dicom_indexer: {pinned}" in site.read_text() and f"  storescp: {pinned}" in site.read_text()
        text = out.getvalue()
        assert f"{name}:{head[:12]} is in {registry.address} (waited" in text
        # Committed and pushed: the self project's main is the pinned commit (the pipeline deploys it).
        local = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True, capture_output=True,
                               text=True).stdout.strip()
        assert result.committed == local
        remote = gitlab_emulator.url.replace("http://", f"http://x:{gitlab_emulator.admin_token}@") + "/ni-dataops/bidsflux.git"
        assert subprocess.run(["git", "ls-remote", remote, "main"], check=True, capture_output=True,
                              text=True).stdout.split()[0] == local
        # The step's own admin tokens were revoked, and never shown.
        minted = [t for t in gitlab_emulator.state.tokens.values() if t.name == "bidsflux-bootstrap"]
        assert len(minted) == 2 and all(t.revoked for t in minted)
        assert all(t.value not in text + message for t in minted)

        # Again: pinned and present, so no pipeline and no change.
        console, out = _console()
        again = run(ctx, console, container=gitlab_task, timeout=60, interval=0.2)
        assert again.skipped_reason.startswith("images.storescp is pinned") and not again.pins
        assert len(containers.pipelines.list(get_all=True)) == 2
    finally:
        runner.stop()


def test_pipeline_refused_when_ci_config_path_names_a_missing_file(gitlab_emulator, git_upstream) -> None:  # type: ignore[no-untyped-def]
    from gitserver import GitServer  # noqa: F401 - the upstream fixture is a real git server

    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    gl.settings.update(new_data={"import_sources": ["git"]})
    group = gl.groups.create({"name": "ni-dataops", "path": "ni-dataops"})
    project = gl.projects.create({"name": "containers", "path": "containers", "namespace_id": group.id,
                                  "import_url": f"{git_upstream.url}/UNFmontreal/containers.git",
                                  "ci_config_path": "ci-templates/dicom-indexer-image.yml@ni-dataops/bidsflux"})
    with pytest.raises(gitlab.GitlabCreateError) as err:
        project.pipelines.create({"ref": "main"})
    assert err.value.response_code == 400 and "ni-dataops/bidsflux` not found or access denied" in str(err.value.error_message)
    with pytest.raises(gitlab.GitlabCreateError) as err:
        project.pipelines.create({"ref": "no-such-branch"})
    assert "Reference not found" in str(err.value.error_message)
