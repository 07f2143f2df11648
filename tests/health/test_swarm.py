"""Swarm check on the real engine: a service whose tasks fail shows as failing with its task error."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import cli, require

pytestmark = pytest.mark.integration

IMAGE = "bidsflux-test/health-busybox:1"


@pytest.fixture(scope="module")
def docker_swarm() -> Iterator[Any]:
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any reason the engine is not usable
        require(False, f"no Docker engine: {exc}")
    info = client.info().get("Swarm") or {}
    require(info.get("LocalNodeState") == "active" and bool(info.get("ControlAvailable")),
            "this Docker engine is not a swarm manager (docker swarm init --advertise-addr 127.0.0.1)")
    yield client
    client.close()


@pytest.fixture(scope="module")
def busybox_image(docker_swarm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A FROM-scratch image holding only a static busybox (nothing can be pulled here)."""
    busybox = shutil.which("busybox")
    require(busybox is not None, "busybox-static is not installed (/bin/busybox)")
    assert busybox is not None
    ctx = tmp_path_factory.mktemp("busybox-image")
    shutil.copy2(busybox, ctx / "busybox")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox"]\n')
    docker_swarm.images.build(path=str(ctx), tag=IMAGE, rm=True, pull=False)
    yield IMAGE
    try:
        docker_swarm.images.remove(IMAGE, noprune=False)
    except Exception:  # noqa: BLE001 - still in use by a service another run left: not ours to force
        pass


def _stack_with(docker_swarm: Any, busybox_image: str, script: str, attempts: int) -> Iterator[tuple[str, str]]:
    """A stack namespace with its overlay network and one service `<stack>_gitlab` running `script`,
    restarted on failure `attempts` times (0: forever); yields once it settled (see below)."""
    from docker.types import RestartPolicy

    stack = f"bfh{uuid.uuid4().hex[:8]}"
    net = docker_swarm.networks.create(f"{stack}_net", driver="overlay", attachable=True,
                                       labels={"io.bidsflux.test": "health"})
    service = None
    try:
        service = docker_swarm.services.create(
            busybox_image, command=["/bin/busybox", "sh", "-c", script],
            name=f"{stack}_gitlab", labels={"com.docker.stack.namespace": stack, "io.bidsflux.test": "health"},
            restart_policy=RestartPolicy(condition="on-failure", delay=100_000_000, max_attempts=attempts),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            failed = [t for t in service.tasks() if (t.get("Status") or {}).get("State") == "failed"]
            # Out of attempts (so the service stays at 0/1), or failing over and over for ever.
            if (attempts and len(failed) > attempts) or (not attempts and failed):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"service {stack}_gitlab never had a failed task: {json.dumps(service.tasks())[:2000]}")
        yield stack, net.name
    finally:
        if service is not None:
            service.remove()
            # The network can only go once the service's tasks are gone.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and docker_swarm.containers.list(all=True, filters={"label": f"com.docker.swarm.service.name={stack}_gitlab"}):
                time.sleep(0.5)
        for _ in range(20):
            try:
                net.remove()
                break
            except Exception:  # noqa: BLE001 - endpoints still detaching
                time.sleep(0.5)


@pytest.fixture
def failing_stack(docker_swarm: Any, busybox_image: str) -> Iterator[tuple[str, str]]:
    """A service whose command always fails at once."""
    yield from _stack_with(docker_swarm, busybox_image, "echo boom >&2; exit 3", attempts=2)


@pytest.fixture
def restarting_stack(docker_swarm: Any, busybox_image: str) -> Iterator[tuple[str, str]]:
    """A service that runs for a moment, then fails, again and again."""
    yield from _stack_with(docker_swarm, busybox_image, "sleep 2; exit 4", attempts=0)


def test_failing_service_shows_as_failing_with_its_task_error(site_copy: Callable[..., Path], failing_stack: tuple[str, str]) -> None:
    stack, network = failing_stack

    def ours(d: Any) -> None:
        d["site"]["name"] = stack
        d["swarm"]["network"]["name"] = network

    site = site_copy(ours)
    result = cli("health", "--site", str(site), "--check", "swarm", "--format", "json")
    data = json.loads(result.stdout)
    swarm = data["checks"][0]
    assert result.exit_code == 1 and swarm["status"] == "fail", swarm
    line = next((d for d in swarm["details"] if f"{stack}_gitlab:" in d), None)
    assert line is not None, swarm
    assert "0/1 replicas running" in line and "non-zero exit (3)" in line, line
    # The overlay network exists, so it is not among the problems.
    assert not any(network in d for d in swarm["details"]), swarm["details"]


def test_missing_network_and_services_fail(site_copy: Callable[..., Path], docker_swarm: Any) -> None:
    stack = f"bfh{uuid.uuid4().hex[:8]}"

    def ours(d: Any) -> None:
        d["site"]["name"] = stack
        d["swarm"]["network"]["name"] = f"{stack}_absent"

    result = cli("health", "--site", str(site_copy(ours)), "--check", "swarm", "--format", "json")
    swarm = json.loads(result.stdout)["checks"][0]
    assert result.exit_code == 1
    assert any(f"overlay network {stack}_absent does not exist" in d for d in swarm["details"])
    assert any(f"service {stack}_minio is not deployed" in d for d in swarm["details"])


def test_unreachable_engine_is_a_failed_check_not_a_traceback(site_copy: Callable[..., Path], no_docker_env: dict[str, str]) -> None:
    result = cli("health", "--site", str(site_copy(lambda d: None)), "--check", "swarm", "--format", "json", env=no_docker_env)
    swarm = json.loads(result.stdout)["checks"][0]
    assert result.exit_code == 1 and swarm["status"] == "fail"
    assert "cannot reach the Docker engine" in swarm["reason"]


def test_restart_loop_fails_even_while_a_task_runs(site_copy: Callable[..., Path], restarting_stack: tuple[str, str]) -> None:
    stack, network = restarting_stack

    def ours(d: Any) -> None:
        d["site"]["name"] = stack
        d["swarm"]["network"]["name"] = network

    site = str(site_copy(ours))
    seen: list[str] = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        swarm = json.loads(cli("health", "--site", site, "--check", "swarm", "--format", "json").stdout)["checks"][0]
        line = next((d for d in swarm["details"] if d.startswith(f"fail: {stack}_gitlab: 1/1")), None)
        if line is not None:
            assert "task restarts within 10 min" in line and "non-zero exit (4)" in line, line
            return
        seen = swarm["details"]
        time.sleep(1)
    pytest.fail(f"no restart-loop failure for {stack}_gitlab; last details: {seen}")
