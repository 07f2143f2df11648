"""The runner fleet of stack/runners.yml: register in GitLab, write config.toml, roll the services.

Runners are created with `POST /user/runners` (GitLab 17 removed registration tokens), which
returns the runner's `glrt-` token once. The token goes straight into the config.toml of the
swarm service that runs the runner, stored as a new version of that service's config secret;
the service is then pointed at the new version (a rolling update). Only after that are the
runners it replaces deleted in GitLab, so a failure half-way leaves working runners behind and a
re-run repairs everything. A runner is known in GitLab by its description, which is its name in
runners.yml; instance runners GitLab knows but runners.yml does not are deleted."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import tomli_w

from bidsflux.diagnostics import UserError
from bidsflux.gitlab.objects import gitlab_errors
from bidsflux.site.endpoints import CA_BUNDLE_PATH, docker_readonly_socket

CONFIG_TARGET = "runner_config.toml"
METRICS_ADDRESS = "127.0.0.1:9252"  # the services' healthcheck reads /metrics here


RUNNER_TYPES = {"instance": "instance_type", "group": "group_type", "project": "project_type"}


@dataclass
class RunnerSpec:
    name: str
    service: str
    tags: list[str]
    run_untagged: bool
    locked: bool
    executor: str
    concurrent: int
    docker: dict[str, Any]
    note: str = ""
    type: str = "instance"  # instance | group | project (doc/ci/runners/runners_scope.md)
    owner: str | None = None  # group or project path for group/project runners
    access_level: str = "not_protected"  # ref_protected: jobs of protected branches/tags only
    environment: list[str] = field(default_factory=list)  # [[runners]] environment for every job

    @property
    def runner_type(self) -> str:
        return RUNNER_TYPES[self.type]


DOCKER_SOCKET = "/var/run/docker.sock"
# The stack's read-only Docker API (HAProxy, GET/HEAD only): its service and where it listens.
READONLY_SERVICE = "docker-readonly"
MOUNT_NAMES = ("docker_socket", "docker_readonly", "state", "mercure_config")


def readonly_socket(site: Mapping[str, Any]) -> str:
    """The host path of the read-only Docker API's socket (docker.sock in paths.docker_readonly)."""
    return docker_readonly_socket(site)


def mount_volumes(mounts: list[str], site: Mapping[str, Any]) -> list[str]:
    """Docker volumes (host:container[:ro]) for the named host resources a runner's jobs get.

    Host folders appear at the same path in the job, so the paths of site.yml hold inside jobs too:
      docker_socket   the host's Docker API (only for the runner that deploys)
      docker_readonly the read-only Docker API (GET/HEAD) as the job's /var/run/docker.sock
      state           paths.state_dir and the folder of secrets.file (the values file)
      mercure_config  Mercure's config folder (paths.mercure_base/config)
    A `:ro` suffix mounts read-only."""
    paths = site.get("paths") or {}
    out: list[str] = []
    for mount in mounts:
        name, _, mode = mount.partition(":")
        suffix = ":ro" if mode == "ro" else ""
        if name == "docker_socket":
            hosts = [DOCKER_SOCKET]
        elif name == "docker_readonly":
            # Where the Docker CLI and docker-py look by default; the service is on this node.
            out.append(f"{readonly_socket(site)}:{DOCKER_SOCKET}{suffix}")
            continue
        elif name == "state":
            hosts = [str(paths["state_dir"]["path"])]
            values_dir = str(PurePosixPath(str((site.get("secrets") or {}).get("file", ""))).parent)
            if values_dir not in ("", ".") and not PurePosixPath(values_dir).is_relative_to(hosts[0]):
                hosts.append(values_dir)
        elif name == "mercure_config":
            hosts = [str(PurePosixPath(str(paths["mercure_base"]["path"])) / "config")]
        else:
            raise UserError(f"unknown runner mount '{name}' in stack/runners.yml (use {', '.join(MOUNT_NAMES)})")
        out += [f"{h}:{h}{suffix}" for h in hosts]
    return out


def runner_specs(runners_doc: Mapping[str, Any], site: Mapping[str, Any] | None = None) -> list[RunnerSpec]:
    """Runners of runners.yml; with `site`, each runner's `mounts` become docker volumes."""
    out = []
    for name, r in (runners_doc.get("runners") or {}).items():
        docker = dict(r.get("docker") or {})
        mounts = list(docker.pop("mounts", None) or [])
        if mounts:
            if site is None:
                raise UserError(f"runner {name} names mounts, which need site.yml to resolve")
            docker["volumes"] = mount_volumes(mounts, site) + list(docker.get("volumes") or [])
        out.append(RunnerSpec(name=name, service=r["service"], tags=list(r.get("tags") or []),
                              run_untagged=bool(r.get("run_untagged", False)), locked=bool(r.get("locked", False)),
                              executor=r["executor"], concurrent=int(r.get("concurrent", 1)),
                              docker=docker, note=r.get("description", ""),
                              type=str(r.get("type", "instance")), owner=r.get("owner"),
                              access_level=str(r.get("access_level", "not_protected")),
                              environment=list(r.get("environment") or [])))
    return out


def create_params(gl: Any, spec: RunnerSpec) -> dict[str, Any]:
    """POST /user/runners parameters (lib/api/user_runners.rb): the scope by id."""
    data: dict[str, Any] = {"runner_type": spec.runner_type, "description": spec.name, "tag_list": spec.tags,
                            "run_untagged": spec.run_untagged, "locked": spec.locked,
                            "access_level": spec.access_level, "maintenance_note": spec.note[:1024]}
    if spec.type == "group":
        data["group_id"] = gl.groups.get(spec.owner).id
    elif spec.type == "project":
        data["project_id"] = gl.projects.get(spec.owner).id
    return data


def config_secrets(stack_template: Mapping[str, Any]) -> dict[str, str]:
    """Service name -> logical secret mounted as its runner_config.toml (from the stack template)."""
    out = {}
    for svc, spec in (stack_template.get("services") or {}).items():
        for ref in spec.get("secrets") or []:
            if isinstance(ref, Mapping) and ref.get("target") == CONFIG_TARGET:
                out[svc] = ref["source"]
    return out


def render_config(runners: list[tuple[RunnerSpec, str]], gitlab_url: str) -> str:
    """config.toml for one service: every (runner, glrt token) it runs."""
    entries = []
    for spec, token in runners:
        entry: dict[str, Any] = {"name": spec.name, "url": gitlab_url, "token": token, "executor": spec.executor,
                                 "limit": spec.concurrent}
        if spec.environment:
            entry["environment"] = list(spec.environment)
        if gitlab_url.startswith("https://"):
            # The site CA the stack mounts into every runner service; the runner also hands it to
            # jobs as CI_SERVER_TLS_CA_FILE (gitlab-runner docs, [[runners]] tls-ca-file).
            entry["tls-ca-file"] = CA_BUNDLE_PATH
        if spec.executor == "docker":
            d = spec.docker
            docker: dict[str, Any] = {"image": d["image"], "privileged": bool(d.get("privileged", False)),
                                      "pull_policy": list(d.get("pull_policy") or ["if-not-present"]),
                                      "volumes": list(d.get("volumes") or []), "tls_verify": False,
                                      "disable_cache": False, "shm_size": 0}
            if d.get("network_mode"):
                docker["network_mode"] = d["network_mode"]
            for key in ("devices", "cap_add", "security_opt"):
                if d.get(key):
                    docker[key] = list(d[key])
            entry["docker"] = docker
        entries.append(entry)
    doc = {"concurrent": sum(s.concurrent for s, _ in runners) or 1, "check_interval": 0,
           "listen_address": METRICS_ADDRESS, "runners": entries}
    return "# gitlab-runner config.toml written by `bidsflux runners register`; do not edit\n" + tomli_w.dumps(doc)


@dataclass
class LiveRunner:
    id: int
    description: str
    status: str
    online: bool
    tags: list[str] = field(default_factory=list)
    runner_type: str = "instance_type"


def list_live(gl: Any) -> list[LiveRunner]:
    out = []
    for r in gl.runners_all.list(get_all=True):
        a = r.asdict()
        out.append(LiveRunner(a["id"], a.get("description") or "", a.get("status") or "", bool(a.get("online")),
                              list(a.get("tag_list") or []), a.get("runner_type", "instance_type")))
    return out


@dataclass
class RegisterResult:
    registered: dict[str, int] = field(default_factory=dict)  # runner name -> new id
    configs: dict[str, str] = field(default_factory=dict)  # service -> secret name written
    rolled: list[str] = field(default_factory=list)
    not_deployed: list[str] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    token_expiry: dict[str, str | None] = field(default_factory=dict)  # runner name -> token_expires_at

    def lines(self) -> list[str]:
        out = [f"registered {n} (runner #{i})" for n, i in self.registered.items()]
        out += [f"wrote {s}'s config.toml as secret {n}" for s, n in self.configs.items()]
        out += [f"rolled service {s}" for s in self.rolled]
        out += [f"service {s} is not deployed: the next deploy uses the new config" for s in self.not_deployed]
        out += [f"deleted old runner #{i}" for i in self.deleted]
        return out


EXPIRY_LABEL_PREFIX = "io.bidsflux.runner-token-expires."


def expiry_labels(pairs: list[tuple[RunnerSpec, str]], expiry: Mapping[str, str | None]) -> dict[str, str]:
    """Labels of a runner config secret: each runner's token_expires_at, as GitLab returned it when
    the runner was created. GET /runners/:id does not expose it (gitlab-org/gitlab#627823), so health
    reads it from here; "never" when GitLab set no expiry (no runner_token_expiration_interval)."""
    return {f"{EXPIRY_LABEL_PREFIX}{spec.name}": str(expiry.get(spec.name) or "never") for spec, _ in pairs}


class SecretSink:
    """Stores a config.toml as a new version of a logical secret and points a service at it."""

    def __init__(self, stack: str, client_factory: Callable[[], Any] | None = None) -> None:
        self.stack = stack
        self._factory = client_factory
        self._client: Any = None

    def client(self) -> Any:
        from bidsflux.swarm import secretstore

        if self._client is None:
            self._client = (self._factory or secretstore.docker_client)()
        return self._client

    def write(self, logical: str, text: str, labels: dict[str, str] | None = None) -> tuple[str, str]:
        from bidsflux.gitlab.tokens import live_version
        from bidsflux.swarm import secretstore

        client = self.client()
        version = live_version(client, self.stack, logical) + 1
        secret_id = secretstore.create_secret(client, self.stack, logical, version, text, extra_labels=labels)
        return f"{self.stack}_{logical}_v{version}", secret_id

    def roll(self, service: str, secret_name: str, secret_id: str) -> bool:
        """Point `<stack>_<service>` at the new secret; False when the service does not exist."""
        import docker
        from docker.errors import APIError, NotFound

        client = self.client()
        full = f"{self.stack}_{service}"
        try:
            svc = client.services.get(full)
        except NotFound:
            return False
        spec = svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
        refs = []
        for s in spec.get("Secrets") or []:
            f = s.get("File") or {}
            if f.get("Name") == CONFIG_TARGET:
                continue
            refs.append(docker.types.SecretReference(s["SecretID"], s["SecretName"], f.get("Name"), f.get("UID", "0"),
                                                     f.get("GID", "0"), f.get("Mode", 0o444)))
        refs.append(docker.types.SecretReference(secret_id, secret_name, CONFIG_TARGET, "0", "0", 0o400))
        try:
            svc.update(secrets=refs)
        except APIError as exc:
            raise UserError(f"cannot update service {full} to its new runner config: {exc.explanation or exc}") from None
        return True


def register(gl: Any, specs: list[RunnerSpec], service_secrets: Mapping[str, str], gitlab_url: str,
             sink: SecretSink, only: set[str] | None = None) -> RegisterResult:
    """Create every runner anew, write each service's config.toml, roll the services, then delete the
    runners they replace and the ones runners.yml does not name."""
    result = RegisterResult()
    api_url = getattr(gl, "url", gitlab_url)
    with gitlab_errors("listing runners", api_url):
        live = list_live(gl)
    wanted = {s.name for s in specs}
    chosen = [s for s in specs if only is None or s.name in only or s.service in only]
    if only is not None and not chosen:
        raise UserError(f"no runner or service named {', '.join(sorted(only))} in stack/runners.yml")
    # Whole services are re-registered together: their config.toml holds all their runners.
    services = sorted({s.service for s in chosen})
    missing = [s for s in services if s not in service_secrets]
    if missing:
        raise UserError(f"service(s) {', '.join(missing)} mount no {CONFIG_TARGET} secret in stack/bidsflux.stack.yml; "
                        "add `- {source: <secret>, target: runner_config.toml}` to the service")
    tokens: list[str] = []
    switched: set[str] = set()  # services whose config (with the new tokens) is stored: never undone
    for service in services:
        pending: list[int] = []  # runners created for this service, not yet in a stored config
        try:
            pairs: list[tuple[RunnerSpec, str]] = []
            for spec in [s for s in specs if s.service == service]:
                with gitlab_errors(f"creating runner {spec.name}", api_url, tokens):
                    created = gl.user.runners.create(create_params(gl, spec))
                tokens.append(created.token)
                pending.append(created.id)
                result.registered[spec.name] = created.id
                result.token_expiry[spec.name] = getattr(created, "token_expires_at", None)
                pairs.append((spec, created.token))
            name, secret_id = sink.write(service_secrets[service], render_config(pairs, gitlab_url),
                                         expiry_labels(pairs, result.token_expiry))
            switched.add(service)
            pending = []
            result.configs[service] = name
            if sink.roll(service, name, secret_id):
                result.rolled.append(service)
            else:
                result.not_deployed.append(service)
        except BaseException:
            # Only runners of the service that failed, whose tokens no stored config holds, are
            # orphans; services already switched run on their new runners and keep them.
            for rid in pending:
                try:
                    gl.runners.delete(rid)
                except Exception:  # noqa: BLE001 - the original error is the one to report
                    pass
            for spec in [s for s in specs if s.service == service]:
                result.registered.pop(spec.name, None)
            raise
    new_ids = set(result.registered.values())
    replaced_names = {s.name for s in specs if s.service in services}
    for r in live:
        if r.id in new_ids:
            continue
        # Unknown instance runners are the site's to remove; group/project runners others made are not.
        if r.description in replaced_names or (r.description not in wanted and r.runner_type == "instance_type"):
            with gitlab_errors(f"deleting old runner #{r.id}", api_url, tokens):
                gl.runners.delete(r.id)
            result.deleted.append(r.id)
    return result


def fleet_status(gl: Any, specs: list[RunnerSpec]) -> list[dict[str, Any]]:
    """One row per runners.yml entry and per unknown GitLab runner, for `runners list`."""
    live = list_live(gl)
    rows = []
    for s in specs:
        mine = [r for r in live if r.description == s.name]
        rows.append({"name": s.name, "service": s.service, "tags": s.tags,
                     "gitlab": [{"id": r.id, "status": r.status, "online": r.online} for r in mine],
                     "state": "missing" if not mine else "duplicate" if len(mine) > 1 else mine[0].status})
    known = {s.name for s in specs}
    for r in live:
        if r.description not in known:
            rows.append({"name": r.description, "service": None, "tags": r.tags,
                         "gitlab": [{"id": r.id, "status": r.status, "online": r.online}], "state": "unknown"})
    return rows
