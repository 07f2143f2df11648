"""Joining a server (the processing server) to the site's swarm as a worker: a preflight on this
host (Docker, the ports between the servers, the folders of its roles), then `docker swarm join`
with the token the manager printed. Placement follows on the manager: its next `bidsflux deploy`
labels this node with the roles site.yml gives it, and the swarm moves those services here.

Ports: Docker's swarm needs TCP 2377 (cluster management, to managers), TCP and UDP 7946 (node
communication) and the overlay's UDP data path port between the servers
(docs.docker.com/engine/swarm/swarm-tutorial/#open-protocols-and-ports-between-the-hosts)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console

from bidsflux.diagnostics import UserError
from bidsflux.swarm import preflight
from bidsflux.swarm.nodes import desired_node_roles, swarm_services_of_role

CLUSTER_PORT = 2377
GOSSIP_PORT = 7946


def split_manager(address: str) -> tuple[str, int]:
    """`HOST[:PORT]` of the join command (port 2377 when left out)."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, CLUSTER_PORT
    if not port.isdigit() or not host:
        raise UserError(f"'{address}' is not a manager address; give HOST:2377 as in the manager's join command")
    return host.strip("[]"), int(port)


def scrub(text: str, token: str) -> str:
    """The join token is a credential: it never reaches an error or a log."""
    return text.replace(token, "<token>") if token else text


def roles_here(site: Mapping[str, Any], hostname: str) -> list[str] | None:
    wanted = desired_node_roles(site)
    return None if wanted is None else wanted.get(hostname)


def local_dirs(site: Mapping[str, Any], rendered: Mapping[str, Any], roles: list[str]) -> list[preflight.DataDir]:
    """Folders the services of `roles` bind-mount from under paths.* (what must exist on this host)."""
    services = {s for r in roles for s in swarm_services_of_role(site, r)}
    mine = {"services": {k: v for k, v in (rendered.get("services") or {}).items() if k in services}}
    sources = {str(v["source"]) for svc in mine["services"].values() for v in svc.get("volumes") or []
               if isinstance(v, dict) and v.get("type") == "bind"}
    return [d for d in preflight.data_dirs(site, mine)
            if str(d.path) in sources or any(s.startswith(f"{d.path}/") for s in sources)]


def join_preflight(client: Any, site: Mapping[str, Any], rendered: Mapping[str, Any], manager: tuple[str, int],
                   hostname: str, create_dirs: bool, confirm: Callable[[str], None]) -> list[preflight.Finding]:
    findings: list[preflight.Finding] = []
    findings += preflight.check_engine(client)
    findings += preflight.check_privileges()
    state, _ = preflight.swarm_state(client)
    if state != "inactive":
        findings.append(preflight.Finding(
            "fail", "swarm", f"this engine is already in a swarm (state {state})",
            "run this on a server that is in no swarm, or leave the other swarm first (docker swarm leave)"))
    else:
        findings.append(preflight.Finding("ok", "swarm", "in no swarm yet"))
    host, port = manager
    findings += preflight.check_reachable(host, [port, GOSSIP_PORT])
    dpp = int(site["swarm"].get("data_path_port", 4789))
    findings += preflight.check_swarm_ports_free([GOSSIP_PORT], [GOSSIP_PORT, dpp])
    findings.append(preflight.Finding("ok", "ports", f"also needed between the servers, not testable from here: "
                                                     f"{GOSSIP_PORT}/udp and the data path {dpp}/udp"))
    roles = roles_here(site, hostname)
    if roles is None:
        findings.append(preflight.Finding(
            "warn", "roles", f"site.yml has no nodes: key, so the manager carries every role and places nothing on {hostname}",
            f"add nodes: {{{hostname}: {{roles: [processing]}}}} to site.yml and deploy on the manager"))
        roles = []
    elif not roles:
        findings.append(preflight.Finding(
            "warn", "roles", f"{hostname} is not under nodes in site.yml: the manager will place nothing here",
            f"add {hostname} with its roles under nodes in site.yml, then deploy on the manager"))
    else:
        findings.append(preflight.Finding("ok", "roles", f"{hostname} carries {', '.join(roles)} in site.yml"))
    dirs = local_dirs(site, rendered, roles)
    missing = [d for d in dirs if not d.path.exists()]
    if create_dirs and missing:
        confirm("join will create " + ", ".join(f"{d.path} ({d.uid}:{d.gid} {d.mode:04o})" for d in missing))
    if dirs:
        findings += preflight.check_dirs(dirs, create_dirs)
        health = site.get("health") or {}
        findings += preflight.check_disk(dirs, int(health.get("disk_warn_percent", 80)), int(health.get("disk_fail_percent", 90)))
    else:
        findings.append(preflight.Finding("ok", "data dirs", "the services of this node's roles keep no host folders"))
    return findings


def run_join(client: Any, site: Mapping[str, Any], rendered: Mapping[str, Any], token: str, manager_addr: str,
             advertise_addr: str | None, create_dirs: bool, console: Console, confirm: Callable[[str], None],
             hostname: str | None = None) -> int:
    from docker.errors import APIError

    if not token.startswith("SWMTKN-"):
        raise UserError("the join token must be the SWMTKN-... token of the manager's join command "
                        "(on the manager: bidsflux swarm join-command)")
    manager = split_manager(manager_addr)
    hostname = hostname or client.info().get("Name") or socket.gethostname()
    info = client.info().get("Swarm") or {}
    if info.get("LocalNodeState") == "active" and any(
            split_manager(m.get("Addr", ""))[0] == manager[0] for m in info.get("RemoteManagers") or []):
        console.print(f"No changes: {hostname} is already a node of the swarm managed at {manager[0]}.")
        return 0
    failed = preflight.print_findings(join_preflight(client, site, rendered, manager, hostname, create_dirs, confirm),
                                      console, title=f"join preflight on {hostname}")
    if failed:
        raise UserError("preflight failed; nothing was changed:\n" + "\n".join(f"  - {f}" for f in failed))
    confirm(f"{hostname} will join the swarm managed at {manager[0]}:{manager[1]} as a worker")
    try:
        client.swarm.join(remote_addrs=[f"{manager[0]}:{manager[1]}"], join_token=token,
                          listen_addr=f"0.0.0.0:{CLUSTER_PORT}", advertise_addr=advertise_addr)
    except APIError as exc:
        raise UserError(f"docker swarm join failed: {scrub(str(exc.explanation or exc), token)}") from None
    roles = roles_here(site, hostname) or []
    console.print(f"joined the swarm managed at {manager[0]} as worker {hostname}.", highlight=False, markup=False)
    if roles:
        services = [s for r in roles for s in swarm_services_of_role(site, r)]
        console.print(f"Next, on the manager: `bidsflux deploy` labels {hostname} with {', '.join(roles)} and moves "
                      f"{', '.join(services) or 'nothing'} here.", highlight=False, markup=False)
    return 0
