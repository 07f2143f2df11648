"""Secret rotation (zero failed probes, SIGKILL at every step), gc, hand-off, bad input, no leaks.

Runs after test_swarm_bootstrap_plan.py on the same session stack."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from swarm_site import SiteUnderTest, free_port

pytestmark = pytest.mark.integration
BIDSFLUX = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "bidsflux")


def _secret_refs(client: Any, service: str, logical: str = "") -> list[str]:
    """Secrets the service mounts (those of `logical` only, when given: runners also mount tls_ca_bundle)."""
    spec = client.api.inspect_service(service)["Spec"]
    names = [r["SecretName"] for r in spec["TaskTemplate"]["ContainerSpec"].get("Secrets") or []]
    return [n for n in names if not logical or n.rsplit("_v", 1)[0].endswith(f"_{logical}")]


def _ours(client: Any, stack: str, logical: str) -> list[str]:
    return sorted(s.name for s in client.secrets.list(filters={"label": [f"io.bidsflux.stack={stack}",
                                                                           f"io.bidsflux.secret={logical}"]}))


@pytest.fixture
def runner_configs_generated(deployed_site: SiteUnderTest) -> Any:
    """The runner services are this stack's start-first services, and the moving mechanics under
    test (start-first, resume after a kill) are the same for every generated secret; a runner's
    config is normally registered (only `runners register` renews it), so this test site declares
    its runner configs generated for the duration of the test."""
    template = deployed_site.root / "stack" / "bidsflux.stack.yml"
    saved = template.read_text()
    text = saved
    for name in ("runner_dind_config", "runner_processing_config"):
        text = text.replace(f"  {name}:\n    generate: runner_config\n    owner: registered\n",
                            f"  {name}:\n    generate: runner_config\n    owner: generated\n")
    assert text.count("owner: generated") == saved.count("owner: generated") + 2
    template.write_text(text)
    yield
    template.write_text(saved)


def test_rotating_a_registered_or_minted_secret_by_name_is_refused(deployed_site: SiteUnderTest,
                                                                   docker_client: Any) -> None:
    stack = deployed_site.stack
    before = _ours(docker_client, stack, "runner_dind_config")
    result = deployed_site.run("secrets", "rotate", "runner_dind_config", "--timeout", "60")
    assert result.exit_code == 1
    assert "runner_dind_config is registered" in result.output
    assert "bidsflux runners register --only gitlab-runner-dind" in result.output
    minted = deployed_site.run("secrets", "rotate", "dicom_bot_gitlab_token", "--timeout", "60")
    assert minted.exit_code == 1 and "bidsflux gitlab tokens rotate dicom_bot" in minted.output
    assert _ours(docker_client, stack, "runner_dind_config") == before


@pytest.fixture
def probe_proxy(deployed_site: SiteUnderTest, docker_client: Any) -> Any:
    """127.0.0.1:PORT forwards each connection to the runner's tasks over the overlay network
    (this kernel has no IPVS, so no routing mesh: a proxy on the attachable network stands in
    for the site's reverse proxy)."""
    port = free_port()
    script = (f"#!/bin/sh\nfor i in $(seq 1 60); do nc tasks.{deployed_site.stack}_gitlab-runner 9252 && exit 0; "
              "usleep 50000; done\nexit 1\n")
    container = docker_client.containers.run(
        deployed_site.images["gitlab"], entrypoint=["/bin/sh", "-c"],
        command=[f"printf '%s' '{script}' > /fwd.sh && chmod +x /fwd.sh && exec nc -ll -p 8080 -e /fwd.sh"],
        network=deployed_site.network, ports={"8080/tcp": ("127.0.0.1", port)}, detach=True,
        name=f"{deployed_site.stack}-probe-proxy", labels={"io.bidsflux.test": deployed_site.stack})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
                break
            except OSError:
                time.sleep(0.3)
        yield port
    finally:
        container.remove(force=True)


def test_rotation_under_probe_has_no_failures(deployed_site: SiteUnderTest, docker_client: Any, probe_proxy: int,
                                             runner_configs_generated: None) -> None:
    stack = deployed_site.stack
    service = f"{stack}_gitlab-runner"
    before = _secret_refs(docker_client, service, "runner_processing_config")
    failures: list[str] = []
    count = 0
    stop = threading.Event()

    def probe() -> None:
        nonlocal count
        while not stop.is_set():
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{probe_proxy}/metrics", timeout=3).read()
                if b"gitlab_runner_up" not in body:
                    failures.append(f"bad body {body[:60]!r}")
            except OSError as exc:
                failures.append(str(exc))
            count += 1
            time.sleep(0.1)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        result = deployed_site.run("secrets", "rotate", "runner_processing_config", "--timeout", "120")
    finally:
        time.sleep(1)
        stop.set()
        thread.join(10)
    assert result.exit_code == 0, result.output
    after = _secret_refs(docker_client, service, "runner_processing_config")
    assert after == [f"{stack}_runner_processing_config_v2"] and before == [f"{stack}_runner_processing_config_v1"]
    assert _ours(docker_client, stack, "runner_processing_config") == [f"{stack}_runner_processing_config_v2"]
    assert "note for runner_processing_config" in result.output
    assert count > 20
    assert failures == [], f"{len(failures)} of {count} probes failed: {failures[:5]}"
    assert deployed_site.run("plan").exit_code == 0


def _rotate_killed_after(site: SiteUnderTest, logical: str, step: str) -> str:
    """Run rotation as a process and SIGKILL it as soon as it reports `step`."""
    proc = subprocess.Popen([BIDSFLUX, "secrets", "rotate", logical, "--site", str(site.site_file), "--timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(f"step: {step}"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(30)
    site.outputs.append("".join(seen))
    return "".join(seen)


@pytest.mark.parametrize("step", ["created", "updating service", "service", "removed"])
def test_rotation_killed_at_each_step_converges(deployed_site: SiteUnderTest, docker_client: Any, step: str,
                                                runner_configs_generated: None) -> None:
    stack = deployed_site.stack
    logical = "runner_dind_config"
    service = f"{stack}_gitlab-runner-dind"
    output = _rotate_killed_after(deployed_site, logical, step)
    assert f"step: {step}" in output, output
    # Whatever the kill interrupted, every reference points at an existing secret.
    existing = {s.name for s in docker_client.secrets.list()}
    assert set(_secret_refs(docker_client, service)) <= existing
    result = deployed_site.run("secrets", "rotate", logical, "--timeout", "120")
    assert result.exit_code == 0, result.output
    versions = _ours(docker_client, stack, logical)
    assert len(versions) == 1, versions
    assert _secret_refs(docker_client, service, logical) == versions
    tasks = docker_client.api.tasks(filters={"service": service, "desired-state": "running"})
    assert [t["Status"]["State"] for t in tasks] == ["running"]
    assert deployed_site.run("plan").exit_code == 0


def test_gc_removes_only_our_unreferenced_versions(deployed_site: SiteUnderTest, docker_client: Any) -> None:
    stack = deployed_site.stack
    before = {s.name for s in docker_client.secrets.list(filters={"label": f"io.bidsflux.stack={stack}"})}
    labels = {"io.bidsflux.managed": "true", "io.bidsflux.stack": stack, "io.bidsflux.secret": "s3_id",
              "io.bidsflux.version": "0"}
    stale = docker_client.secrets.create(name=f"{stack}_s3_id_v0", data=b"x", labels=labels)
    foreign = docker_client.secrets.create(name=f"{stack}_not_ours_v0", data=b"x")
    other_stack = docker_client.secrets.create(name=f"{stack}x_s3_id_v0", data=b"x",
                                               labels={**labels, "io.bidsflux.stack": f"{stack}x"})
    try:
        result = deployed_site.run("secrets", "gc")
        assert result.exit_code == 0, result.output
        names = {s.name for s in docker_client.secrets.list()}
        assert stale.name not in names
        assert {foreign.name, other_stack.name} <= names
        assert before <= names  # current versions (used or newest) all stay
        assert deployed_site.run("secrets", "gc").output.strip() == "nothing to remove"
    finally:
        for s in (stale, foreign, other_stack):
            try:
                s.remove()
            except Exception:  # noqa: BLE001 - already removed by gc
                pass


def test_secrets_list_shows_versions_not_values(deployed_site: SiteUnderTest) -> None:
    result = deployed_site.run("secrets", "list", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "gitlab_root_password" in result.output and "runner_processing_config" in result.output


def test_ci_deploy_that_would_restart_its_runner_is_handed_off(site_backup: SiteUnderTest, docker_client: Any) -> None:
    stack = site_backup.stack
    service = f"{stack}_gitlab-runner"
    version = docker_client.api.inspect_service(service)["Version"]["Index"]
    # A change to the processing runner only (the CI job runs on it).
    from swarm_site import _yaml

    path = site_backup.root / "stack" / "bidsflux.stack.yml"
    saved = path.read_text()
    data = _yaml.load(saved)
    data["services"]["gitlab-runner"]["command"][-1] = "/tmp"
    with path.open("w") as fh:
        _yaml.dump(data, fh)
    try:
        assert path.read_text() != saved
        env = {"GITLAB_CI": "true", "CI_RUNNER_DESCRIPTION": "processing runner for BIDS conversion and pipelines"}
        for image, code in ((site_backup.images["handoff-ok"], 0), (site_backup.images["handoff-fail"], 1)):
            result = site_backup.run("deploy", "--timeout", "60", env={**env, "BIDSFLUX_HANDOFF_IMAGE": image})
            assert result.exit_code == code, result.output
            assert "handed off to the swarm job" in result.output
            assert f"bidsflux swarm apply-rendered --stack {stack}" in result.output  # the job's own log
            assert f"--service {service}" in result.output
            # The CI process itself did not update the runner: only the job would.
            assert docker_client.api.inspect_service(service)["Version"]["Index"] == version
        assert not docker_client.api.services(filters={"label": f"io.bidsflux.handoff={stack}"})
        # Outside CI the same deploy runs in-process.
        assert site_backup.run("plan").exit_code == 2
    finally:
        path.write_text(saved)


def test_hand_off_job_deploys_with_the_pull_login_and_leaves_no_secret(site_backup: SiteUnderTest, docker_client: Any,
                                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the login the job's `docker stack deploy --with-registry-auth` would hand the
    # services an empty credential for the site registry (the site-built image could not be pulled).
    import io
    import uuid

    from rich.console import Console

    from bidsflux.images.dayzero import registry_login
    from bidsflux.swarm.deploy import docker_config, launch_handoff, load_context, poll_handoff

    ctx = load_context(str(site_backup.site_file), None)
    token = "gldt-" + uuid.uuid4().hex
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))  # the login below is the only one
    with registry_login("registry.bfx.test:5050", "gitlab+deploy-token-7", token):
        name = launch_handoff(ctx, [f"{ctx.stack}_gitlab-runner"], site_backup.images["handoff-ok"], 60, docker_config())
    out = io.StringIO()
    assert poll_handoff(ctx, name, 180, Console(file=out, width=300)) == 0, out.getvalue()
    assert "handoff job: logged in to registry.bfx.test:5050" in out.getvalue()
    assert token not in out.getvalue()
    assert not [s for s in docker_client.secrets.list() if s.name == name]  # removed with the job


def test_bad_input_gives_the_fix_not_a_traceback(fresh_site: SiteUnderTest, no_docker_env: dict[str, str]) -> None:
    result = fresh_site.run("bootstrap", "--yes", "--skip-gitlab")
    assert result.exit_code == 1
    assert "does not exist" in result.output and "--create-dirs" in result.output
    with __import__("socket").socket() as busy:
        busy.bind(("0.0.0.0", fresh_site.ports["https"]))
        busy.listen()
        result = fresh_site.run("bootstrap", "--yes", "--skip-gitlab", "--create-dirs")
        assert result.exit_code == 1
        assert f"port {fresh_site.ports['https']}" in result.output and "already in use" in result.output
    for args in (("plan",), ("deploy",), ("bootstrap", "--yes", "--skip-gitlab"), ("secrets", "list")):
        result = fresh_site.run(*args, env=no_docker_env)
        assert result.exit_code == 1, result.output
        assert "cannot reach the Docker engine" in result.output and "DOCKER_HOST" in result.output


def test_no_secret_value_in_any_output(deployed_site: SiteUnderTest) -> None:
    values = deployed_site.secret_values()
    assert len(values) >= 6
    text = "\n".join(deployed_site.outputs)
    assert len(deployed_site.outputs) >= 8
    for name, value in values.items():
        assert value not in text, f"the value of {name} appears in bidsflux output"
