"""Helpers for tests: `from support import REPO_ROOT, require, cli` (tests/ is on pythonpath).

Integration tests use real engines. When an engine cannot exist here a test may skip, saying
why; with BIDSFLUX_REQUIRE_INTEGRATION=1 (set by .ci/run) such a skip is a failure instead."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bidsflux.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIRE_INTEGRATION = os.environ.get("BIDSFLUX_REQUIRE_INTEGRATION") == "1"
# What a repository copy needs for validate/render.
REPO_PARTS = ["stack", "schemas", "ci-templates", ".gitlab-ci.yml"]
# tests/images/debian-base.sh builds it; test images take it as their BASE build argument.
DEBIAN_BASE = "bidsflux-test/debian:bookworm"


def copy_repository(dest: Path, parts: list[str] = REPO_PARTS, source: Path = REPO_ROOT) -> Path:
    """Copy the repository's site files (or `parts` of `source`) into `dest`, to mutate safely."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in parts:
        src = source / part
        if (dest / part).exists() or not src.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, dest / part)
        else:
            shutil.copy2(src, dest / part)
    return dest


def dcmtk(tool: str) -> str:
    """Path of DCMTK's `tool` (storescp, echoscu, storescu). pynetdicom installs console scripts
    with the same names into the virtual environment, so PATH order must not decide."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        candidate = Path(folder) / tool
        if candidate.exists():
            return str(candidate)
    require(False, f"DCMTK's {tool} is not installed (apt-get install dcmtk)")
    raise AssertionError("unreachable")


def require(condition: bool, why: str) -> None:
    """Skip when an engine is missing, or fail when CI requires integration tests to run."""
    if condition:
        return
    if REQUIRE_INTEGRATION:
        pytest.fail(f"integration engine unavailable under BIDSFLUX_REQUIRE_INTEGRATION=1: {why}")
    pytest.skip(why)


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the bidsflux CLI in-process; a Python traceback for any outcome is a test failure."""
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(result.exception))
        pytest.fail(f"bidsflux {' '.join(args)} raised instead of reporting:\n{tb}")
    assert "Traceback (most recent call last)" not in result.output
    return result


@contextlib.contextmanager
def local_names(names: list[str]) -> Iterator[None]:
    """Resolve `names` to 127.0.0.1 inside this test process only (Python clients: requests,
    boto3, ssl), so TLS is checked against real host names without touching /etc/hosts."""
    import socket

    original = socket.getaddrinfo
    wanted = {n.lower() for n in names}

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.lower() in wanted:
            host = "127.0.0.1"
        return original(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.getaddrinfo = original  # type: ignore[assignment]


def edit_text(repo: Path, rel: str, old: str, new: str) -> None:
    """Replace the first `old` in `repo/rel` by `new` (the test fails if `old` is not there)."""
    path = repo / rel
    text = path.read_text()
    assert old in text, f"{old!r} not in {rel}"
    path.write_text(text.replace(old, new, 1))


def validate_problems(repo: Path) -> list[dict]:
    """`bidsflux validate --format json` of `repo`: its problems; the exit code must agree."""
    result = cli("validate", "--root", str(repo), "--format", "json")
    data = json.loads(result.output)
    assert result.exit_code == (1 if data else 0)
    return data


def edit_yaml(path: Path, fn: Any) -> Path:
    """Apply `fn` to the round-trip YAML of `path` (comments and order kept) and write it back."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    data = yaml.load(path.read_text(encoding="utf-8"))
    fn(data)
    with path.open("w", encoding="utf-8") as fh:
        yaml.dump(data, fh)
    return path


def ensure_debian_base(client: Any, base: str = DEBIAN_BASE) -> str:
    """The local Debian base (tests/images/debian-base.sh builds it once, with mmdebstrap)."""
    try:
        client.images.get(base)
    except Exception:  # noqa: BLE001 - not built yet on this machine
        proc = subprocess.run([str(REPO_ROOT / "tests/images/debian-base.sh"), base],
                              capture_output=True, text=True, timeout=900)
        require(proc.returncode == 0, f"cannot build {base}: {proc.stderr[-500:]}")
    return base


def build_dockerfile_image(client: Any, repo: str, dockerfile: str, base: str = DEBIAN_BASE) -> str:
    """<repo>:<hash of the base image and `dockerfile`>, built from that text with the build arg
    BASE_IMAGE=base (its `FROM ${BASE_IMAGE}`): a second run builds nothing."""
    import tempfile

    base = ensure_debian_base(client, base)
    tag = f"{repo}:{hashlib.sha256((client.images.get(base).id + dockerfile).encode()).hexdigest()[:16]}"
    try:
        client.images.get(tag)
        return tag
    except Exception:  # noqa: BLE001 - not built yet
        pass
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Dockerfile").write_text(dockerfile)
        client.images.build(path=tmp, tag=tag, rm=True, forcerm=True, buildargs={"BASE_IMAGE": base})
    return tag


def build_folder_image(client: Any, name: str, folder: Path, base: str = DEBIAN_BASE) -> str:
    """bidsflux-test/<name>:<hash of `folder` and the base image>: a second run builds nothing."""
    require(any(t == base for i in client.images.list() for t in i.tags), f"{base} is missing (tests/images/debian-base.sh)")
    h = hashlib.sha256(client.images.get(base).id.encode())
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    tag = f"bidsflux-test/{name}:{h.hexdigest()[:12]}"
    try:
        client.images.get(tag)
    except Exception:  # noqa: BLE001 - not built yet
        subprocess.run(["docker", "build", "-q", "--build-arg", f"BASE={base}", "-t", tag, str(folder)],
                       check=True, capture_output=True, env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin"})
    return tag
