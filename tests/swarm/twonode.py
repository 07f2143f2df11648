"""Two Docker daemons on this machine, each in its own network and UTS namespace (its own host
name), joined by a test bridge: a real two-node swarm for the node tests (recipe:
shared/recipes/ENVIRONMENT.md). The host's own daemon is never touched.

Everything this creates is named `bfxn-<id>` (namespaces, data roots, sockets, pid files) or
`bfxn<id>…` (bridge and veth links, which have 15 characters at most), and is recorded in an
owner file holding the pytest process id, so `remove_leftovers()` can clean what a killed run left
without touching a run still in progress."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "bfxn-"
RUN_DIR = Path("/run")
DATA_DIR = Path("/var/lib")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 inside 10.0.0.0/8 that no route or address of this host overlaps."""
    used = []
    for line in sh("ip", "-4", "-o", "addr", "show").stdout.splitlines() + sh("ip", "-4", "route").stdout.splitlines():
        for word in line.split():
            if "/" in word and word[0].isdigit():
                used.append(ipaddress.ip_network(word, strict=False))
    while True:
        net = ipaddress.ip_network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net


@dataclass
class Daemon:
    name: str  # also its host name and its network namespace
    addr: str
    netns: str
    data_root: Path
    exec_root: Path
    pidfile: Path
    socket: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.host, timeout=60)

    def start(self, timeout: float = 60) -> None:
        # unshare --uts: a host name of its own (what `docker node ls` shows); nsenter --net, not
        # `ip netns exec`, which remounts /sys and makes dockerd fail (ENVIRONMENT.md).
        # --shutdown-timeout: its containers get 2 s to stop when the daemon stops (test daemons only).
        cmd = ["unshare", "--uts", "sh", "-c",
               'hostname "$0" && exec nsenter --net=/var/run/netns/"$0" dockerd --data-root "$1" --exec-root "$2" '
               '--pidfile "$3" -H "unix://$4" --iptables=false --bridge=none --shutdown-timeout 2',
               self.name, str(self.data_root), str(self.exec_root), str(self.pidfile), str(self.socket)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd {self.name} exited: {self.log.read_text()[-2000:]}")
            if self.socket.exists() and sh("docker", "-H", self.host, "info", "--format", "{{.ID}}", check=False).returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError(f"dockerd {self.name} did not answer within {timeout:.0f}s: {self.log.read_text()[-2000:]}")

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None:  # our child: wait() reaps it (a zombie still answers kill -0)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
        else:
            pid = _read_pid(self.pidfile)
            if pid:
                _terminate(pid, timeout)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(pid: int, timeout: float) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _unmount_below(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m == str(path) or m.startswith(f"{path}/")), key=len, reverse=True):
        sh("umount", "-l", m, check=False)


@dataclass
class TwoNodes:
    id: str
    subnet: ipaddress.IPv4Network
    bridge: str
    manager: Daemon
    worker: Daemon
    rules: list[list[str]] = field(default_factory=list)
    owner: Path = Path()

    @classmethod
    def create(cls, workdir: Path) -> TwoNodes:
        nid = uuid.uuid4().hex[:6]
        net = free_subnet()
        hosts = list(net.hosts())

        def daemon(kind: str, addr: str) -> Daemon:
            name = f"{PREFIX}{nid}-{kind}"
            return Daemon(name, addr, name, DATA_DIR / name, RUN_DIR / name, RUN_DIR / f"{name}.pid",
                          RUN_DIR / f"{name}.sock", workdir / f"{name}.log")

        nodes = cls(nid, net, f"bfxn{nid}", daemon("m", str(hosts[1])), daemon("w", str(hosts[2])))
        nodes.owner = RUN_DIR / f"{PREFIX}{nid}.owner"
        nodes.owner.write_text(json.dumps({"pid": os.getpid(), "bridge": nodes.bridge, "rules": []}))
        return nodes

    def setup(self) -> None:
        gw = f"{next(self.subnet.hosts())}/{self.subnet.prefixlen}"
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", gw, "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        # Docker sets FORWARD's policy to DROP; bridged frames pass FORWARD (br_netfilter).
        for chain in ("FORWARD", "DOCKER-USER"):
            rule = [chain, "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
            if sh("iptables", "-I", *rule, check=False).returncode == 0:
                self.rules.append(rule)
        self.owner.write_text(json.dumps({"pid": os.getpid(), "bridge": self.bridge, "rules": self.rules}))
        for i, d in enumerate((self.manager, self.worker)):
            host_end, ns_end = f"bfxn{self.id}{'mw'[i]}0", f"bfxn{self.id}{'mw'[i]}1"
            sh("ip", "netns", "add", d.netns)
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            sh("ip", "link", "set", host_end, "master", self.bridge, "up")
            sh("ip", "link", "set", ns_end, "netns", d.netns)
            sh("ip", "-n", d.netns, "link", "set", ns_end, "name", "eth0")
            sh("ip", "-n", d.netns, "addr", "add", f"{d.addr}/{self.subnet.prefixlen}", "dev", "eth0")
            sh("ip", "-n", d.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", d.netns, "link", "set", "lo", "up")
            # No default route: the servers reach each other only. The swarm agent tries a registry
            # pull before each task; without a route it fails at once instead of waiting on DNS.
        self.manager.start()
        self.worker.start()

    def nsenter(self, daemon: Daemon, *args: str, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a command inside a daemon's network namespace, talking to that daemon."""
        full_env = {**os.environ, **(env or {}), "DOCKER_HOST": daemon.host}
        return subprocess.run(["nsenter", f"--net=/var/run/netns/{daemon.netns}", *args], env=full_env,
                              capture_output=True, text=True, timeout=timeout)

    def load_images(self, daemon: Daemon, tags: list[str]) -> None:
        """`docker save` from the host daemon, `docker load` into a test daemon (no registry here)."""
        save = subprocess.Popen(["docker", "save", *tags], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "-H", daemon.host, "load", "-q"], stdin=save.stdout, capture_output=True, text=True)
        save.wait()
        if save.returncode or load.returncode:
            raise RuntimeError(f"loading {tags} into {daemon.name} failed: {load.stderr[-1000:]}")

    def teardown(self) -> None:
        for d in (self.worker, self.manager):
            d.stop()
        remove_run(self.id, self.bridge, self.rules)


def remove_run(nid: str, bridge: str, rules: list[list[str]]) -> None:
    """Everything of run `nid`: daemons (by pid file), namespaces, links, rules, folders."""
    for kind in ("w", "m"):
        name = f"{PREFIX}{nid}-{kind}"
        pid = _read_pid(RUN_DIR / f"{name}.pid")
        if pid:
            _terminate(pid, 30)
        for path in (DATA_DIR / name, RUN_DIR / name):
            _unmount_below(path)
            shutil.rmtree(path, ignore_errors=True)
        for path in (RUN_DIR / f"{name}.pid", RUN_DIR / f"{name}.sock"):
            path.unlink(missing_ok=True)
        sh("ip", "netns", "delete", name, check=False)
        sh("ip", "link", "delete", f"bfxn{nid}{kind}0", check=False)
    for rule in rules:
        sh("iptables", "-D", *rule, check=False)
    sh("ip", "link", "delete", bridge, check=False)
    (RUN_DIR / f"{PREFIX}{nid}.owner").unlink(missing_ok=True)


def remove_leftovers() -> list[str]:
    """Runs whose pytest process is gone (killed before its finalizers ran)."""
    removed = []
    for owner in RUN_DIR.glob(f"{PREFIX}*.owner"):
        nid = owner.name[len(PREFIX):-len(".owner")]
        try:
            record = json.loads(owner.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("pid") and _alive(int(record["pid"])):
            continue
        remove_run(nid, record.get("bridge", f"bfxn{nid}"), record.get("rules", []))
        removed.append(nid)
    return removed
