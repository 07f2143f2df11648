"""scripts/bootstrap.sh on a bare Debian host (a container from the local Debian base image): it
reports what it would install, refuses to change the host without --yes, and installs from the
distribution (git here, the small package; docker.io and DataLad take the same path)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from support import REPO_ROOT, require

pytestmark = pytest.mark.integration

BASE = "bidsflux-test/debian:bookworm"


@pytest.fixture(scope="module")
def bare_host() -> Iterator[Any]:
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any reason the engine is not usable
        require(False, f"no Docker engine: {exc}")
    if subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode != 0:
        built = subprocess.run([str(REPO_ROOT / "tests" / "images" / "debian-base.sh")], capture_output=True, text=True)
        require(built.returncode == 0, f"cannot build {BASE}: {built.stderr[-500:]}")
    container = client.containers.run(BASE, ["sleep", "600"], name=f"bfxn-host-{uuid.uuid4().hex[:6]}", detach=True,
                                      volumes={str(REPO_ROOT): {"bind": "/repo", "mode": "ro"}})
    try:
        yield container
    finally:
        container.remove(force=True)


def run(host: Any, *args: str) -> tuple[int, str]:
    code, out = host.exec_run(["bash", "/repo/scripts/bootstrap.sh", *args])
    return code, out.decode()


def test_check_reports_what_a_fresh_debian_needs_and_changes_nothing(bare_host: Any) -> None:
    code, out = run(bare_host, "--check")
    assert code == 2, out
    assert "missing on Debian GNU/Linux 12 (bookworm): docker compose git git-annex datalad python-venv" in out, out
    assert ("would install (apt-get, from the distribution): docker.io docker-compose git git-annex datalad "
            "python3 python3-venv") in out, out
    assert "would then create .venv with bidsflux and run: bidsflux bootstrap --create-dirs" in out
    code, out = run(bare_host, "--check", "--join")
    assert code == 2 and "bidsflux swarm join --create-dirs" in out, out
    assert bare_host.exec_run(["sh", "-c", "command -v git"]).exit_code != 0


def test_without_yes_and_without_a_terminal_nothing_is_installed(bare_host: Any) -> None:
    code, out = run(bare_host, "--install-only", "git")
    assert code == 1 and "pass --yes" in out, out
    assert bare_host.exec_run(["sh", "-c", "command -v git"]).exit_code != 0


def test_install_only_git_with_yes_installs_it_from_the_distribution(bare_host: Any) -> None:
    code, out = run(bare_host, "--install-only", "git", "--yes")
    assert code == 0, out
    assert "will install with apt-get: git" in out and "installed: git" in out, out
    version = bare_host.exec_run(["git", "--version"])
    assert version.exit_code == 0 and version.output.decode().startswith("git version"), version
    code, out = run(bare_host, "--check")
    assert code == 2 and "missing on Debian GNU/Linux 12 (bookworm): docker compose git-annex datalad python-venv" in out, out
    assert run(bare_host, "--install-only", "git", "--check")[0] == 0


def test_unknown_component_is_a_clear_error(bare_host: Any) -> None:
    code, out = run(bare_host, "--install-only", "gpu-driver")
    assert code == 1 and "unknown component 'gpu-driver'" in out, out
