"""A real two-node swarm (two new Docker daemons in network namespaces, see twonode.py): bootstrap
on the data server, join from the processing server, deploy places the processing runner there;
a stopped worker shows in health with the services that lost their node; moving the processing
role in site.yml shows in the plan and deploy moves the task.

The tests run in file order on one module-scoped swarm (each step starts from where the previous
one left the site, as an administrator would)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from swarm_site import SiteUnderTest, make_site
from twonode import TwoNodes, remove_leftovers

from support import REPO_ROOT, cli, require

pytestmark = pytest.mark.integration


@dataclass
class Cluster:
    nodes: TwoNodes
    site: SiteUnderTest
    manager: Any  # docker clients of the test daemons
    worker: Any
    bootstrap_output: str
    join_output: str
    deploy_output: str

    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.nodes.manager.host}

    def run(self, *args: str) -> Any:
        return self.site.run(*args, env=self.env())

    def placement(self) -> dict[str, set[str]]:
        """Service -> host names of the nodes its running tasks are on."""
        hosts = {n.id: n.attrs["Description"]["Hostname"] for n in self.manager.nodes.list()}
        out: dict[str, set[str]] = {}
        for svc in self.manager.services.list(filters={"label": f"com.docker.stack.namespace={self.site.stack}"}):
            running = [t for t in svc.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running"]
            out[svc.name.removeprefix(f"{self.site.stack}_")] = {hosts.get(t.get("NodeID"), "?") for t in running}
        return out

    def health(self) -> tuple[int, dict[str, Any]]:
        result = self.run("health", "--check", "swarm", "--format", "json")
        return result.exit_code, json.loads(result.stdout)["checks"][0]


def _python_cli(nodes: TwoNodes, daemon: Any, *args: str) -> Any:
    """bidsflux as a separate process inside a test host's network namespace (its ports, its daemon)."""
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "scripts"), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "250"}
    return nodes.nsenter(daemon, sys.executable, "-m", "bidsflux", *args, env=env, timeout=240)


def _quick_stop(template: Path) -> None:
    """Tasks get 1 s to stop instead of Docker's 10 s (test timing: daemons and tasks stop often here)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load(template.read_text())
    for svc in data["services"].values():
        svc["stop_grace_period"] = "1s"
    with template.open("w") as fh:
        yaml.dump(data, fh)


def _wait(what: str, predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, stand_in_images: dict[str, str]) -> Iterator[Cluster]:
    require(os.geteuid() == 0, "two test Docker daemons need root")
    for tool in ("unshare", "nsenter", "ip", "iptables", "dockerd"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    remove_leftovers()
    tmp = tmp_path_factory.mktemp("two-nodes")
    nodes = TwoNodes.create(tmp)
    try:
        nodes.setup()
        manager, worker = nodes.manager.client(), nodes.worker.client()
        data_images = [stand_in_images[k] for k in ("gitlab", "runner", "minio", "storescp", "caddy", "haproxy")]
        nodes.load_images(nodes.manager, data_images)
        # node-trust (the TLS CA for Docker) is global: it runs on the worker too.
        nodes.load_images(nodes.worker, [stand_in_images["runner"], stand_in_images["caddy"]])
        site = make_site(tmp, docker_client, stand_in_images)

        def two_servers(d: Any) -> None:
            d["nodes"] = {nodes.manager.name: {"roles": ["data"]}, nodes.worker.name: {"roles": ["processing"]}}
            d["swarm"]["advertise_addr"] = nodes.manager.addr

        site.edit(two_servers)
        _quick_stop(site.root / "stack" / "bidsflux.stack.yml")
        boot = _python_cli(nodes, nodes.manager, "bootstrap", "--site", str(site.site_file), "--create-dirs", "--yes",
                           "--skip-gitlab", "--timeout", "120")
        assert boot.returncode == 0, boot.stdout + boot.stderr
        # Seconds, not Docker's 5 s heartbeat (a node is down after a few missed ones): test timing only.
        manager.swarm.update(dispatcher_heartbeat_period=1_000_000_000)
        join_cmd = cli("swarm", "join-command", env={"DOCKER_HOST": nodes.manager.host})
        assert join_cmd.exit_code == 0, join_cmd.output
        words = join_cmd.output.splitlines()[0].split()
        token, addr = words[words.index("--token") + 1], words[-1]
        joined = _python_cli(nodes, nodes.worker, "swarm", "join", "--token", token, addr, "--site", str(site.site_file),
                             "--advertise-addr", nodes.worker.addr, "--yes")
        assert joined.returncode == 0, joined.stdout + joined.stderr
        deployed = site.run("deploy", "--timeout", "120", env={"DOCKER_HOST": nodes.manager.host})
        assert deployed.exit_code == 0, deployed.output
        yield Cluster(nodes, site, manager, worker, boot.stdout, joined.stdout, deployed.output)
    finally:
        nodes.teardown()


def test_bootstrap_on_the_data_server_waits_for_the_processing_server(cluster: Cluster) -> None:
    out, worker = cluster.bootstrap_output, cluster.nodes.worker.name
    assert "./scripts/bootstrap.sh --join --token SWMTKN-" in out
    assert f"node {worker} (roles: processing) has not joined the swarm" in out
    assert f"no ready node carries processing yet: {cluster.site.stack}_gitlab-runner" in out
    assert f"labelled bidsflux.role.data=true on node {cluster.nodes.manager.name}" in out


def test_join_runs_its_preflight_and_deploy_places_the_runner_on_the_worker(cluster: Cluster) -> None:
    manager, worker = cluster.nodes.manager.name, cluster.nodes.worker.name
    assert f"manager {cluster.nodes.manager.addr}:2377/tcp reachable" in cluster.join_output
    assert f"{worker} carries processing in site.yml" in cluster.join_output
    assert "SWMTKN" not in cluster.join_output  # the token is a credential
    assert f"labelled bidsflux.role.processing=true on node {worker}" in cluster.deploy_output
    placement = cluster.placement()
    assert placement["gitlab-runner"] == {worker}, placement
    for service in ("gitlab", "gitlab-runner-dind", "minio", "dicom_endpoint"):
        assert placement[service] == {manager}, placement
    plan = cluster.run("plan")
    assert plan.exit_code == 0 and "No changes" in plan.output, plan.output


def test_the_overlay_network_spans_both_servers(cluster: Cluster) -> None:
    runner = next(c for c in cluster.worker.containers.list() if c.name.startswith(f"{cluster.site.stack}_gitlab-runner."))
    # From the processing server's runner to GitLab's task on the data server, over the overlay.
    code, out = runner.exec_run(["wget", "-q", "-O", "-", "http://tasks.gitlab/"])
    assert code == 0 and out.decode().strip() == "ok", out
    assert cluster.site.network in {n.name for n in cluster.worker.networks.list()}


def test_gitlab_dev_shm_is_a_tmpfs_of_the_size_in_site_yml(cluster: Cluster) -> None:
    gitlab = next(c for c in cluster.manager.containers.list() if c.name.startswith(f"{cluster.site.stack}_gitlab."))
    code, out = gitlab.exec_run(["sh", "-c", "grep ' /dev/shm ' /proc/mounts"])
    assert code == 0 and "tmpfs" in out.decode() and "size=262144k" in out.decode(), out


def test_stopped_worker_fails_health_naming_node_and_services_then_recovers(cluster: Cluster) -> None:
    worker, stack = cluster.nodes.worker.name, cluster.site.stack
    cluster.nodes.worker.stop()
    try:
        def down() -> list[str]:
            code, swarm = cluster.health()
            return [d for d in swarm["details"] if f"node {worker} is down" in d] if code == 1 else []

        line = _wait(f"health to report {worker} down", down, 60)[0]
        assert f"services without a node: {stack}_gitlab-runner" in line, line
        assert f"{stack}_gitlab," not in line and f"{stack}_minio" not in line, line
    finally:
        cluster.nodes.worker.start()

    def healthy() -> bool:
        code, swarm = cluster.health()
        return code == 0 and swarm["status"] != "fail"

    _wait("health to recover once the worker is back", healthy, 120)
    assert cluster.placement()["gitlab-runner"] == {worker}


def test_moving_the_processing_role_shows_in_plan_and_deploy_moves_the_task(cluster: Cluster) -> None:
    manager, worker, stack = cluster.nodes.manager.name, cluster.nodes.worker.name, cluster.site.stack

    def move(d: Any) -> None:
        d["nodes"] = {manager: {"roles": ["data", "processing"]}}

    cluster.site.edit(move)
    plan = cluster.run("plan", "--format", "json")
    assert plan.exit_code == 2, plan.output
    changes = {(c["kind"], c["action"], c["name"]) for c in json.loads(plan.output)["changes"]}
    assert changes == {("node_label", "create", f"{manager}: bidsflux.role.processing=true"),
                       ("node_label", "remove", f"{worker}: bidsflux.role.processing=true")}
    text = cluster.run("plan").output
    assert f"moves {stack}_gitlab-runner off {worker}" in text and f"places {stack}_gitlab-runner on {manager}" in text
    deployed = cluster.run("deploy", "--timeout", "120")
    assert deployed.exit_code == 0, deployed.output
    assert cluster.placement()["gitlab-runner"] == {manager}
    assert cluster.run("plan").exit_code == 0


def test_what_a_killed_run_left_is_removed_by_name(tmp_path: Path) -> None:
    require(os.geteuid() == 0 and shutil.which("ip") is not None, "namespaces and links need root and iproute2")
    import subprocess

    from twonode import RUN_DIR, sh

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pytest process that no longer exists
    left = TwoNodes.create(tmp_path)
    (RUN_DIR / f"bfxn-{left.id}.owner").write_text(json.dumps({"pid": gone.pid, "bridge": left.bridge, "rules": []}))
    sh("ip", "link", "add", left.bridge, "type", "bridge")
    sh("ip", "netns", "add", left.manager.netns)
    left.manager.data_root.mkdir(parents=True)
    try:
        assert left.id in remove_leftovers()
        assert left.manager.netns not in sh("ip", "netns", "list").stdout
        assert sh("ip", "link", "show", left.bridge, check=False).returncode != 0
        assert not left.manager.data_root.exists() and not (RUN_DIR / f"bfxn-{left.id}.owner").exists()
    finally:
        sh("ip", "netns", "delete", left.manager.netns, check=False)
        sh("ip", "link", "delete", left.bridge, check=False)
