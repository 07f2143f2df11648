"""Checks run before bootstrap changes anything: each failure says what to do about it."""

from __future__ import annotations

import os
import shutil
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_ENGINE = (20, 10)  # swarm jobs (replicated-job) and data-path-port need API 1.41


@dataclass
class Finding:
    level: str  # ok | warn | fail
    check: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.check}: {self.message}" + (f" -> {self.fix}" if self.fix else "")


@dataclass
class DataDir:
    key: str
    path: Path
    uid: int
    gid: int
    mode: int


def data_dirs(site: Mapping[str, Any], rendered: Mapping[str, Any]) -> list[DataDir]:
    """Folders from site.yml `paths`, plus the bind-mount sources below them the stack needs."""
    out: list[DataDir] = []
    for key, entry in site["paths"].items():
        for i, e in enumerate(entry if isinstance(entry, list) else [entry]):
            out.append(DataDir(key if not isinstance(entry, list) else f"{key}[{i}]", Path(e["path"]),
                               int(e.get("uid", 0)), int(e.get("gid", 0)), int(str(e.get("mode", "0755")), 8)))
    known = {d.path for d in out}
    for svc in (rendered.get("services") or {}).values():
        for v in svc.get("volumes") or []:
            if not isinstance(v, dict) or v.get("type") != "bind":
                continue
            src = Path(v["source"])
            parent = next((d for d in out if d.path in src.parents), None)
            if parent is not None and src not in known:
                known.add(src)
                out.append(DataDir(f"{parent.key} ({src.name})", src, parent.uid, parent.gid, parent.mode))
    return out


def check_dirs(dirs: list[DataDir], create: bool) -> list[Finding]:
    findings = []
    for d in dirs:
        if not d.path.exists():
            if create:
                d.path.mkdir(parents=True, exist_ok=True)
                os.chown(d.path, d.uid, d.gid)
                os.chmod(d.path, d.mode)
                findings.append(Finding("ok", "data dirs", f"created {d.path} ({d.uid}:{d.gid} {d.mode:04o})"))
                continue
            findings.append(Finding(
                "fail", "data dirs", f"{d.path} (paths.{d.key}) does not exist",
                f"run again with --create-dirs, or: mkdir -p {d.path} && chown {d.uid}:{d.gid} {d.path} && "
                f"chmod {d.mode:04o} {d.path}"))
            continue
        st = d.path.stat()
        if not stat.S_ISDIR(st.st_mode):
            findings.append(Finding("fail", "data dirs", f"{d.path} (paths.{d.key}) is not a folder",
                                    f"move it away or point paths.{d.key} elsewhere in site.yml"))
            continue
        problems = []
        if (st.st_uid, st.st_gid) != (d.uid, d.gid):
            problems.append(f"owner {st.st_uid}:{st.st_gid}, expected {d.uid}:{d.gid}")
        if stat.S_IMODE(st.st_mode) != d.mode:
            problems.append(f"mode {stat.S_IMODE(st.st_mode):04o}, expected {d.mode:04o}")
        if problems:
            findings.append(Finding("fail", "data dirs", f"{d.path} (paths.{d.key}): {', '.join(problems)}",
                                    f"chown {d.uid}:{d.gid} {d.path} && chmod {d.mode:04o} {d.path}"))
    if not [f for f in findings if f.level == "fail"]:
        findings.append(Finding("ok", "data dirs", f"{len(dirs)} folder(s) present with owner and mode from site.yml"))
    return findings


def published_ports(rendered: Mapping[str, Any]) -> dict[int, str]:
    out = {}
    for name, svc in (rendered.get("services") or {}).items():
        for p in svc.get("ports") or []:
            if isinstance(p, dict) and p.get("published"):
                out[int(p["published"])] = name
    return out


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def check_ports(ports: Mapping[int, str], ours: set[int]) -> list[Finding]:
    """Ports the stack publishes must be free, unless our own running services hold them."""
    findings = []
    for port, svc in sorted(ports.items()):
        if port in ours:
            continue
        if port_in_use(port):
            findings.append(Finding("fail", "ports", f"port {port} (service {svc}) is already in use on this host",
                                    f"stop what listens there (ss -ltnp 'sport = :{port}') or change the port "
                                    "under ports: in site.yml"))
    if not findings:
        findings.append(Finding("ok", "ports", f"{len(ports)} published port(s) free or held by this stack"))
    return findings


def check_disk(dirs: list[DataDir], warn_percent: int, fail_percent: int) -> list[Finding]:
    findings = []
    seen = set()
    for d in dirs:
        p = d.path
        while not p.exists():
            p = p.parent
        usage = shutil.disk_usage(p)
        if p.stat().st_dev in seen:
            continue
        seen.add(p.stat().st_dev)
        used = 100 * (usage.total - usage.free) / usage.total
        if used >= fail_percent:
            findings.append(Finding("fail", "disk", f"{p} is {used:.0f}% full (health.disk_fail_percent {fail_percent})",
                                    "free space or move paths.* to a larger disk"))
        elif used >= warn_percent:
            findings.append(Finding("warn", "disk", f"{p} is {used:.0f}% full (health.disk_warn_percent {warn_percent})"))
    if not findings:
        findings.append(Finding("ok", "disk", "enough free space under every data folder"))
    return findings


def check_tools() -> list[Finding]:
    findings = []
    for tool, level, fix in (
        ("git", "fail", "apt-get install git"),
        ("git-annex", "fail", "apt-get install git-annex"),
        ("datalad", "warn", "pip install datalad (needed by local dataset work, not by the stack itself)"),
        ("docker", "fail", "apt-get install docker.io (the CLI runs docker stack deploy)"),
    ):
        if shutil.which(tool) is None:
            findings.append(Finding(level, "tools", f"{tool} not found on PATH", fix))
    if not findings:
        findings.append(Finding("ok", "tools", "git, git-annex, datalad and docker present"))
    return findings


def check_engine(client: Any) -> list[Finding]:
    version = client.version()
    text = version.get("Version", "0")
    try:
        parts = tuple(int(x) for x in text.split("+")[0].split("-")[0].split(".")[:2])
    except ValueError:
        parts = (0, 0)
    if parts < MIN_ENGINE:
        return [Finding("fail", "engine", f"Docker engine {text} is too old",
                        f"install Docker {MIN_ENGINE[0]}.{MIN_ENGINE[1]} or later (apt-get install docker.io)")]
    return [Finding("ok", "engine", f"Docker engine {text} reachable")]


def check_privileges() -> list[Finding]:
    if os.geteuid() != 0:
        return [Finding("fail", "privileges", "bootstrap creates root-owned folders and a root-only secrets file",
                        "run it as root: sudo ./scripts/bootstrap.sh")]
    return [Finding("ok", "privileges", "running as root")]


def swarm_state(client: Any) -> tuple[str, bool]:
    info = client.info().get("Swarm") or {}
    return info.get("LocalNodeState", "inactive"), bool(info.get("ControlAvailable"))


def check_swarm(client: Any) -> list[Finding]:
    state, manager = swarm_state(client)
    if state == "inactive":
        return [Finding("ok", "swarm", "no swarm yet: bootstrap will initialise one")]
    if state != "active":
        return [Finding("fail", "swarm", f"swarm state is '{state}'",
                        "wait for it to settle, or fix it with docker swarm leave --force and run bootstrap again")]
    if not manager:
        return [Finding("fail", "swarm", "this node is a swarm worker", "run bootstrap on the manager (data server)")]
    return [Finding("ok", "swarm", "this node is a swarm manager")]


def check_reachable(host: str, ports: list[int], timeout: float = 3.0) -> list[Finding]:
    """TCP connections this host must be able to open to the manager (Docker's swarm ports:
    2377 cluster management, 7946 node communication)."""
    findings = []
    for port in ports:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as exc:
            findings.append(Finding("fail", "ports", f"cannot reach the manager at {host}:{port}/tcp ({exc.strerror or exc})",
                                    f"open TCP {port} from this server to {host} in both hosts' firewalls, and check the "
                                    "address in the join command"))
        else:
            findings.append(Finding("ok", "ports", f"manager {host}:{port}/tcp reachable"))
    return findings


def udp_port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def check_swarm_ports_free(tcp: list[int], udp: list[int]) -> list[Finding]:
    """Ports this node's engine must bind when it joins."""
    busy = [f"{p}/tcp" for p in tcp if port_in_use(p)] + [f"{p}/udp" for p in udp if udp_port_in_use(p)]
    if busy:
        return [Finding("fail", "ports", f"{', '.join(busy)} already in use on this host; the swarm needs them",
                        "stop what listens there (ss -lntup) before joining")]
    return [Finding("ok", "ports", f"{', '.join([f'{p}/tcp' for p in tcp] + [f'{p}/udp' for p in udp])} free on this host")]


def print_findings(findings: list[Finding], console: Any, title: str = "preflight") -> list[Finding]:
    """A table of the findings; returns the failures."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    for col in ("check", "result", "detail"):
        table.add_column(col, overflow="fold")
    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    for f in findings:
        # Text, not markup: paths and messages may hold brackets.
        table.add_row(f.check, Text(f.level, style=colour[f.level]), Text(f.message + (f"\nfix: {f.fix}" if f.fix else "")))
    console.print(table)
    return [f for f in findings if f.level == "fail"]


def check_readonly_api(path: str, timeout: float = 5.0) -> list[Finding]:
    """The read-only Docker API on this node, when its socket is here (the node of the plan runner's
    service): GET /_ping answers, and a write is refused with 403. The write sent is a container
    create without a body, which Docker itself refuses (400), so it changes nothing even if it
    passed. (No body: HAProxy answers a denied request before reading one, so a body write could
    meet a closed connection.)"""
    import http.client

    if not Path(path).is_socket():
        return []

    class UnixHTTP(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(path)

    def status(method: str, url: str) -> int:
        conn = UnixHTTP("docker", timeout=timeout)
        try:
            conn.request(method, url)
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        ping, write = status("GET", "/_ping"), status("POST", "/containers/create")
    except OSError as exc:
        return [Finding("fail", "docker-readonly", f"{path} does not answer: {exc.strerror or exc}",
                        "docker service ps <stack>_docker-readonly (the service makes this socket)")]
    if write != 403:
        return [Finding("fail", "docker-readonly", f"{path} passes writes (POST /containers/create answered {write}, "
                        "not 403): merge-request plans could change the swarm",
                        "restore stack/docker-readonly.haproxy.cfg (GET/HEAD only) and deploy")]
    if ping != 200:
        return [Finding("fail", "docker-readonly", f"{path} answers GET /_ping with {ping}",
                        "docker service logs <stack>_docker-readonly")]
    return [Finding("ok", "docker-readonly", f"{path} answers reads and refuses writes (403)")]
