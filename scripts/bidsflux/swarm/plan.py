"""The swarm plan: desired state from the rendered stack, observed state from the engine, and
the typed changes between them (applying them is swarm/engine.py and swarm/deploy.py).

Docker stores a service spec with defaults filled in, image digests appended and durations in
nanoseconds. Both sides are therefore reduced to the same normalised form, and only what the
stack file states is compared: a key the user did not write is docker's to default."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from bidsflux.diagnostics import UserError
from bidsflux.redact import env_change
from bidsflux.site.render import RenderedStack, role_label
from bidsflux.swarm.nodes import Node, label_changes, observe_nodes
from bidsflux.swarm.secretstore import LABEL_MANAGED, LABEL_SECRET, LABEL_STACK, LABEL_VERSION

STACK_LABEL = "com.docker.stack.namespace"
NETWORK_LABEL = "io.bidsflux.network"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt]?)b?$", re.I)


def duration_seconds(value: Any) -> float | None:
    """Compose duration ("1m30s", "500ms", or a number of seconds) in seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UserError(f"'{value}' is not a duration (write e.g. 10s, 1m30s, 500ms)")
    return round(sum(float(n) * _DURATION_UNITS[u] for n, u in parts), 9)


def ns_seconds(value: Any) -> float:
    return round(int(value or 0) / 1e9, 9)


def size_bytes(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value).strip())
    if not m:
        raise UserError(f"'{value}' is not a size (write e.g. 512m, 8g)")
    return int(float(m.group(1)) * 1024 ** "bkmgt".index((m.group(2) or "b").lower()))


def strip_digest(image: str) -> str:
    return image.split("@", 1)[0]


def _port(published: Any, target: Any, protocol: Any, mode: Any) -> str:
    return f"{published}:{target}/{(protocol or 'tcp').lower()} ({(mode or 'ingress').lower()})"


def _secret_ref(name: str, target: str, mode: int) -> str:
    return f"{name} -> {target} ({mode:04o})"


def _policy(values: Mapping[str, Any], durations: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if v is None:
            continue
        out[k] = duration_seconds(v) if k in durations else v
    return out


# ---------------------------------------------------------------- desired (from the stack file)


def _extra_hosts(value: Any) -> list[str]:
    """compose extra_hosts ("name:ip" list or name: ip mapping) in SwarmKit's ContainerSpec.Hosts
    form, "ip name" (hosts(5)), as the docker CLI's convertExtraHosts writes it."""
    if isinstance(value, Mapping):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        pairs = [tuple(str(e).split(":", 1)) for e in value or [] if ":" in str(e)]  # type: ignore[misc]
    return sorted(f"{ip} {name}" for name, ip in pairs)


_POLICY_KEYS = ("parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order")


def desired_service(name: str, svc: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Normalised view of one compose service, as `docker stack deploy` would create it."""
    deploy = svc.get("deploy") or {}
    out: dict[str, Any] = {"image": svc.get("image")}
    command = svc.get("command")
    if command is not None:
        # `docker stack deploy` turns $$ into $ (compose interpolation); the engine holds the result.
        out["command"] = [c.replace("$$", "$") for c in
                          (shlex.split(command) if isinstance(command, str) else [str(c) for c in command])]
    entrypoint = svc.get("entrypoint")
    if entrypoint is not None:
        out["entrypoint"] = shlex.split(entrypoint) if isinstance(entrypoint, str) else [str(c) for c in entrypoint]
    env = svc.get("environment")
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    out["env"] = {str(k): "" if v is None else str(v) for k, v in (env or {}).items()}
    if svc.get("hostname") is not None:
        out["hostname"] = svc["hostname"]
    out["hosts"] = _extra_hosts(svc.get("extra_hosts"))
    top_secrets = top.get("secrets") or {}
    refs = []
    for s in svc.get("secrets") or []:
        s = {"source": s} if isinstance(s, str) else s
        src = s["source"]
        docker_name = (top_secrets.get(src) or {}).get("name") or src
        refs.append(_secret_ref(docker_name, s.get("target") or src, int(s.get("mode", 0o444))))
    out["secrets"] = sorted(refs)
    top_configs = top.get("configs") or {}
    out["configs"] = sorted(
        _secret_ref((top_configs.get(c["source"]) or {}).get("name") or c["source"], c.get("target") or c["source"],
                    int(c.get("mode", 0o444)))
        for c in ({"source": c} if isinstance(c, str) else c for c in svc.get("configs") or []))
    if svc.get("user") is not None:
        out["user"] = str(svc["user"])
    out["replicas"] = int(deploy.get("replicas", 1)) if deploy.get("mode", "replicated") == "replicated" else None
    out["ports"] = sorted(
        _port(p.get("published"), p.get("target"), p.get("protocol"), p.get("mode"))
        for p in (svc.get("ports") or [])
        if isinstance(p, dict)
    )
    out["constraints"] = sorted((deploy.get("placement") or {}).get("constraints") or [])
    out["update_config"] = _policy({k: (deploy.get("update_config") or {}).get(k) for k in _POLICY_KEYS}, ("delay", "monitor"))
    out["rollback_config"] = _policy({k: (deploy.get("rollback_config") or {}).get(k) for k in _POLICY_KEYS}, ("delay", "monitor"))
    rp = deploy.get("restart_policy") or {}
    out["restart_policy"] = _policy(
        {"condition": rp.get("condition"), "delay": rp.get("delay"), "max_attempts": rp.get("max_attempts"),
         "window": rp.get("window")}, ("delay", "window"))
    nets = svc.get("networks") or []
    top_nets = top.get("networks") or {}
    if isinstance(nets, list):
        nets = {n: None for n in nets}
    out["networks"] = {
        (top_nets.get(n) or {}).get("name") or n: sorted((cfg or {}).get("aliases") or []) for n, cfg in nets.items()
    }
    hc = svc.get("healthcheck")
    if hc is not None:
        test = hc.get("test")
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        out["healthcheck"] = _policy(
            {"test": test, "interval": hc.get("interval"), "timeout": hc.get("timeout"), "retries": hc.get("retries"),
             "start_period": hc.get("start_period")}, ("interval", "timeout", "start_period"))
    mounts = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            size = (v.get("tmpfs") or {}).get("size")
            mounts.append(f"{v.get('type', 'volume')}:{v.get('source', '')}:{v['target']}{':ro' if v.get('read_only') else ''}"
                          + (f":size={size_bytes(size)}" if size is not None else ""))
        else:
            parts = str(v).split(":")
            ro = len(parts) > 2 and "ro" in parts[2].split(",")
            kind = "bind" if parts[0].startswith(("/", ".")) else "volume"
            mounts.append(f"{kind}:{parts[0]}:{parts[1] if len(parts) > 1 else parts[0]}{':ro' if ro else ''}")
    out["mounts"] = sorted(mounts)
    mem = ((deploy.get("resources") or {}).get("limits") or {}).get("memory")
    out["memory_limit"] = size_bytes(mem)
    return out


@dataclass
class DesiredState:
    stack: str
    services: dict[str, dict[str, Any]]  # full service name (<stack>_<name>) -> normalised spec
    network: dict[str, Any]  # name, subnet
    roles: list[str]  # role labels some node must carry
    secrets: dict[str, str]  # logical -> versioned docker name
    compose: dict[str, Any]  # the rendered stack file
    placement: dict[str, Any] = field(default_factory=dict)  # site.yml's roles and nodes
    configs: dict[str, str] = field(default_factory=dict)  # content-hashed docker name -> logical


def desired(rendered: RenderedStack, site: Mapping[str, Any]) -> DesiredState:
    stack = rendered.stack_name
    services = {
        f"{stack}_{name}": desired_service(name, svc, rendered.data)
        for name, svc in (rendered.data.get("services") or {}).items()
    }
    used_roles = sorted({role for role, svcs in site["roles"].items() if svcs})
    net = site["swarm"]["network"]
    return DesiredState(stack, services, {"name": net["name"], "subnet": net["subnet"],
                                          "encrypted": bool(net.get("encrypted", False))}, used_roles,
                        dict(rendered.secrets), rendered.data,
                        {"roles": site["roles"], "nodes": site.get("nodes")},
                        {c.name: logical for logical, c in rendered.configs.items()})


# ---------------------------------------------------------------- observed (from the engine)


def observed_service(spec: Mapping[str, Any], short_name: str, network_names: Mapping[str, str]) -> dict[str, Any]:
    tt = spec.get("TaskTemplate") or {}
    cs = tt.get("ContainerSpec") or {}
    out: dict[str, Any] = {"image": cs.get("Image", "")}  # with its digest: a pinned image compares whole
    out["command"] = list(cs.get("Args") or [])
    out["entrypoint"] = list(cs.get("Command") or [])
    out["env"] = dict(e.split("=", 1) if "=" in e else (e, "") for e in cs.get("Env") or [])
    out["hostname"] = cs.get("Hostname", "")
    out["hosts"] = sorted(cs.get("Hosts") or [])
    out["secrets"] = sorted(
        _secret_ref(s.get("SecretName", ""), (s.get("File") or {}).get("Name", ""), int((s.get("File") or {}).get("Mode", 0o444)))
        for s in cs.get("Secrets") or []
    )
    out["configs"] = sorted(
        _secret_ref(c.get("ConfigName", ""), (c.get("File") or {}).get("Name", ""), int((c.get("File") or {}).get("Mode", 0o444)))
        for c in cs.get("Configs") or []
    )
    out["user"] = cs.get("User", "")
    mode = spec.get("Mode") or {}
    out["replicas"] = (mode.get("Replicated") or {}).get("Replicas") if "Replicated" in mode else None
    out["ports"] = sorted(
        _port(p.get("PublishedPort"), p.get("TargetPort"), p.get("Protocol"), p.get("PublishMode"))
        for p in ((spec.get("EndpointSpec") or {}).get("Ports") or [])
    )
    out["constraints"] = sorted((tt.get("Placement") or {}).get("Constraints") or [])

    def policy(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
        cfg = cfg or {}
        return {
            "parallelism": cfg.get("Parallelism", 0), "delay": ns_seconds(cfg.get("Delay")),
            "failure_action": cfg.get("FailureAction") or "pause", "monitor": ns_seconds(cfg.get("Monitor")),
            "max_failure_ratio": cfg.get("MaxFailureRatio", 0), "order": cfg.get("Order") or "stop-first",
        }

    out["update_config"] = policy(spec.get("UpdateConfig"))
    out["rollback_config"] = policy(spec.get("RollbackConfig"))
    rp = tt.get("RestartPolicy") or {}
    out["restart_policy"] = {"condition": rp.get("Condition", "any"), "delay": ns_seconds(rp.get("Delay")),
                             "max_attempts": rp.get("MaxAttempts", 0), "window": ns_seconds(rp.get("Window"))}
    out["networks"] = {
        network_names.get(n.get("Target", ""), n.get("Target", "")): sorted(a for a in n.get("Aliases") or [] if a != short_name)
        for n in tt.get("Networks") or []
    }
    hc = cs.get("Healthcheck")
    if hc is not None:
        out["healthcheck"] = {"test": hc.get("Test"), "interval": ns_seconds(hc.get("Interval")),
                              "timeout": ns_seconds(hc.get("Timeout")), "retries": hc.get("Retries", 0),
                              "start_period": ns_seconds(hc.get("StartPeriod"))}
    out["mounts"] = sorted(
        f"{m.get('Type', 'volume')}:{m.get('Source', '')}:{m.get('Target')}{':ro' if m.get('ReadOnly') else ''}"
        + (f":size={m['TmpfsOptions']['SizeBytes']}" if (m.get("TmpfsOptions") or {}).get("SizeBytes") else "")
        for m in cs.get("Mounts") or []
    )
    out["memory_limit"] = ((tt.get("Resources") or {}).get("Limits") or {}).get("MemoryBytes")
    return out


@dataclass
class ObservedState:
    stack: str
    services: dict[str, dict[str, Any]]  # full name -> normalised spec
    service_ids: dict[str, str]
    network: dict[str, Any] | None  # name, subnet, attachable, driver; None when missing
    node_roles: dict[str, list[str]]  # node hostname -> role labels it carries (nodes not down)
    node_count: int
    secrets: dict[str, dict[str, Any]]  # docker name -> {id, logical, version, ours}
    nodes: list[Node] = field(default_factory=list)  # every node, with state and role labels
    configs: set[str] = field(default_factory=set)  # names of the swarm's configs


def observe(client: Any, stack: str, network_name: str) -> ObservedState:
    """Read services, secrets, the network and node labels with docker-py (read-only calls)."""
    from docker.errors import APIError

    api = client.api
    try:
        nets = api.networks()
        svcs = api.services(filters={"label": f"{STACK_LABEL}={stack}"})
        nodes = api.nodes()
        secrets = api.secrets()
        config_names = {c["Spec"]["Name"] for c in api.configs()}
    except APIError as exc:
        raise UserError(f"cannot read the swarm: {exc.explanation or exc}; run this on a swarm manager "
                        "(docker swarm init, or bidsflux bootstrap)") from None
    names = {n["Id"]: n["Name"] for n in nets}
    network = None
    for n in nets:
        if n["Name"] == network_name and n.get("Scope") == "swarm":
            configs = (n.get("IPAM") or {}).get("Config") or []
            network = {"name": n["Name"], "subnet": configs[0].get("Subnet") if configs else None,
                       "attachable": bool(n.get("Attachable")), "driver": n.get("Driver"), "id": n["Id"],
                       # Docker's overlay option: present (value "") when IPsec is on.
                       "encrypted": "encrypted" in (n.get("Options") or {})}
    services, ids = {}, {}
    for s in svcs:
        spec = s["Spec"]
        short = spec["Name"][len(stack) + 1:] if spec["Name"].startswith(stack + "_") else spec["Name"]
        services[spec["Name"]] = observed_service(spec, short, names)
        ids[spec["Name"]] = s["ID"]
    all_nodes = observe_nodes(nodes)
    node_roles = {n.hostname: n.roles for n in all_nodes if n.state != "down"}
    observed_secrets = {}
    for s in secrets:
        labels = (s.get("Spec") or {}).get("Labels") or {}
        ours = labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_STACK) == stack
        try:
            version = int(labels.get(LABEL_VERSION, ""))
        except ValueError:
            version = 0
        observed_secrets[s["Spec"]["Name"]] = {"id": s["ID"], "logical": labels.get(LABEL_SECRET), "version": version,
                                               "ours": ours, "created": s.get("CreatedAt", "")}
    return ObservedState(stack, services, ids, network, node_roles, len(nodes), observed_secrets, all_nodes, config_names)


# ---------------------------------------------------------------- diff and plan


@dataclass
class Change:
    kind: str  # service | network | node_label | secret | config
    action: str  # create | update | remove
    name: str
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # field -> {"live": .., "desired": ..}
    note: str = ""


@dataclass
class Plan:
    stack: str
    changes: list[Change]
    warnings: list[str] = field(default_factory=list)  # what no apply can fix (a node that has not joined)

    @property
    def empty(self) -> bool:
        return not self.changes

    def of(self, kind: str, *actions: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind and (not actions or c.action in actions)]

    @property
    def service_changes(self) -> list[Change]:
        return self.of("service")

    def to_dict(self) -> dict[str, Any]:
        return {"stack": self.stack, "changes": [asdict(c) for c in self.changes], "warnings": list(self.warnings),
                "summary": {a: sum(1 for c in self.changes if c.action == a) for a in ("create", "update", "remove")}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Policies are compared key by key: docker fills in the keys the stack file leaves out.
_PARTIAL_FIELDS = ("update_config", "rollback_config", "restart_policy", "healthcheck")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) < 1e-9
        except (TypeError, ValueError):
            return False
    return a == b


# Fields the stack file may leave out; when it does, `docker stack deploy` clears them, so a live
# value with nothing stated is a change too (a removed command or healthcheck must show in plan).
_OPTIONAL_FIELDS = ("command", "entrypoint", "hostname", "healthcheck", "memory_limit", "user")


def diff_service(want: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Fields whose live value differs from what the stack file states."""
    changed: dict[str, dict[str, Any]] = {}
    for key in _OPTIONAL_FIELDS:
        if want.get(key) is None and live.get(key) not in (None, [], {}, "", 0):
            changed[key] = {"live": live.get(key), "desired": None}
    for key, value in want.items():
        if value is None:
            continue
        current = live.get(key)
        if key == "image" and "@" not in str(value):
            # An image given by tag: the engine adds the digest it resolved; compare the tag only.
            current = strip_digest(str(current or ""))
        if key == "env":
            # Values may be secrets: the plan names the keys that differ, never their values.
            if not _same(value, current if current is not None else {}):
                changed[key] = env_change(value, current)
            continue
        if key in _PARTIAL_FIELDS and isinstance(value, dict):
            current = current or {}
            sub = {k: v for k, v in value.items() if not _same(v, current.get(k))}
            if sub:
                changed[key] = {"live": {k: current.get(k) for k in sub}, "desired": sub}
        elif not _same(value, current if current is not None else type(value)()):
            changed[key] = {"live": current, "desired": value}
    return changed


def diff(want: DesiredState, live: ObservedState) -> Plan:
    changes: list[Change] = []
    warnings: list[str] = []
    net = want.network
    if live.network is None:
        changes.append(Change("network", "create", net["name"],
                              {"subnet": {"live": None, "desired": net["subnet"]},
                               "attachable": {"live": None, "desired": True},
                               **({"encrypted": {"live": None, "desired": True}} if net.get("encrypted") else {})}))
    else:
        fields = {}
        if live.network["subnet"] != net["subnet"]:
            fields["subnet"] = {"live": live.network["subnet"], "desired": net["subnet"]}
        if not live.network["attachable"]:
            fields["attachable"] = {"live": False, "desired": True}
        if bool(live.network.get("encrypted")) != bool(net.get("encrypted", False)):
            fields["encrypted"] = {"live": bool(live.network.get("encrypted")), "desired": bool(net.get("encrypted"))}
        if fields:
            changes.append(Change("network", "update", net["name"], fields,
                                  "a swarm network cannot change in place: remove the stack's use of it, then "
                                  "`docker network rm` it and deploy again"))
    labels, warnings = label_changes(want.placement, live.nodes)
    for lc in labels:
        label = f"{role_label(lc.role)}=true"
        what = ", ".join(f"{want.stack}_{s}" for s in lc.services) or "no service"
        if lc.hostname == "?":
            note = f"several nodes: name them under nodes in site.yml (or `docker node update --label-add {label} NODE`)"
        elif lc.action == "create":
            note = f"places {what} on {lc.hostname}"
        else:
            note = f"moves {what} off {lc.hostname}"
        live_value, desired_value = (None, label) if lc.action == "create" else (label, None)
        changes.append(Change("node_label", lc.action, f"{lc.hostname}: {label}",
                              {"label": {"live": live_value, "desired": desired_value}}, note))
    for logical, docker_name in sorted(want.secrets.items()):
        if docker_name not in live.secrets:
            changes.append(Change("secret", "create", docker_name, {"logical": {"live": None, "desired": logical}},
                                  "generated with random content"))
    for docker_name, logical in sorted(want.configs.items()):
        if docker_name not in live.configs:
            changes.append(Change("config", "create", docker_name, {"logical": {"live": None, "desired": logical}},
                                  "from its file in stack/ (x-bidsflux-configs)"))
    for name, spec in sorted(want.services.items()):
        if name not in live.services:
            fields = {k: {"live": None, "desired": v} for k, v in spec.items() if v not in (None, [], {})}
            if "env" in fields:
                fields["env"] = env_change(spec["env"], None)
            changes.append(Change("service", "create", name, fields))
            continue
        fields = diff_service(spec, live.services[name])
        if fields:
            changes.append(Change("service", "update", name, fields))
    for name in sorted(set(live.services) - set(want.services)):
        changes.append(Change("service", "remove", name))
    return Plan(want.stack, changes, warnings)


def format_plan(plan: Plan) -> list[str]:
    """Human lines: one per object, then one per changed field."""
    if plan.empty:
        return ["No changes. The swarm matches the site files."] + [f"warning: {w}" for w in plan.warnings]
    sign = {"create": "+", "update": "~", "remove": "-"}
    lines = []
    for c in plan.changes:
        lines.append(f"{sign[c.action]} {c.kind} {c.name} ({c.action})")
        if c.action == "update":
            for key, v in c.fields.items():
                lines.append(f"    {key}: {_short(v['live'])} -> {_short(v['desired'])}")
        if c.note:
            lines.append(f"    note: {c.note}")
    s = plan.to_dict()["summary"]
    lines += [f"warning: {w}" for w in plan.warnings]
    lines.append(f"Plan: {s['create']} to create, {s['update']} to update, {s['remove']} to remove.")
    return lines


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 400 else text[:397] + "..."
