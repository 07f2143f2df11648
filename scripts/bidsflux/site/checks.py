"""`bidsflux validate`: schema checks of every file under stack/, then the rules no schema
can express (cross references, port collisions, placement, placeholders, private subnet), then
the CI files and the rendered stack against the official GitLab CI and compose-spec schemas."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bidsflux.diagnostics import Diagnostic, UserError
from bidsflux.site import hazards, schemas
from bidsflux.site.render import NON_SWARM_SERVICES, ROLE_LABEL_PREFIX, render_stack, secret_catalog
from bidsflux.site.repository import Repository
from bidsflux.site.topology import check_topology
from bidsflux.site.yamlsource import CI_TAGS, Document, load

# GitLab CI keywords that are not jobs.
CI_GLOBAL_KEYS = {
    "default", "include", "stages", "variables", "workflow", "image", "services", "cache",
    "before_script", "after_script", "pages", "spec",
}


@dataclass
class Loaded:
    """Documents that loaded and passed their schema, by repository-relative path."""

    docs: dict[str, Document] = field(default_factory=dict)
    valid: set[str] = field(default_factory=set)


def _load_all(repo: Repository, out: list[Diagnostic]) -> Loaded:
    loaded = Loaded()
    for rel, schema_name in schemas.STACK_SCHEMAS.items():
        path = repo.site_file if rel == "stack/site.yml" else repo.root / rel
        try:
            doc = load(path, repo.root)
        except UserError as exc:
            out.extend(exc.diagnostics)
            continue
        loaded.docs[rel] = doc
        if doc.data is None:
            out.append(doc.diagnostic([], "file is empty"))
            continue
        problems = schemas.check_document(doc, repo.schema_dir / schema_name)
        out.extend(problems)
        if not problems:
            loaded.valid.add(rel)
    return loaded


def _modeline_checks(repo: Repository, loaded: Loaded, out: list[Diagnostic]) -> None:
    for rel, doc in loaded.docs.items():
        first = doc.path.read_text(encoding="utf-8").splitlines()[:1]
        if not first or not first[0].startswith("# yaml-language-server: $schema="):
            out.append(Diagnostic(doc.display, 1, 1, "", "first line must be a '# yaml-language-server: $schema=...' modeline"))
            continue
        target = (doc.path.parent / first[0].split("=", 1)[1].strip()).resolve()
        expected = (repo.schema_dir / schemas.STACK_SCHEMAS[rel]).resolve()
        if target != expected:
            out.append(Diagnostic(doc.display, 1, 1, "", f"modeline points at {first[0].split('=', 1)[1].strip()}, expected the schema {expected.name}"))


def _site_checks(site: Document, out: list[Diagnostic]) -> None:
    data = site.data
    subnet_path = ["swarm", "network", "subnet"]
    try:
        net = ipaddress.ip_network(data["swarm"]["network"]["subnet"], strict=True)
    except ValueError as exc:
        out.append(site.diagnostic(subnet_path, f"not a network address: {exc}"))
    else:
        private = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
        if not any(net.subnet_of(p) for p in private):
            out.append(site.diagnostic(
                subnet_path,
                f"{net} is not a private range: overlay traffic to it would shadow real hosts on "
                "the internet; use a block inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
            ))
    for i, cidr in enumerate(data["health"]["monitoring_allowlist"]):
        try:
            ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            out.append(site.diagnostic(["health", "monitoring_allowlist", i], f"not a network address: {exc}"))

    # Port collisions: every published port, plus the swarm data-path port.
    seen: dict[int, list[object]] = {}
    for name, port in data["ports"].items():
        path: list[object] = ["ports", name]
        if port in seen:
            out.append(site.diagnostic(path, f"port {port} is already used by {'.'.join(map(str, seen[port]))}"))
        else:
            seen[port] = path
    dpp = data["swarm"]["data_path_port"]
    if dpp in seen:
        out.append(site.diagnostic(["swarm", "data_path_port"], f"port {dpp} is already used by {'.'.join(map(str, seen[dpp]))}"))
    if dpp == 4789:
        out.append(site.diagnostic(["swarm", "data_path_port"], "4789 is the VXLAN default that other overlays use; pick another (9789)"))

    hazards.indexer_checks(site, out)
    hazards.path_checks(site, out)

    for name, ref in data["images"].items():
        if isinstance(ref, str) and ref.endswith(":latest"):
            out.append(site.diagnostic(["images", name], "':latest' is not pinned; use a release tag or a digest"))

    h = data["health"]
    if h["disk_warn_percent"] >= h["disk_fail_percent"]:
        out.append(site.diagnostic(["health", "disk_warn_percent"], "must be below disk_fail_percent"))
    if h["token_fail_days"] >= h["token_warn_days"]:
        out.append(site.diagnostic(["health", "token_fail_days"], "must be below token_warn_days"))

    seen_roles: dict[str, str] = {}
    for role, services in data["roles"].items():
        for i, svc in enumerate(services):
            if svc in seen_roles:
                out.append(site.diagnostic(["roles", role, i], f"'{svc}' is already placed on role {seen_roles[svc]}; a service runs on one role"))
            seen_roles[svc] = role


# Ranges an overlay must not shadow unless the site says so (swarm.network.overlap_acknowledged):
# Docker's own networks (docker0, the first docker_gwbridge, the swarm ingress) and LAN ranges
# home and office routers hand out by default.
DOCKER_DEFAULT_RANGES = {"172.17.0.0/16": "docker0's default bridge", "172.18.0.0/16": "docker_gwbridge",
                         "10.0.0.0/24": "the swarm ingress network"}
COMMON_LAN_RANGES = ("192.168.0.0/24", "192.168.1.0/24", "192.168.2.0/24", "192.168.178.0/24", "10.0.1.0/24",
                     "10.1.1.0/24", "172.16.0.0/24")


def _subnet_overlap_check(site: Document, out: list[Diagnostic]) -> None:
    network = site.data["swarm"]["network"]
    try:
        net = ipaddress.ip_network(network["subnet"], strict=True)
    except ValueError:
        return  # reported by _site_checks
    acknowledged = []
    for cidr in network.get("overlap_acknowledged") or []:
        try:
            acknowledged.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue
    ranges = {**DOCKER_DEFAULT_RANGES, **{r: "a common LAN range" for r in COMMON_LAN_RANGES}}
    hits = []
    for cidr, what in ranges.items():
        other = ipaddress.ip_network(cidr)
        if net.overlaps(other) and not any(other.subnet_of(a) for a in acknowledged):
            hits.append((str(other), what))
    if hits:
        shown = ", ".join(f"{cidr} ({what})" for cidr, what in hits)
        out.append(site.diagnostic(
            ["swarm", "network", "subnet"],
            f"{net} overlaps {shown}: containers could not reach hosts there; pick another block "
            f"(e.g. 10.87.0.0/16), or if this is intended list {', '.join(c for c, _ in hits)} under "
            "swarm.network.overlap_acknowledged"))


def _advertise_addr_check(site: Document, out: list[Diagnostic]) -> None:
    """docker swarm init --advertise-addr takes <ip|interface>[:port]."""
    value = str(site.data["swarm"]["advertise_addr"])
    host, port = value, None
    if value.startswith("["):  # [ipv6]:port
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        host, port = value.split(":")
    problem = ""
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        problem = f"port '{port}' is not a number from 1 to 65535"
    elif re.fullmatch(r"[0-9.]+", host) or ":" in host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            problem = f"'{host}' is not a valid IP address (each of the four numbers is 0-255)"
    elif not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.@-]{0,14}", host):
        problem = f"'{host}' is neither an IP address nor a network interface name"
    if problem:
        out.append(site.diagnostic(["swarm", "advertise_addr"],
                                   f"{problem}; write an address of this host (10.0.0.5) or an interface (eth0)"))


def _storage_remote_host_check(site: Document, out: list[Diagnostic]) -> None:
    """The indexer's git-annex remote must go to the S3 API the stack serves (hosts.s3)."""
    text = site.data["indexer"]["storage_remote"]
    try:
        netloc = urlsplit(text).netloc
        if "{" in netloc or "}" in netloc:
            return  # a placeholder in the host: checked by the placeholder rule
        host = urlsplit(text).hostname
    except ValueError:
        return  # reported by hazards.indexer_checks
    hosts = site.data["hosts"]
    if host and host not in (hosts["s3"], hosts["s3_console"]):
        out.append(site.diagnostic(["indexer", "storage_remote"],
                                   f"host {host} is not hosts.s3 ({hosts['s3']}): the indexer would store data in "
                                   f"another S3; write s3://{hosts['s3']}/..."))


# What the indexer runs in for each dicom_endpoint.kind (storescp: the swarm service; mercure: the
# module containers Mercure's processor starts on its own node).
INDEXER_HOST_SERVICE = {"storescp": "dicom_endpoint", "mercure": "mercure"}
# Services whose host-mode ports the indexer dials through host-gateway: proxy (ports.https)
# and gitlab (ports.gitlab_ssh).
INDEXER_PEERS = ("proxy", "gitlab")


def _indexer_reach_check(site: Document, out: list[Diagnostic]) -> None:
    """The indexer dials hosts.gitlab and hosts.s3 at its own node's address (host-gateway, see
    site/indexer.py "Reach"): that node must be the one publishing the proxy's and GitLab's ports."""
    data = site.data
    endpoint = INDEXER_HOST_SERVICE.get(data["dicom_endpoint"]["kind"])
    where = {svc: (role, i) for role, services in data["roles"].items() for i, svc in enumerate(services)}
    if endpoint not in where:
        return  # a service on no role: the placement check reports it
    role, index = where[endpoint]
    others = {svc: where[svc][0] for svc in INDEXER_PEERS if svc in where and where[svc][0] != role}
    if others:
        shown = ", ".join(f"{svc} is on role {r}" for svc, r in others.items())
        out.append(site.diagnostic(
            ["roles", role, index],
            f"{endpoint} is on role {role} but {shown}: the indexer reaches GitLab (HTTPS and git over "
            f"SSH) and S3 through its own node's address, where only the node of proxy and gitlab publishes "
            f"ports.https and ports.gitlab_ssh; put {endpoint} on the role of proxy and gitlab"))


def _mercure_receiver_port_check(site: Document, rules: Document, compose: Document | None,
                                 out: list[Diagnostic]) -> None:
    """rules.yml's receiver port is where Mercure listens inside its container; the compose file
    publishes ports.dicom to a container port, and the two must be the same port."""
    if site.data["dicom_endpoint"]["kind"] != "mercure" or not isinstance(rules.data, dict):
        return
    port = ((rules.data.get("settings") or {}).get("receiver") or {}).get("port")
    if port is None or compose is None or not isinstance(compose.data, dict):
        return
    receiver = (compose.data.get("services") or {}).get("receiver") or {}
    targets = []
    for entry in receiver.get("ports") or []:
        text = str(entry)
        if "ports.dicom" in text and ":" in text:
            target = text.rsplit(":", 1)[1].split("/")[0].strip()
            if target.isdigit():
                targets.append(int(target))
    if targets and port not in targets:
        out.append(rules.diagnostic(
            ["settings", "receiver", "port"],
            f"the receiver would listen on {port} inside its container, but {compose.display} publishes "
            f"ports.dicom ({site.data['ports']['dicom']}) to container port {targets[0]}: DICOM sent to the site "
            f"would reach nothing; set it to {targets[0]} (scanners use ports.dicom in {site.display})"))


def _image_pinned(ref: str) -> bool:
    if "@sha256:" in ref:
        return True
    last = ref.rsplit("/", 1)[-1]
    return ":" in last and not last.endswith(":latest")


def _runner_image_checks(runners: Document, out: list[Diagnostic]) -> None:
    for name, spec in runners.data["runners"].items():
        image = ((spec.get("docker") or {}) if isinstance(spec.get("docker"), dict) else {}).get("image")
        if isinstance(image, str) and "$" not in image and not _image_pinned(image):
            out.append(runners.diagnostic(["runners", name, "docker", "image"],
                                          f"'{image}' is not pinned (no tag, or ':latest'): jobs would change with "
                                          "the registry; use a release tag (alpine:3.20) or a digest"))


def _placement_checks(site: Document, template: Document, out: list[Diagnostic]) -> None:
    roles = site.data["roles"]
    placed = {svc for services in roles.values() for svc in services}
    services = template.data.get("services") or {}
    for role, names in roles.items():
        for i, svc in enumerate(names):
            if svc not in services and svc not in NON_SWARM_SERVICES:
                out.append(site.diagnostic(["roles", role, i], f"no service '{svc}' in stack/bidsflux.stack.yml"))
    for name, spec in services.items():
        # A global service runs on every node by definition (node-trust): no role to place it by.
        if name not in placed and ((spec.get("deploy") or {}).get("mode") != "global"):
            out.append(template.diagnostic(["services", name], f"service is on no node role; add it to roles in {site.display}"))
        constraints = ((spec.get("deploy") or {}).get("placement") or {}).get("constraints") or []
        for i, c in enumerate(constraints):
            if isinstance(c, str) and f"node.labels.{ROLE_LABEL_PREFIX}" in c:
                role = c.split(f"node.labels.{ROLE_LABEL_PREFIX}", 1)[1].split("=")[0].split("!")[0].strip()
                if role not in roles:
                    out.append(template.diagnostic(
                        ["services", name, "deploy", "placement", "constraints", i],
                        f"label {ROLE_LABEL_PREFIX}{role} is provided by no node role (roles: {', '.join(roles)})",
                    ))


def _secret_checks(template: Document, out: list[Diagnostic]) -> None:
    catalog = secret_catalog(template.data)
    declared = template.data.get("secrets") or {}
    for name in declared:
        if name not in catalog:
            out.append(template.diagnostic(["secrets", name], "secret is not declared in x-bidsflux-secrets (bootstrap would not create it)"))
    for svc, spec in (template.data.get("services") or {}).items():
        for i, s in enumerate(spec.get("secrets") or []):
            source = s if isinstance(s, str) else s.get("source") if isinstance(s, dict) else None
            if source is None:
                out.append(template.diagnostic(["services", svc, "secrets", i], "not a secret name or {source: name}"))
            elif source not in declared:
                out.append(template.diagnostic(["services", svc, "secrets", i], f"secret '{source}' is not defined under secrets:"))


def _runner_checks(repo: Repository, runners: Document, template: Document | None, ci_docs: list[Document], out: list[Diagnostic]) -> None:
    services = (template.data.get("services") or {}) if template is not None else None
    fleet = runners.data["runners"]
    for name, spec in fleet.items():
        if services is not None and spec["service"] not in services:
            out.append(runners.diagnostic(["runners", name, "service"], f"no service '{spec['service']}' in stack/bidsflux.stack.yml"))
    offers = [set(spec.get("tags") or []) for spec in fleet.values()]
    untagged = any(spec.get("run_untagged") for spec in fleet.values())
    for doc in ci_docs:
        if not isinstance(doc.data, dict):
            continue
        default_tags = ((doc.data.get("default") or {}) if isinstance(doc.data.get("default"), dict) else {}).get("tags")
        for job, spec in doc.data.items():
            if job in CI_GLOBAL_KEYS or not isinstance(spec, dict):
                continue
            tags = spec.get("tags", default_tags)
            if not isinstance(tags, list):
                continue
            wanted = {t for t in tags if isinstance(t, str) and "$" not in t}
            opt_in = isinstance(spec.get("variables"), dict) and "BIDSFLUX_OPT_IN" in spec["variables"]
            if job.startswith(".") and opt_in:
                continue  # a template for a runner the site adds only when it opts in (its variable says which)
            if not wanted:
                if not job.startswith(".") and not untagged and "tags" in spec:
                    out.append(doc.diagnostic([job, "tags"], "no runner in stack/runners.yml runs untagged jobs"))
                continue
            if not any(wanted <= offer for offer in offers):
                out.append(doc.diagnostic(
                    [job, "tags"],
                    f"no runner in stack/runners.yml offers all of {', '.join(sorted(wanted))}",
                ))


def _gitlab_checks(site: Document, gitlab: Document, template: Document | None, out: list[Diagnostic]) -> None:
    data = gitlab.data or {}
    catalog = secret_catalog(template.data) if template is not None else None
    for name, var in (data.get("variables") or {}).items():
        if "secret" in var and catalog is not None and var["secret"] not in catalog:
            out.append(gitlab.diagnostic(["variables", name, "secret"], f"unknown secret '{var['secret']}' (declared: {', '.join(sorted(catalog))})"))
        if "value_from" in var:
            node: Any = site.data
            for part in var["value_from"].split(".")[1:]:
                node = node.get(part) if isinstance(node, dict) else None
            if node is None or isinstance(node, (dict, list)):
                out.append(gitlab.diagnostic(["variables", name, "value_from"], f"{var['value_from']} is not a value in {site.display}"))
        if "secret" in var and not var.get("masked"):
            out.append(gitlab.diagnostic(["variables", name, "masked"], "a variable holding a secret must be masked"))
    projects = data.get("projects") or {}
    self_projects = [path for path, spec in projects.items() if isinstance(spec, dict) and spec.get("self")]
    root = gitlab.path.resolve().parent.parent  # stack/gitlab.yml -> the repository
    for path, spec in projects.items():
        config = str((spec or {}).get("ci_config_path") or "") if isinstance(spec, dict) else ""
        file, _, location = config.partition("@")
        other = location.partition(":")[0]
        # FILE@<this repository's project>: GitLab reads FILE from what bootstrap pushed, so it must exist here.
        if other and other in self_projects and not (root / file).is_file():
            out.append(gitlab.diagnostic(["projects", path, "ci_config_path"],
                                         f"{file} is not a file of this repository (pushed to {other})"))
    for name, sched in (data.get("schedules") or {}).items():
        if sched["project"] not in projects:
            out.append(gitlab.diagnostic(["schedules", name, "project"], f"project '{sched['project']}' is not in projects"))


def _ci_docs(repo: Repository, out: list[Diagnostic]) -> list[Document]:
    docs = []
    paths = [repo.gitlab_ci] if repo.gitlab_ci.exists() else []
    if repo.ci_templates.is_dir():
        paths += sorted(p for p in repo.ci_templates.rglob("*.yml"))
    for path in paths:
        try:
            doc = load(path, repo.root, CI_TAGS)
        except UserError as exc:
            out.extend(exc.diagnostics)
            continue
        if doc.data is None:
            continue
        out.extend(schemas.check_vendor(doc, "gitlab-ci"))
        docs.append(doc)
    return docs


def _bind_roles(site: Mapping[str, Any], rendered: Mapping[str, Any]) -> dict[str, list[str]]:
    """Role -> its services that bind-mount a folder under paths.* (their data lives on one host)."""
    roots = [Path(e["path"]) for entry in site["paths"].values() for e in (entry if isinstance(entry, list) else [entry])]
    out: dict[str, list[str]] = {}
    for role, services in site["roles"].items():
        for name in services:
            volumes = ((rendered.get("services") or {}).get(name) or {}).get("volumes") or []
            if any(isinstance(v, dict) and v.get("type") == "bind" and
                   any(r == Path(v["source"]) or r in Path(v["source"]).parents for r in roots) for v in volumes):
                out.setdefault(role, []).append(name)
    return out


def _rendered_checks(repo: Repository, site: Document, template: Document, out: list[Diagnostic]) -> None:
    try:
        rendered = render_stack(site.data, template)
    except UserError as exc:
        out.extend(exc.diagnostics)
        check_topology(site, {}, out)
        return
    check_topology(site, _bind_roles(site.data, rendered.data), out)
    doc = Document(path=Path("<rendered stack>"), display="<rendered stack>", raw=None, data=rendered.data)
    for d in schemas.check_vendor(doc, "compose-spec"):
        # The rendered file has no lines of its own: point at the template key instead.
        line, col = template.locate(d.key.replace("[", ".").replace("]", "").split(".")) if d.key else (1, 1)
        out.append(Diagnostic(template.display, line, col, d.key, f"rendered stack: {d.message}"))


# A domain's own semantics of one file under stack/: (that file, site.yml, the stack template or None).
FileCheck = Callable[[Document, Document, "Document | None"], list[Diagnostic]]


def validate(repo: Repository, file_checks: Mapping[str, FileCheck] | None = None) -> list[Diagnostic]:
    """Every problem of the files under stack/: schemas, modelines, cross checks, then each
    domain's checks of its own file (`file_checks`, by path), which the site package cannot know."""
    out: list[Diagnostic] = schemas.check_schema_files(repo.schema_dir)
    loaded = _load_all(repo, out)
    _modeline_checks(repo, loaded, out)
    ci_docs = _ci_docs(repo, out)
    site = loaded.docs.get("stack/site.yml") if "stack/site.yml" in loaded.valid else None
    template = loaded.docs.get("stack/bidsflux.stack.yml") if "stack/bidsflux.stack.yml" in loaded.valid else None
    if site is not None:
        _site_checks(site, out)
        _subnet_overlap_check(site, out)
        _advertise_addr_check(site, out)
        _storage_remote_host_check(site, out)
        _indexer_reach_check(site, out)
        if "stack/mercure/rules.yml" in loaded.valid:
            compose = loaded.docs.get("stack/mercure/docker-compose.yml")
            _mercure_receiver_port_check(site, loaded.docs["stack/mercure/rules.yml"], compose, out)
    if site is not None and template is not None:
        _placement_checks(site, template, out)
        _rendered_checks(repo, site, template, out)
    if template is not None:
        _secret_checks(template, out)
        hazards.template_credential_checks(template, out)
    if "stack/runners.yml" in loaded.valid:
        _runner_checks(repo, loaded.docs["stack/runners.yml"], template, ci_docs, out)
        _runner_image_checks(loaded.docs["stack/runners.yml"], out)
    if site is not None and "stack/gitlab.yml" in loaded.valid:
        _gitlab_checks(site, loaded.docs["stack/gitlab.yml"], template, out)
    if "stack/gitlab.yml" in loaded.valid:
        hazards.gitlab_credential_checks(loaded.docs["stack/gitlab.yml"], out)
    for file, file_check in (file_checks or {}).items():
        if site is not None and file in loaded.valid:
            out.extend(file_check(loaded.docs[file], site, template))
    return sorted(set(out), key=lambda d: (d.file, d.line, d.col, d.key, d.message))
