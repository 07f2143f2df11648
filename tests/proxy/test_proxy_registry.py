"""A real registry (Debian's docker-registry, the program of registry:2) behind the real Caddy with
the site CA: `docker login`, `push` and `pull` through the machine's Docker daemon over TLS, with
the CA installed the way bidsflux installs it on a node (the node-trust service's own script
writing <certs.d>/<registry>/ca.crt).

Docker treats a registry on 127.0.0.0/8 as insecure and would skip verification, so the proxy
and the registry run in a network namespace this test makes, at an address on its own veth
link: there Docker verifies, and the test shows it by failing before the CA is installed."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from bidsflux.proxy.apply import run
from bidsflux.proxy.caddyfile import CaddyOptions
from bidsflux.site.render import node_trust_script
from support import require
from tls_front import caddy_binary

pytestmark = pytest.mark.integration

CERTS_D = Path("/etc/docker/certs.d")


def _sh(*args: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout, env=env)


def _free_link_net() -> ipaddress.IPv4Network:
    used = [ipaddress.ip_network(line.split()[0], strict=False)
            for line in _sh("ip", "-4", "route").stdout.splitlines() if line and line.split()[0][0].isdigit()]
    while True:
        net = ipaddress.ip_network(f"10.{random.randint(240, 249)}.{random.randint(0, 255)}.{4 * random.randint(0, 63)}/30")
        if not any(net.overlaps(u) for u in used):
            return net


@contextlib.contextmanager
def namespace() -> Iterator[tuple[str, str]]:
    """(netns name, the namespace's address): a veth link from this host into a new namespace."""
    require(os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("nsenter") is not None,
            "needs root, ip and nsenter to make a network namespace")
    tag = uuid.uuid4().hex[:6]
    name, host_if, ns_if = f"bfxtls-{tag}", f"bth{tag}", f"btn{tag}"
    net = _free_link_net()
    host_ip, ns_ip = str(net[1]), str(net[2])
    _sh("ip", "netns", "add", name)
    try:
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _sh("ip", "link", "set", ns_if, "netns", name)
        _sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        for cmd in (["ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if], ["ip", "link", "set", ns_if, "up"],
                    ["ip", "link", "set", "lo", "up"]):
            _sh("ip", "netns", "exec", name, *cmd)
        yield name, ns_ip
    finally:
        _sh("ip", "link", "del", host_if, check=False)
        _sh("ip", "netns", "del", name, check=False)


def _in_ns(ns: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["nsenter", f"--net=/var/run/netns/{ns}", *args], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env=env)


def _wait_port(ip: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=0.5):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{proc.args} did not listen on {ip}:{port}: {log.read_text()[-1500:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _htpasswd(user: str, password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        # distribution's htpasswd backend accepts bcrypt only.
        return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"


def test_docker_login_push_pull_through_the_proxy_with_the_ca_from_node_trust(tmp_path: Path, repo_copy: Path) -> None:
    import docker

    registry_bin = shutil.which("docker-registry")
    require(registry_bin is not None, "docker-registry is not installed (apt-get install docker-registry)")
    caddy = caddy_binary()
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        require(False, f"no Docker engine: {exc}")
    import swarm_images

    image = swarm_images.build(client, "storescp")  # 2 MB of busybox: pushed, and runs node-trust's script
    password = uuid.uuid4().hex
    with namespace() as (ns, ip):
        # The site as bidsflux renders it, with the registry at the namespace's address on 443.
        site: dict[str, Any] = yaml.safe_load((repo_copy / "stack" / "site.yml").read_text())
        site["hosts"]["registry"] = ip
        site["paths"]["state_dir"]["path"] = str(tmp_path / "state")
        site["secrets"]["file"] = str(tmp_path / "state" / "secrets.env")
        site["tls"]["node_trust_dir"] = str(CERTS_D)
        folder = tmp_path / "state" / "proxy"
        options = CaddyOptions(80, 443, {"registry": "127.0.0.1:5000"}, cert_dir=str(folder / "certs"), admin="127.0.0.1:2019")
        run(site, tmp_path, Console(quiet=True), None, None, options=options)

        (tmp_path / "htpasswd").write_text(_htpasswd("ci", password))
        (tmp_path / "registry.yml").write_text(yaml.safe_dump({
            "version": 0.1, "log": {"level": "info"},
            "storage": {"filesystem": {"rootdirectory": str(tmp_path / "registry-data")}},
            "http": {"addr": "127.0.0.1:5000", "secret": uuid.uuid4().hex},
            "auth": {"htpasswd": {"realm": "bidsflux-test", "path": str(tmp_path / "htpasswd")}}}))
        registry = _in_ns(ns, [registry_bin, "serve", str(tmp_path / "registry.yml")], tmp_path / "registry.log")
        env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "caddy-data"), "XDG_CONFIG_HOME": str(tmp_path / "caddy-config")}
        proxy = _in_ns(ns, [caddy, "run", "--config", str(folder / "Caddyfile"), "--adapter", "caddyfile"],
                       tmp_path / "caddy.log", env)
        trust = CERTS_D / ip
        assert not trust.exists(), f"{trust} exists before the test: another run uses this address"
        certs_d_existed = CERTS_D.exists()
        cli_env = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "docker-config")}  # credentials stay in the test
        ref = f"{ip}/bidsflux-test/probe:{uuid.uuid4().hex[:8]}"
        node_trust = None
        try:
            _wait_port(ip, 443, proxy, tmp_path / "caddy.log")
            login = ["docker", "login", "--username", "ci", "--password-stdin", ip]
            # Before the CA is on this node Docker refuses the proxy's certificate.
            before = subprocess.run(login, input=password, capture_output=True, text=True, env=cli_env, timeout=120)
            assert before.returncode != 0 and "x509" in before.stderr, before.stderr

            # node-trust exactly as the stack runs it: the rendered script, the bundle as its secret.
            node_trust = client.containers.run(
                image, ["sh", "-c", node_trust_script(site)], detach=True, remove=True, name=f"bfx-node-trust-{ns}",
                volumes={"/etc": {"bind": "/host/etc", "mode": "rw"},
                         str(folder / "ca.crt"): {"bind": "/run/secrets/site-ca.crt", "mode": "ro"}})
            deadline = time.monotonic() + 30
            while not (trust / "ca.crt").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert (trust / "ca.crt").read_text() == (folder / "ca.crt").read_text()

            after = subprocess.run(login, input=password, capture_output=True, text=True, env=cli_env, timeout=120)
            assert after.returncode == 0 and "Login Succeeded" in after.stdout, after.stderr
            client.images.get(image).tag(ref)
            push = _sh("docker", "push", ref, env=cli_env, check=False, timeout=300)
            assert push.returncode == 0, push.stderr + push.stdout
            pushed_id = client.images.get(ref).id
            client.images.remove(ref)
            pull = _sh("docker", "pull", ref, env=cli_env, check=False, timeout=300)
            assert pull.returncode == 0, pull.stderr + pull.stdout
            assert client.images.get(ref).id == pushed_id
            # Wrong credentials are refused by the registry behind the proxy, not by TLS.
            wrong = subprocess.run(["docker", "login", "--username", "ci", "--password-stdin", ip], input="wrong",
                                   capture_output=True, text=True, env=cli_env, timeout=120)
            assert wrong.returncode != 0 and ("401" in wrong.stderr or "unauthorized" in wrong.stderr.lower()), wrong.stderr
        finally:
            if node_trust is not None:
                with contextlib.suppress(Exception):
                    node_trust.stop(timeout=5)
            with contextlib.suppress(Exception):
                client.images.remove(ref)
            shutil.rmtree(trust, ignore_errors=True)
            if not certs_d_existed:
                with contextlib.suppress(OSError):
                    CERTS_D.rmdir()  # only when empty: another test may be using it now
            _stop(proxy)
            _stop(registry)
