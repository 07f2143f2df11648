"""Health of the swarm: nodes ready and labelled, services at their replicas, no restart loops, the network."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bidsflux.health.context import (
    parse_time,
    utcnow,
)
from bidsflux.health.core import (
    Context,
    Report,
    check,
)
from bidsflux.site.render import role_label
from bidsflux.swarm.nodes import Node, desired_node_roles, observe_nodes, swarm_services_of_role

NON_SWARM_SERVICES = {"mercure"}


def expected_swarm_services(site: Mapping[str, Any]) -> dict[str, str]:
    """Stack service -> the role that places it, as site.yml describes."""
    out: dict[str, str] = {}
    for role, services in site["roles"].items():
        for svc in services or []:
            if svc in NON_SWARM_SERVICES:
                continue
            if svc == "dicom_endpoint" and site["dicom_endpoint"]["kind"] != "storescp":
                continue
            out.setdefault(svc, role)
    return out


def _task_error(task: Mapping[str, Any]) -> str:
    status = task.get("Status") or {}
    err = status.get("Err") or ""
    msg = status.get("Message") or ""
    return err or f"{status.get('State', '?')}: {msg}"


def check_nodes(site: Mapping[str, Any], stack: str, nodes: list[Node], report: Report) -> None:
    """Nodes ready, the roles site.yml gives them, and which services lost their node when one is down."""
    wanted = desired_node_roles(site)
    usable_roles = {r for n in nodes if n.usable for r in n.roles}

    def lost(roles: Iterable[str]) -> list[str]:
        return [f"{stack}_{s}" for r in sorted(set(roles)) if r not in usable_roles for s in swarm_services_of_role(site, r)]

    explained: set[str] = set()
    ready_hosts = {n.hostname for n in nodes if n.state == "ready"}
    for node in nodes:
        roles = set(node.roles) | set((wanted or {}).get(node.hostname, []))
        if node.state != "ready":
            if node.hostname in ready_hosts:
                # The same server joined again: this is the entry it left behind.
                report.warn(f"node {node.hostname} has a stale {node.state} entry ({node.id[:12]})",
                            f"docker node rm {node.id[:12]}")
                continue
            without = lost(roles)
            explained.update(r for r in roles if r not in usable_roles)
            report.fail(f"node {node.hostname} is {node.state}" + (f" ({', '.join(sorted(roles))})" if roles else "")
                        + (f"; services without a node: {', '.join(without)}" if without else
                           "; no service lost its node"),
                        f"bring node {node.hostname} back (docker node ls; systemctl status docker on it)")
        elif node.availability != "active":
            report.warn(f"node {node.hostname} is {node.availability}",
                        f"docker node update --availability active {node.hostname}")
        if wanted is not None and node.state == "ready" and node.hostname in wanted and sorted(node.roles) != wanted[node.hostname]:
            report.warn(f"node {node.hostname} carries roles [{', '.join(node.roles)}], site.yml gives it "
                        f"[{', '.join(wanted[node.hostname])}]", "bidsflux deploy (it sets the role labels)")
    for host, roles in sorted((wanted or {}).items()):
        if host not in {n.hostname for n in nodes}:
            without = lost(roles)
            explained.update(r for r in roles if r not in usable_roles)
            report.fail(f"node {host} (nodes in site.yml) is not in the swarm"
                        + (f"; services without a node: {', '.join(without)}" if without else ""),
                        f"join it: ./scripts/bootstrap.sh --join ... on {host} (bidsflux swarm join-command on the manager)")
    for role in sorted(r for r, svcs in site["roles"].items() if svcs and swarm_services_of_role(site, r)):
        if role not in usable_roles and role not in explained:
            report.fail(f"no ready node carries {role_label(role)}=true; services without a node: {', '.join(lost([role]))}",
                        f"`bidsflux deploy` labels the nodes of site.yml (by hand: docker node update --label-add "
                        f"{role_label(role)}=true <node>)")
    ready = [n for n in nodes if n.usable]
    if ready:
        report.ok(f"{len(ready)} node(s) ready: {', '.join(n.hostname for n in ready)}")


@check("swarm", timeout=20, summary="nodes ready and labelled, services at desired replicas, no restart loops, overlay network")
def check_swarm(ctx: Context, report: Report, timeout: float) -> None:
    from docker.errors import APIError

    from bidsflux.swarm.secretstore import docker_client

    stack = ctx.site["site"]["name"]
    report.step = "the Docker engine"
    client = docker_client()
    swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active":
        report.fail("this Docker engine is not part of a swarm", "run `bidsflux bootstrap` (or docker swarm init) on the data server")
        return
    if not swarm.get("ControlAvailable"):
        report.fail("this node is not a swarm manager, so it cannot see services", "run `bidsflux health` on a manager node")
        return

    report.step = "docker node ls"
    check_nodes(ctx.site, stack, observe_nodes(client.api.nodes()), report)

    report.step = "docker service ls"
    services = {s.name: s for s in client.services.list(filters={"label": f"com.docker.stack.namespace={stack}"})}
    now = utcnow()
    for svc, _role in sorted(expected_swarm_services(ctx.site).items()):
        full = f"{stack}_{svc}"
        if full not in services:
            report.fail(f"service {full} is not deployed", "bidsflux deploy")
    for full, service in sorted(services.items()):
        report.step = f"docker service ps {full}"
        try:
            tasks = service.tasks()
        except APIError as exc:
            report.fail(f"cannot list tasks of {full}: {exc.explanation or exc}", "check the Docker engine")
            continue
        mode = (service.attrs.get("Spec") or {}).get("Mode") or {}
        running = [t for t in tasks if t.get("DesiredState") == "running" and (t.get("Status") or {}).get("State") == "running"]
        if "Replicated" in mode:
            desired = int(mode["Replicated"].get("Replicas", 1))
        else:  # global: one per eligible node, i.e. every task the orchestrator wants running
            desired = len({t.get("NodeID") for t in tasks if t.get("DesiredState") == "running"})
        recent = [t for t in tasks if (c := parse_time(t.get("CreatedAt"))) and (now - c).total_seconds() <= ctx.restart_window]
        # Tasks that ended on their own; `shutdown` is what a rolling update leaves, not a restart.
        ended = [t for t in recent if (t.get("Status") or {}).get("State") in {"failed", "rejected", "complete"}
                 and t.get("DesiredState") != "running"]
        failed = sorted((t for t in tasks if (t.get("Status") or {}).get("State") in {"failed", "rejected"}),
                        key=lambda t: (t.get("Status") or {}).get("Timestamp", ""), reverse=True)
        if desired == 0 and full.removeprefix(f"{stack}_") in expected_swarm_services(ctx.site):
            # Scaled to zero by hand: the site needs it, so it is down, not "at its desired count".
            report.fail(f"{full}: stopped (scaled to 0 replicas)", f"bidsflux deploy (or docker service scale {full}=1)")
        elif len(running) < desired:
            why = f"; last task error: {_task_error(failed[0])}" if failed else ""
            if not failed:
                pending = [t for t in tasks if t.get("DesiredState") == "running" and (t.get("Status") or {}).get("State") != "running"]
                if pending:
                    why = f"; task {(pending[0].get('Status') or {}).get('State')}: {_task_error(pending[0])}"
            report.fail(f"{full}: {len(running)}/{desired} replicas running{why}",
                        f"docker service ps --no-trunc {full}; fix the cause, then bidsflux deploy")
        elif len(ended) >= ctx.restart_threshold:
            # Up right now, but a loop: it will be down again in a moment.
            why = f" (last: {_task_error(failed[0])})" if failed else ""
            report.fail(f"{full}: {len(running)}/{desired} running but {len(ended)} task restarts within "
                        f"{ctx.restart_window / 60:g} min{why}", f"docker service logs {full}: the service keeps restarting")
        else:
            report.ok(f"{full}: {len(running)}/{desired}")

    net_name = ctx.site["swarm"]["network"]["name"]
    report.step = f"docker network inspect {net_name}"
    nets = [n for n in client.networks.list(names=[net_name]) if n.name == net_name]
    if not nets:
        report.fail(f"overlay network {net_name} does not exist",
                    f"docker network create --driver overlay --attachable --subnet {ctx.site['swarm']['network']['subnet']} {net_name}")
    elif nets[0].attrs.get("Driver") != "overlay":
        report.fail(f"network {net_name} uses driver {nets[0].attrs.get('Driver')}, not overlay",
                    f"remove it and recreate it as an attachable overlay network ({net_name})")
    else:
        report.ok(f"overlay network {net_name} present")


