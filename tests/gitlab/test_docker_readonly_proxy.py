"""stack/docker-readonly.haproxy.cfg with a real HAProxy in front of the real Docker socket:
merge-request plans read the Docker API (GET/HEAD), and cannot change anything or read files out."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import require

CONFIG = Path(__file__).resolve().parents[2] / "stack" / "docker-readonly.haproxy.cfg"
DOCKER_SOCKET = "/var/run/docker.sock"
IMAGE = "bidsflux-test/debian:bookworm"


@contextlib.contextmanager
def haproxy(text: str) -> Iterator[str]:
    """HAProxy with config `text` listening in a folder of the test (the shipped config's socket
    path moved there); yields the socket."""
    require(shutil.which("haproxy") is not None, "needs haproxy (Debian package haproxy)")
    require(Path(DOCKER_SOCKET).exists(), "needs the Docker daemon's socket")
    tmp = Path(tempfile.mkdtemp(prefix="docker-ro-"))
    sock = tmp / "docker.sock"
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(text.replace("unix@/run/bidsflux-docker-ro/docker.sock", f"unix@{sock}"))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        assert sock.exists(), (proc.stdout.read() if proc.stdout else b"").decode()  # type: ignore[union-attr]
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def readonly_socket() -> Iterator[str]:
    with haproxy(CONFIG.read_text()) as sock:  # the shipped file
        yield sock


@pytest.mark.integration
def test_get_passes_writes_and_file_reads_are_refused(readonly_socket: str) -> None:
    import uuid

    import docker

    ro = docker.DockerClient(base_url=f"unix://{readonly_socket}", timeout=30)
    direct = docker.from_env(timeout=30)
    try:
        direct.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        require(False, f"needs {IMAGE} (tests/images/debian-base.sh)")
    assert ro.version()["ApiVersion"] == direct.version()["ApiVersion"]  # GET /version
    assert ro.api.ping()  # GET /_ping
    mine = direct.containers.create(IMAGE, "true", name=f"bfro-{uuid.uuid4().hex[:8]}")
    try:
        assert ro.containers.get(mine.id).name == mine.name  # GET /containers/<id>/json
        assert mine.id in {c.id for c in ro.containers.list(all=True)}
        with pytest.raises(docker.errors.APIError) as create:
            ro.containers.create(IMAGE, "true")
        assert create.value.status_code == 403
        with pytest.raises(docker.errors.APIError) as remove:
            ro.api.remove_container(mine.id, force=True)
        assert remove.value.status_code == 403
        with pytest.raises(docker.errors.APIError) as archive:  # would read a container's files (secrets)
            ro.api.get_archive(mine.id, "/etc/hostname")
        assert archive.value.status_code == 403
        assert direct.containers.get(mine.id).id == mine.id  # nothing changed through the proxy
    finally:
        mine.remove(force=True)


def _doctor_finding(repo: Path, sock: str) -> list[dict]:
    from support import cli, edit_yaml

    edit_yaml(repo / "stack/site.yml", lambda d: d["paths"]["docker_readonly"].update(path=str(Path(sock).parent)))
    result = cli("doctor", "--root", str(repo), "--format", "json")
    return [f for f in json.loads(result.output) if f["check"] == "docker-readonly"]


@pytest.mark.integration
def test_doctor_says_the_socket_refuses_writes(repo_copy: Path) -> None:
    with haproxy(CONFIG.read_text()) as sock:
        found = _doctor_finding(repo_copy, sock)
    assert [(f["level"], f["message"]) for f in found] == [("ok", f"{sock} answers reads and refuses writes (403)")]


@pytest.mark.integration
def test_doctor_fails_a_proxy_that_passes_writes(repo_copy: Path) -> None:
    shipped = CONFIG.read_text()
    rule = "    http-request deny deny_status 403 unless METH_GET || { method HEAD }\n"
    assert rule in shipped
    with haproxy(shipped.replace(rule, "")) as sock:
        found = _doctor_finding(repo_copy, sock)
    assert len(found) == 1 and found[0]["level"] == "fail", found
    # Docker itself answered the create without a body (an error: nothing was made); doctor names the fix.
    assert re.search(r"passes writes \(POST /containers/create answered (400|500), not 403\)", found[0]["message"]), found
    assert "stack/docker-readonly.haproxy.cfg" in found[0]["fix"]
