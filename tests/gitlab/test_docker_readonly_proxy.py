"""stack/docker-readonly.haproxy.cfg with a real HAProxy in front of the real Docker socket:
merge-request plans read the Docker API (GET/HEAD), and cannot change anything or read files out."""

from __future__ import annotations

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


@pytest.fixture
def readonly_socket() -> Iterator[str]:
    require(shutil.which("haproxy") is not None, "needs haproxy (Debian package haproxy)")
    require(Path(DOCKER_SOCKET).exists(), "needs the Docker daemon's socket")
    tmp = Path(tempfile.mkdtemp(prefix="docker-ro-"))
    sock = tmp / "docker.sock"
    # The shipped file, only the listening socket moved into the test's own folder.
    text = CONFIG.read_text().replace("unix@/run/bidsflux-docker-ro/docker.sock", f"unix@{sock}")
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(text)
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
