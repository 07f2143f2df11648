"""Render the swarm stack template (stack/bidsflux.stack.yml) against the site file.

The template is plain YAML whose string values may hold Jinja expressions over the site file.
A value that is exactly one "{{ expr }}" keeps the expression's type, so ports stay numbers and
lists stay lists. Output is deterministic: keys are sorted and nothing depends on time.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
import yaml

from bidsflux.diagnostics import Diagnostic, UserError
from bidsflux.site import endpoints
from bidsflux.site.indexer import compose_escape, indexer_extra_hosts, storescp_exec_command
from bidsflux.site.sandbox import TEMPLATE_FAILURES, BoundedSandbox, describe, time_limit
from bidsflux.site.yamlsource import Document

ROLE_LABEL_PREFIX = "bidsflux.role."
# Services that run outside the swarm stack but may be named in site.yml roles.
NON_SWARM_SERVICES = {"mercure"}
_SINGLE_EXPR = re.compile(r"^\{\{\s*(.+?)\s*\}\}$", re.S)

HEADER = "# Rendered by `bidsflux render` from stack/site.yml and stack/bidsflux.stack.yml. Do not edit.\n"


def role_label(role: str) -> str:
    return f"{ROLE_LABEL_PREFIX}{role}"


def role_constraint(role: str) -> str:
    return f"node.labels.{role_label(role)} == true"


def versioned_secret_name(stack: str, logical: str, version: int) -> str:
    return f"{stack}_{logical}_v{version}"


def config_catalog(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Logical configs made from files next to the template (x-bidsflux-configs)."""
    return dict(template.get("x-bidsflux-configs") or {})


def content_config_name(stack: str, logical: str, data: bytes) -> str:
    """A swarm config's name: configs are immutable, so a new content is a new name (and the
    services using it roll); 12 hex digits of SHA-256 keep it under swarm's 64 characters."""
    return f"{stack}_{logical}_{hashlib.sha256(data).hexdigest()[:12]}"


@dataclass
class RenderedConfig:
    logical: str
    name: str  # docker name, content-hashed
    data: bytes


@dataclass
class RenderedStack:
    stack_name: str
    data: dict[str, Any]
    secrets: dict[str, str]  # logical secret -> versioned docker name
    configs: dict[str, RenderedConfig] = field(default_factory=dict)  # logical -> content and docker name

    def to_yaml(self) -> str:
        return HEADER + dump_yaml(self.data)


class _BlockDumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_presenter)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=True, default_flow_style=False, width=1000, allow_unicode=True)


def secret_catalog(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Logical secrets the stack needs, with how each is generated and what rotation implies."""
    return dict(template.get("x-bidsflux-secrets") or {})


# Who makes a secret's value, and so which command renews it. Only `generated` values are made
# by `secrets rotate`; the others come from GitLab or the operator and a random value would break
# what uses them (a runner loses its registration, a bot its token).
OWNERS = ("generated", "registered", "minted", "provided")
_OWNER_OF_KIND = {"runner_config": "registered", "placeholder": "minted", "tls_ca_bundle": "provided"}
DEFAULT_RENEW = {
    "registered": "bidsflux runners register",
    "minted": "bidsflux gitlab tokens rotate",
    "provided": "bidsflux tls apply (or the command its rotation note names)",
}


def secret_owner(entry: Mapping[str, Any]) -> str:
    """`owner:` of an x-bidsflux-secrets entry; without one, what its `generate` kind implies."""
    return str(entry.get("owner") or _OWNER_OF_KIND.get(str(entry.get("generate")), "generated"))


def secret_renewal(entry: Mapping[str, Any]) -> str:
    """The command that renews a secret `secrets rotate` does not own."""
    return str(entry.get("renew") or DEFAULT_RENEW.get(secret_owner(entry), "bidsflux secrets rotate"))


def indexer_command(site: Mapping[str, Any]) -> str:
    """storescp's --exec-on-eostudy command as the stack file carries it ($ escaped for compose)."""
    return compose_escape(storescp_exec_command(site))


_SIZE = re.compile(r"^(\d+)([kmg]?)$", re.I)
DEFAULT_GITLAB_SHM = "256m"


def size_bytes(value: int | str) -> int:
    """A size as site.yml writes it (bytes, or a number with k, m or g; binary units) in bytes."""
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value).strip())
    if not m:
        raise UserError(f"'{value}' is not a size (write e.g. 256m or 1g)")
    return int(m.group(1)) * 1024 ** "_kmg".index((m.group(2) or "_").lower())


def node_trust_folder(site: Mapping[str, Any]) -> str:
    """<node_trust_dir>/<registry> as the node-trust container sees it (the host's / under /host)."""
    trust_dir = str((site.get("tls") or {}).get("node_trust_dir", "/etc/docker/certs.d")).rstrip("/")
    return f"/host{trust_dir}/{endpoints.registry_address(site)}"


def node_trust_script(site: Mapping[str, Any]) -> str:
    """The node-trust service's shell: copy the CA bundle to <node_trust_dir>/<registry>/ca.crt on
    its node (atomically), then idle. No `$` in it: compose would interpolate it."""
    folder = shlex.quote(node_trust_folder(site))
    return (f"set -e; mkdir -p {folder}; cp {endpoints.CA_BUNDLE_PATH} {folder}/.ca.crt.new; "
            f"mv {folder}/.ca.crt.new {folder}/ca.crt; echo trusting the site CA in {folder}/ca.crt; "
            "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done")


def node_trust_parent(site: Mapping[str, Any]) -> str:
    """Top-level folder of tls.node_trust_dir: it exists on every node (certs.d itself may not)."""
    trust_dir = str((site.get("tls") or {}).get("node_trust_dir", "/etc/docker/certs.d"))
    return "/" + trust_dir.strip("/").split("/")[0]


def template_context(site: Mapping[str, Any], secret_name: Callable[[str], str],
                     config_name: Callable[[str], str] | None = None) -> dict[str, Any]:
    disks = site["paths"]["minio_disks"]
    targets = [f"/data{i + 1}" for i in range(len(disks))]
    return {
        **site,
        # The compose file of docker 20.10's stack deploy takes a tmpfs size in bytes only.
        "gitlab_shm_bytes": size_bytes((site.get("resources") or {}).get("gitlab_shm_size", DEFAULT_GITLAB_SHM)),
        "minio_volumes": [
            {"type": "bind", "source": d["path"], "target": t} for d, t in zip(disks, targets, strict=True)
        ],
        "minio_volume_targets": targets,
        "indexer_command": indexer_command(site),
        "gitlab_url": endpoints.gitlab_url(site),
        "registry_url": endpoints.https_url(site, "registry"),
        "registry_address": endpoints.registry_address(site),
        "s3_console_url": endpoints.https_url(site, "s3_console"),
        "proxied_hosts": endpoints.proxied_hosts(site),
        "ca_bundle_path": endpoints.CA_BUNDLE_PATH,
        "node_trust_script": node_trust_script(site),
        "node_trust_parent": node_trust_parent(site),
        "proxy_extra_hosts": ["host.docker.internal:host-gateway"] if site["dicom_endpoint"]["kind"] == "mercure" else [],
        # The names the indexer dials, on the node's address (see site/indexer.py: "Reach").
        "indexer_extra_hosts": [f"{name}:{ip}" for name, ip in indexer_extra_hosts(site).items()],
        "node_trust_file": node_trust_folder(site) + "/ca.crt",
        "secret_name": secret_name,
        "config_name": config_name or (lambda logical: logical),
    }


class TemplateRenderer:
    """Expands "{{ ... }}" in a YAML tree (sandboxed, bounded), collecting errors with their file positions."""

    def __init__(self, template_doc: Document, context: dict[str, Any]) -> None:
        self.doc = template_doc
        self.context = context
        # Sandboxed and bounded: the template is data from the repository; it must not reach
        # Python internals, and a mistake in it must end as a message, not exhaust the machine.
        self.env = BoundedSandbox(keep_trailing_newline=True)
        self.errors: list[Diagnostic] = []

    def value(self, node: Any, path: list[Any]) -> Any:
        if isinstance(node, dict):
            return {k: self.value(v, [*path, k]) for k, v in node.items() if not str(k).startswith("x-bidsflux")}
        if isinstance(node, list):
            return [self.value(v, [*path, i]) for i, v in enumerate(node)]
        if isinstance(node, str) and ("{{" in node or "{%" in node):
            return self.expand(node, path)
        return node

    def expand(self, text: str, path: list[Any]) -> Any:
        try:
            with time_limit():
                single = _SINGLE_EXPR.match(text)
                if single and "{{" not in single.group(1):
                    return _plain(self.env.compile_expression(single.group(1), undefined_to_none=False)(**self.context))
                return self.env.from_string(text).render(**self.context)
        except TEMPLATE_FAILURES as exc:
            self.errors.append(self.doc.diagnostic(path, describe(exc)))
            return None

    def condition(self, expr: Any, path: list[Any]) -> bool:
        if not isinstance(expr, str):
            self.errors.append(self.doc.diagnostic(path, "x-bidsflux-when must be an expression string"))
            return False
        try:
            with time_limit():
                return bool(self.env.compile_expression(expr, undefined_to_none=False)(**self.context))
        except TEMPLATE_FAILURES as exc:
            self.errors.append(self.doc.diagnostic(path, describe(exc)))
            return False


def _plain(value: Any, depth: int = 0) -> Any:
    """An expression's result as data a stack file can hold (text, number, list, mapping)."""
    if depth > 20:
        raise ValueError("the expression gives a value nested too deep")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, range)):
        return [_plain(v, depth + 1) for v in value]
    raise TypeError(f"the expression gives {type(value).__name__}, not a value a stack file can hold")


def render_stack(site: Mapping[str, Any], template_doc: Document, versions: Mapping[str, int] | None = None) -> RenderedStack:
    """The stack file `docker stack deploy` receives. `versions` maps a logical secret to its
    current version (1 when unknown)."""
    stack = site["site"]["name"]
    versions = dict(versions or {})
    template = template_doc.data
    if not isinstance(template, dict):
        raise UserError("", [template_doc.diagnostic([], "the stack template must be a mapping")])
    catalog = secret_catalog(template)
    used: dict[str, str] = {}

    def secret_name(logical: str) -> str:
        if logical not in catalog:
            raise jinja2.TemplateError(f"secret '{logical}' is not declared in x-bidsflux-secrets")
        used[logical] = versioned_secret_name(stack, logical, int(versions.get(logical, 1)))
        return used[logical]

    configs = _config_files(stack, template_doc)
    used_configs: dict[str, RenderedConfig] = {}

    def config_name(logical: str) -> str:
        if logical not in configs:
            raise jinja2.TemplateError(f"config '{logical}' is not declared in x-bidsflux-configs")
        found = configs[logical]
        if isinstance(found, str):
            raise jinja2.TemplateError(found)
        used_configs[logical] = found
        return found.name

    renderer = TemplateRenderer(template_doc, template_context(site, secret_name, config_name))
    role_of = {svc: role for role, services in site["roles"].items() for svc in services}

    services: dict[str, Any] = {}
    for name, spec in (template.get("services") or {}).items():
        if not isinstance(spec, dict):
            continue
        if "x-bidsflux-when" in spec and not renderer.condition(spec["x-bidsflux-when"], ["services", name, "x-bidsflux-when"]):
            continue
        out = renderer.value(spec, ["services", name])
        role = role_of.get(name)
        if role is not None:
            deploy = out.setdefault("deploy", {})
            placement = deploy.setdefault("placement", {})
            constraints = placement.setdefault("constraints", [])
            if role_constraint(role) not in constraints:
                constraints.append(role_constraint(role))
        services[name] = out

    data: dict[str, Any] = {"services": services}
    for section in ("networks", "volumes", "configs", "secrets"):
        if section in template:
            data[section] = renderer.value(template[section], [section])
    # Drop secrets no rendered service uses (for example storescp's when Mercure is the endpoint).
    if "secrets" in data:
        referenced = {
            (s if isinstance(s, str) else s.get("source") if isinstance(s, dict) else None)
            for svc in services.values()
            for s in svc.get("secrets", []) or []
        }
        data["secrets"] = {k: v for k, v in data["secrets"].items() if k in referenced}
        used = {k: v for k, v in used.items() if k in referenced}
    if "configs" in data:
        referenced = {c.get("source") if isinstance(c, dict) else c for svc in services.values()
                      for c in svc.get("configs", []) or []}
        data["configs"] = {k: v for k, v in data["configs"].items() if k in referenced}
        used_configs = {k: v for k, v in used_configs.items() if k in referenced}
    # Secrets used outside the stack too (the Mercure module's files, `bidsflux s3`, the canary)
    # exist whichever services are rendered: `always: true` in x-bidsflux-secrets.
    for logical, spec in catalog.items():
        if isinstance(spec, dict) and spec.get("always") and logical not in used:
            used[logical] = versioned_secret_name(stack, logical, int(versions.get(logical, 1)))
    if renderer.errors:
        raise UserError("", renderer.errors)
    return RenderedStack(stack_name=stack, data=data, secrets=dict(sorted(used.items())),
                         configs=dict(sorted(used_configs.items())))


def _config_files(stack: str, template_doc: Document) -> dict[str, RenderedConfig | str]:
    """Each x-bidsflux-configs entry read from the template's folder, or why it cannot be."""
    template = template_doc.data if isinstance(template_doc.data, dict) else {}
    out: dict[str, RenderedConfig | str] = {}
    for logical, spec in config_catalog(template).items():
        file = str((spec or {}).get("file", "")) if isinstance(spec, dict) else ""
        path = template_doc.path.parent / file
        if not file or "/" in file or file.startswith("."):
            out[logical] = f"config '{logical}': file must be a file name next to {template_doc.display}"
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            out[logical] = f"config '{logical}': cannot read {path.name} next to {template_doc.display} ({exc.strerror})"
            continue
        out[logical] = RenderedConfig(logical, content_config_name(stack, str(logical), data), data)
    return out
