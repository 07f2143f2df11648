"""The stack's docker-readonly service, deployed by bootstrap with the rest of the test site: the
Debian haproxy stand-in runs the shipped config (a swarm config named by its content hash) and
creates docker.sock in the site's paths.docker_readonly (a folder of the test). Through that socket
Docker answers reads and refuses writes and file reads; a job-like container gets it the way the
plan runner's config.toml mounts it; an edited config rolls the service and the old config goes."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from swarm_site import SiteUnderTest

pytestmark = pytest.mark.integration


def _socket(site: SiteUnderTest) -> Path:
    from bidsflux.gitlab.runners import readonly_socket
    from bidsflux.site.yamlsource import load

    return Path(readonly_socket(load(site.site_file).data))


def _wait_socket(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_socket():
            return
        time.sleep(0.5)
    pytest.fail(f"no socket at {path} after {timeout:.0f}s")


def _task_container(client: Any, service: str) -> str:
    found = client.containers.list(filters={"label": f"com.docker.swarm.service.name={service}"})
    assert found, f"no running container of {service}"
    return found[0].id


def test_socket_reads_docker_and_refuses_writes_and_file_reads(deployed_site: SiteUnderTest, docker_client: Any) -> None:
    import docker

    assert deployed_site.bootstrap_result.exit_code == 0, deployed_site.bootstrap_result.output  # type: ignore[attr-defined]
    sock = _socket(deployed_site)
    _wait_socket(sock)
    # Root only on the host: the socket is 0600 root, its folder 0700 (paths.docker_readonly).
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    ro = docker.DockerClient(base_url=f"unix://{sock}", timeout=30)
    assert ro.api.ping()  # GET /_ping
    stack = deployed_site.stack
    own = _task_container(docker_client, f"{stack}_docker-readonly")
    assert own in {c.id for c in ro.containers.list()}  # GET /containers/json
    with pytest.raises(docker.errors.APIError) as create:  # POST /containers/create
        ro.containers.create(deployed_site.images["haproxy"], "true")
    assert create.value.status_code == 403
    # GitLab's task holds the root password secret: its files must not come out through the proxy.
    gitlab = _task_container(docker_client, f"{stack}_gitlab")
    with pytest.raises(docker.errors.APIError) as archive:  # GET /containers/<id>/archive
        ro.api.get_archive(gitlab, "/run/secrets/gitlab_root_password")
    assert archive.value.status_code == 403
    assert docker_client.containers.get(own).status == "running"
    # `bidsflux doctor` on this node probes the same socket.
    doctor = deployed_site.run("doctor", "--format", "json")
    found = [f for f in json.loads(doctor.output) if f["check"] == "docker-readonly"]
    assert [(f["level"], f["message"]) for f in found] == [("ok", f"{sock} answers reads and refuses writes (403)")], \
        doctor.output


def test_plan_job_container_gets_the_socket_and_other_host_users_do_not(deployed_site: SiteUnderTest,
                                                                        docker_client: Any) -> None:
    from bidsflux.gitlab.runners import runner_specs
    from bidsflux.site.yamlsource import load

    sock = _socket(deployed_site)
    _wait_socket(sock)
    site = load(deployed_site.site_file).data
    plan = next(s for s in runner_specs(load(deployed_site.root / "stack" / "runners.yml").data, site) if s.name == "plan")
    volume = next(v for v in plan.docker["volumes"] if v.endswith(":/var/run/docker.sock"))
    assert volume == f"{sock}:/var/run/docker.sock"
    image = deployed_site.images["haproxy"]  # the stand-in has curl
    curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", "/var/run/docker.sock"]

    def job(user: str, *args: str) -> tuple[int, str]:
        container = docker_client.containers.create(image, [*curl, *args], user=user, volumes=[volume])
        try:
            container.start()
            code = container.wait(timeout=60)["StatusCode"]
            return code, container.logs(stdout=True, stderr=False).decode().strip()
        finally:
            container.remove(force=True)

    # A job container runs as root, as the plan runner's do (docker executor, no user remapping).
    assert job("0", "http://docker/_ping") == (0, "200")
    assert job("0", "http://docker/v1.41/containers/json") == (0, "200")
    assert job("0", "-X", "POST", "http://docker/v1.41/containers/create") == (0, "403")
    # A job image running as another user cannot open it (mode 0600): curl's 7, could not connect.
    assert job("65534", "http://docker/_ping") == (7, "000")
    # Nor can a host user other than root (the folder is 0700, the socket 0600).
    probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
             "try:\n s.connect(sys.argv[1])\nexcept PermissionError:\n sys.exit(13)\n")
    proc = subprocess.run(["python3", "-c", probe, str(sock)], user=65534, group=65534, capture_output=True, timeout=30)
    assert proc.returncode == 13, proc.stderr


def test_edited_config_rolls_the_service_and_the_old_config_goes(deployed_site: SiteUnderTest,
                                                                 docker_client: Any) -> None:
    cfg = deployed_site.root / "stack" / "docker-readonly.haproxy.cfg"
    original = cfg.read_text()
    service = f"{deployed_site.stack}_docker-readonly"

    def config_names() -> list[str]:
        refs = docker_client.api.inspect_service(service)["Spec"]["TaskTemplate"]["ContainerSpec"]["Configs"]
        return [r["ConfigName"] for r in refs]

    def ours() -> set[str]:
        return {c.name for c in docker_client.configs.list(filters={"label": f"io.bidsflux.stack={deployed_site.stack}"})}

    def deploy_with(maxconn: str) -> tuple[str, str]:
        cfg.write_text(original.replace("maxconn 64", f"maxconn {maxconn}"))
        result = deployed_site.run("deploy", "--yes", "--timeout", "120")
        assert result.exit_code == 0, result.output
        names = config_names()
        assert len(names) == 1
        return names[0], result.output

    before = config_names()
    assert len(before) == 1 and before[0] in ours()
    try:
        cfg.write_text(original.replace("maxconn 64", "maxconn 48"))
        plan = deployed_site.run("plan")
        assert plan.exit_code == 2, plan.output
        assert "+ config " in plan.output and f"~ service {service} (update)" in plan.output
        second, out = deploy_with("48")
        assert second != before[0] and second in ours()
        assert b"maxconn 48" in base64.b64decode(docker_client.configs.get(second).attrs["Spec"]["Data"])
        # The first version stays while a rollback would return to it (the service's previous spec).
        assert before[0] in ours() and "removed old config" not in out
        # One more version: the previous one (48) is the rollback target now; the first goes.
        third, out = deploy_with("40")
        assert f"removed old config {before[0]}" in out and before[0] not in ours()
        assert {second, third} <= ours()
        _wait_socket(_socket(deployed_site))
    finally:
        cfg.write_text(original)
        restored = deployed_site.run("deploy", "--yes", "--timeout", "120")
    assert restored.exit_code == 0, restored.output
    assert config_names() == before  # made again from the same content: the same name
    assert f"removed old config {second}" in restored.output
    assert _socket(deployed_site).is_socket()


def test_a_job_that_came_first_does_not_block_the_socket(deployed_site: SiteUnderTest, docker_client: Any) -> None:
    """A plan job that starts while the proxy is down makes Docker create the missing bind source
    docker.sock as an empty folder; the proxy's next task clears it and listens again."""
    from docker.errors import APIError

    sock = _socket(deployed_site)
    service = docker_client.services.get(f"{deployed_site.stack}_docker-readonly")

    def scale(replicas: int) -> None:
        for _ in range(10):
            try:
                docker_client.services.get(service.id).scale(replicas)
                return
            except APIError as exc:  # swarm refuses an update built on a stale version
                if "out of sequence" not in str(exc):
                    raise
                time.sleep(1)
        raise AssertionError(f"could not scale {service.name}")

    def tasks_gone() -> bool:
        return not docker_client.containers.list(filters={"label": f"com.docker.swarm.service.id={service.id}"})

    scale(0)
    try:
        deadline = time.monotonic() + 60
        while not tasks_gone() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert tasks_gone()
        sock.unlink(missing_ok=True)
        job = docker_client.containers.create(deployed_site.images["haproxy"], ["true"],
                                              volumes=[f"{sock}:/var/run/docker.sock"])
        try:
            job.start()  # Docker creates a missing bind source when the container starts
            job.wait(timeout=60)
        finally:
            job.remove(force=True)
        assert sock.is_dir(), "Docker did not create the missing bind source (the case this guards against)"
    finally:
        scale(1)
    _wait_socket(sock)
    # The task counts as running once its healthcheck passed (swarm: "starting" until then); the
    # session's site is left converged for the tests after this one.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tasks = docker_client.api.tasks(filters={"service": service.id, "desired-state": "running"})
        if any(t["Status"]["State"] == "running" for t in tasks):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"{service.name} did not run again: {tasks}")
    import docker

    assert docker.DockerClient(base_url=f"unix://{sock}", timeout=30).api.ping()
