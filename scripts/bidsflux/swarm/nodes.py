"""Swarm nodes and their role labels: what site.yml `nodes` asks for, what the swarm has, the label
changes between them, applying those, and waiting until the services a change moves run where
their role now is. Placement itself is the swarm's: services are constrained to
`node.labels.bidsflux.role.<role> == true`, so moving a label moves the tasks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bidsflux.site.render import NON_SWARM_SERVICES, ROLE_LABEL_PREFIX, role_label


@dataclass
class Node:
    id: str
    hostname: str
    state: str  # ready | down | unknown | disconnected
    availability: str  # active | pause | drain
    manager: bool
    roles: list[str]  # roles whose label bidsflux.role.<role>=true it carries
    addr: str = ""

    @property
    def usable(self) -> bool:
        """The scheduler places new tasks here."""
        return self.state == "ready" and self.availability == "active"


@dataclass
class LabelChange:
    hostname: str
    role: str
    action: str  # create | remove
    services: list[str]  # services of that role (short names): what the change places or moves away


def observe_nodes(api_nodes: Iterable[Mapping[str, Any]]) -> list[Node]:
    out = []
    for n in api_nodes:
        spec, status = n.get("Spec") or {}, n.get("Status") or {}
        labels = spec.get("Labels") or {}
        out.append(Node(
            id=n["ID"], hostname=(n.get("Description") or {}).get("Hostname") or n["ID"][:12],
            state=status.get("State", "unknown"), availability=spec.get("Availability", "active"),
            manager=spec.get("Role") == "manager",
            roles=sorted(k[len(ROLE_LABEL_PREFIX):] for k, v in labels.items() if k.startswith(ROLE_LABEL_PREFIX) and v == "true"),
            addr=status.get("Addr", "")))
    return sorted(out, key=lambda x: (x.hostname, x.id))


def swarm_services_of_role(site: Mapping[str, Any], role: str) -> list[str]:
    """Stack services (short names) of a role; the storescp endpoint only when it is the DICOM endpoint."""
    kind = (site.get("dicom_endpoint") or {}).get("kind", "storescp")
    return [s for s in site["roles"].get(role) or []
            if s not in NON_SWARM_SERVICES and not (s == "dicom_endpoint" and kind != "storescp")]


def desired_node_roles(site: Mapping[str, Any]) -> dict[str, list[str]] | None:
    """Host name -> roles, or None when site.yml names no nodes (the manager carries every role)."""
    nodes = site.get("nodes")
    if not nodes:
        return None
    return {host: sorted(spec["roles"]) for host, spec in nodes.items()}


def label_changes(site: Mapping[str, Any], nodes: list[Node]) -> tuple[list[LabelChange], list[str]]:
    """Label changes that make the swarm match `nodes` of site.yml, and warnings about named nodes
    that have not joined. Every entry of a host name is labelled alike: a server that left and
    joined again keeps a stale `down` entry under the same name."""
    want = desired_node_roles(site)
    used = sorted(r for r, svcs in site["roles"].items() if svcs)
    changes: list[LabelChange] = []
    warnings: list[str] = []
    if want is None:
        # Single-node form: a role nobody carries goes to the only node (bootstrap's manager).
        for role in used:
            if not any(role in n.roles for n in nodes if n.state != "down"):
                target = nodes[0].hostname if len(nodes) == 1 else "?"
                changes.append(LabelChange(target, role, "create", swarm_services_of_role(site, role)))
        return changes, warnings
    seen = {n.hostname for n in nodes}
    for host in sorted(seen):
        entries = [n for n in nodes if n.hostname == host]
        have = set().union(*(set(n.roles) for n in entries))
        target = set(want.get(host, []))
        partial = {r for r in target if not all(r in n.roles for n in entries)}
        for role in sorted(partial | (target - have)):
            changes.append(LabelChange(host, role, "create", swarm_services_of_role(site, role)))
        for role in sorted(have - target):
            changes.append(LabelChange(host, role, "remove", swarm_services_of_role(site, role)))
    for host, roles in sorted(want.items()):
        if host not in seen:
            waiting = [s for r in roles for s in swarm_services_of_role(site, r)]
            warnings.append(f"node {host} (roles: {', '.join(roles)}) has not joined the swarm: on it run "
                            "./scripts/bootstrap.sh --join TOKEN MANAGER:2377 (the manager prints it with "
                            "`bidsflux swarm join-command`), then deploy again"
                            + (f"; until then {', '.join(waiting)} have no node" if waiting else ""))
    return changes, warnings


def apply_label_changes(client: Any, changes: list[LabelChange]) -> list[str]:
    """Labels added first, then removed, so a moved role is never on no node at all."""
    done = []
    by_host = {}
    for n in observe_nodes(client.api.nodes()):
        by_host.setdefault(n.hostname, []).append(n.id)
    for action in ("create", "remove"):
        for c in (c for c in changes if c.action == action):
            for node_id in by_host.get(c.hostname, []):
                node = client.nodes.get(node_id)
                spec = dict(node.attrs["Spec"])
                labels = dict(spec.get("Labels") or {})
                if action == "create":
                    labels[role_label(c.role)] = "true"
                else:
                    labels.pop(role_label(c.role), None)
                spec["Labels"] = labels
                node.update(spec)
            verb = "labelled" if action == "create" else "removed"
            done.append(f"{verb} {role_label(c.role)}=true {'on' if action == 'create' else 'from'} node {c.hostname}")
    return done


def roles_without_node(site: Mapping[str, Any], nodes: list[Node]) -> dict[str, list[str]]:
    """Role -> its swarm services, for roles no usable node carries (their tasks stay pending)."""
    carried = {r for n in nodes if n.usable for r in n.roles}
    return {role: swarm_services_of_role(site, role) for role, svcs in site["roles"].items()
            if svcs and role not in carried and swarm_services_of_role(site, role)}


def placement_state(client: Any, service: str, role: str) -> tuple[bool, str]:
    """(every replica runs on a node carrying the role, where its tasks run now)."""
    nodes = {n.id: n for n in observe_nodes(client.api.nodes())}
    svc = client.api.inspect_service(service)
    want = ((svc["Spec"].get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1)
    tasks = [t for t in client.api.tasks(filters={"service": svc["ID"]}) if t.get("DesiredState") == "running"]
    running = [t for t in tasks if (t.get("Status") or {}).get("State") == "running"]
    where = sorted(nodes[t["NodeID"]].hostname if t.get("NodeID") in nodes else "?" for t in running)
    good = [t for t in running if t.get("NodeID") in nodes and role in nodes[t["NodeID"]].roles]
    ok = len(good) >= want and len(tasks) == want
    return ok, f"{len(good)}/{want} on {role} nodes" + (f", running on {', '.join(where)}" if where else "")


def wait_for_placement(client: Any, moved: Mapping[str, str], timeout: float,
                       on_progress: Callable[[str, str], None] | None = None) -> dict[str, tuple[bool, str]]:
    """Wait until each service (full name -> role) runs only on nodes carrying its role."""
    deadline = time.monotonic() + timeout
    result: dict[str, tuple[bool, str]] = {}
    pending = dict(moved)
    while pending:
        for name, role in list(pending.items()):
            ok, text = placement_state(client, name, role)
            result[name] = (ok, text)
            if ok:
                pending.pop(name)
            elif on_progress:
                on_progress(name, text)
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return result
