"""From inside the storescp endpoint's swarm task, the indexer's three destinations answer under
their public names: GitLab's HTTPS (the proxy), GitLab's SSH (GitLab's own published port) and
S3's HTTPS (the proxy).

The stack is the rendered one, cut to its networking: the dicom_endpoint, proxy and gitlab
services keep their rendered extra_hosts, ports (host mode, test ports), network and aliases and
environment; only images and commands are stand-ins. The proxy is the real Caddy with a
certificate from bidsflux's own CA code; GitLab's SSH is Debian's OpenSSH (tests/gitlab_emulator/sshd);
the endpoint runs the same `ssh-keyscan -p $GIT_SSH_PORT $CI_SERVER_HOST` as upstream's entrypoint.sh
and Python's HTTPS client with the rendered SSL_CERT_FILE."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from swarm_site import make_site, remove_stack

from bidsflux.proxy import certs
from bidsflux.swarm.engine import ensure_network, stack_deploy
from support import REPO_ROOT, build_folder_image

pytestmark = pytest.mark.integration

GITLAB_HOST, S3_HOST = "gitlab.bfxreach", "s3.bfxreach"
STACK_LABEL = "com.docker.stack.namespace"
IDLE = ["sh", "-c", "trap 'exit 0' TERM; sleep infinity & wait"]
SSHD = ["sh", "-c", "ssh-keygen -A >/dev/null && exec /usr/sbin/sshd -D -e -p 22"]
HTTPS_GET = """
import sys, urllib.request
# Default context: verifies against SSL_CERT_FILE, which the rendered environment sets.
for name in sys.argv[2:]:
    print(name, urllib.request.urlopen(f"https://{name}:{sys.argv[1]}/", timeout=10).read().decode())
"""


def _caddyfile(https: int) -> str:
    sites = "".join(
        f"https://{name}:{https} {{\n\ttls /certs/site.crt /certs/site.key\n\trespond \"{what}\"\n}}\n"
        for name, what in ((GITLAB_HOST, "gitlab-https"), (S3_HOST, "s3-https")))
    return "{\n\tadmin off\n\tauto_https off\n}\n" + sites


def _networking_only(svc: dict[str, Any], image: str, command: list[str]) -> dict[str, Any]:
    """The rendered service's networking (ports, networks, aliases, extra_hosts, environment)
    with a stand-in image; secrets, mounts, healthchecks and placement dropped."""
    keep = {k: svc[k] for k in ("ports", "networks", "extra_hosts", "environment", "hostname") if k in svc}
    return {**keep, "image": image, "command": command, "deploy": {"replicas": 1}}


def _running(client: Any, stack: str, services: list[str], timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for c in client.containers.list(filters={"label": f"{STACK_LABEL}={stack}", "status": "running"}):
            found[c.labels["com.docker.swarm.service.name"][len(stack) + 1:]] = c
        if set(services) <= set(found):
            return found
        if time.monotonic() > deadline:
            tasks = {s: [t.get("Status") for t in client.services.get(f"{stack}_{s}").tasks()] for s in services}
            raise AssertionError(f"tasks did not start: {tasks}")
        time.sleep(1)


def test_endpoint_task_reaches_gitlab_https_and_ssh_and_s3(tmp_path: Path, docker_client: Any,
                                                            stand_in_images: dict[str, str]) -> None:
    sshd_image = build_folder_image(docker_client, "gitlab-sshd", REPO_ROOT / "tests/gitlab_emulator/sshd")
    site = make_site(tmp_path, docker_client, stand_in_images, kind="storescp")

    def names(d: Any) -> None:
        d["hosts"]["gitlab"], d["hosts"]["s3"] = GITLAB_HOST, S3_HOST
        d["indexer"]["storage_remote"] = f"s3://{S3_HOST}/dicoms/{{ReferringPhysicianName}}"

    site.edit(names)
    result = site.run("render", "--secret-versions", "initial")
    assert result.exit_code == 0, result.output
    rendered = yaml.safe_load(result.output)
    services = rendered["services"]
    https, ssh = site.ports["https"], site.ports["gitlab_ssh"]
    endpoint = services["dicom_endpoint"]
    assert sorted(endpoint["extra_hosts"]) == [f"{GITLAB_HOST}:host-gateway", f"{S3_HOST}:host-gateway"]

    folder = tmp_path / "proxy"
    folder.mkdir()
    ca_cert, ca_key = certs.make_ca("bidsflux reach test CA", 2)
    cert, key = certs.issue(ca_cert, ca_key, [GITLAB_HOST, S3_HOST], 2)
    (folder / "site.crt").write_text(cert)
    (folder / "site.key").write_text(key)
    (folder / "ca.crt").write_text(ca_cert)
    (folder / "Caddyfile").write_text(_caddyfile(https))
    ca_path = endpoint["environment"]["SSL_CERT_FILE"]

    proxy = _networking_only(services["proxy"], stand_in_images["caddy"],
                             ["caddy", "run", "--config", "/certs/Caddyfile", "--adapter", "caddyfile"])
    proxy["volumes"] = [{"type": "bind", "source": str(folder), "target": "/certs", "read_only": True}]
    gitlab = _networking_only(services["gitlab"], sshd_image, SSHD)
    gitlab.pop("hostname", None)  # the real image's hostname is GitLab's; irrelevant to reach
    client = _networking_only(endpoint, sshd_image, IDLE)
    client["volumes"] = [{"type": "bind", "source": str(folder / "ca.crt"), "target": ca_path, "read_only": True}]
    stack_file = {"services": {"proxy": proxy, "gitlab": gitlab, "dicom_endpoint": client},
                  "networks": rendered["networks"]}
    try:
        ensure_network(docker_client, site.network, site_subnet(site))
        stack_deploy(yaml.safe_dump(stack_file, sort_keys=False), site.stack)
        tasks = _running(docker_client, site.stack, ["proxy", "gitlab", "dicom_endpoint"])
        task = tasks["dicom_endpoint"]
        hosts = task.exec_run(["cat", "/etc/hosts"]).output.decode()
        assert f"\t{GITLAB_HOST}" in hosts and f"\t{S3_HOST}" in hosts, hosts

        # git over SSH: upstream's keyscan, with the task's rendered CI_SERVER_HOST and GIT_SSH_PORT,
        # gets the host key of GitLab's sshd (not of anything else answering that name).
        host_key = tasks["gitlab"].exec_run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).output.decode().split()[1]
        scan = None
        for _ in range(10):  # sshd generates its host keys before it listens
            scan = task.exec_run(["sh", "-c", 'ssh-keyscan -T 5 -t ed25519 -p "$GIT_SSH_PORT" "$CI_SERVER_HOST"'])
            if host_key in scan.output.decode():
                break
            time.sleep(1)
        assert scan is not None and f"[{GITLAB_HOST}]:{ssh} ssh-ed25519 {host_key}" in scan.output.decode(), scan

        # HTTPS to GitLab and S3 under their names, verified against the site CA the rendered
        # environment names; the proxy answers per name.
        got = None
        for _ in range(10):  # Caddy loads its certificate before it serves
            got = task.exec_run(["python3", "-c", HTTPS_GET, str(https), GITLAB_HOST, S3_HOST])
            if got.exit_code == 0:
                break
            time.sleep(1)
        assert got is not None and got.exit_code == 0, got.output.decode()[-1500:]
        assert got.output.decode().split("\n")[:2] == [f"{GITLAB_HOST} gitlab-https", f"{S3_HOST} s3-https"]

        # The fault this fixes: the name's overlay alias is the proxy, which has no SSH.
        alias = task.exec_run(["python3", "-c", "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)",
                               "proxy", str(ssh)])
        assert alias.exit_code != 0

        # The Mercure module: Mercure 0.4.1's processor starts it with docker-py's containers.run
        # (network_mode None when network_enabled, cap_drop ALL, **docker_arguments), on the
        # default bridge of the same node; the rendered docker_arguments carry the same names.
        rendered_mercure = site.run("mercure", "render")
        assert rendered_mercure.exit_code == 0, rendered_mercure.output
        arguments = json.loads(json.loads(rendered_mercure.output)["modules"]["dicom_indexer"]["docker_arguments"])
        arguments.pop("command")
        env = {"CI_SERVER_HOST": GITLAB_HOST, "GIT_SSH_PORT": str(ssh), "SSL_CERT_FILE": ca_path}
        probe = ('ssh-keyscan -T 5 -t ed25519 -p "$GIT_SSH_PORT" "$CI_SERVER_HOST" && '
                 f'python3 -c \'{HTTPS_GET}\' {https} {GITLAB_HOST} {S3_HOST}')
        module = docker_client.containers.run(
            sshd_image, ["sh", "-c", probe], environment=env, network_mode=None, cap_drop=["ALL"],
            volumes={str(folder / "ca.crt"): {"bind": ca_path, "mode": "ro"}}, labels={STACK_LABEL: site.stack},
            detach=True, **arguments)
        try:
            assert module.wait(timeout=60)["StatusCode"] == 0, module.logs().decode()[-1500:]
            out = module.logs(stderr=False).decode()
            assert f"[{GITLAB_HOST}]:{ssh} ssh-ed25519 {host_key}" in out, out
            assert f"{GITLAB_HOST} gitlab-https" in out and f"{S3_HOST} s3-https" in out, out
        finally:
            module.remove(force=True)
    finally:
        remove_stack(docker_client, site.stack, site.network)


def site_subnet(site: Any) -> str:
    return str(yaml.safe_load(site.site_file.read_text())["swarm"]["network"]["subnet"])
