"""Desired state of stack/gitlab.yml: users and their tokens, groups, projects, variables, schedules (site values resolved)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bidsflux.diagnostics import UserError

ACCESS = {"no_one": 0, "developer": 30, "maintainer": 40}
ACCESS_NAMES = {v: k for k, v in ACCESS.items()}
# Member roles (Gitlab::Access)
MEMBER_ACCESS = {"guest": 10, "reporter": 20, "developer": 30, "maintainer": 40, "owner": 50}
DEFAULT_REF = "main"



def utc_today() -> dt.date:
    """GitLab's Date.current (UTC): token expiry limits are counted from it, not from local time."""
    return dt.datetime.now(dt.UTC).date()


def full_ref(ref: str) -> str:
    """A schedule ref as GitLab 17 stores it: a short branch name expands to refs/heads/<name>
    (Ci::PipelineSchedule#expand_short_ref); a full ref stays."""
    return ref if ref.startswith(("refs/heads/", "refs/tags/")) else f"refs/heads/{ref}"


@dataclass
class TokenSpec:
    name: str
    scopes: list[str]
    expires_in_days: int
    secret: str | None = None  # logical docker secret receiving new values
    variable: str | None = None  # instance CI variable receiving new values
    variable_protected: bool = True  # False only for a read-only token MR pipelines must receive


@dataclass
class UserSpec:
    key: str  # key in gitlab.yml
    username: str
    name: str
    email: str
    admin: bool
    token: TokenSpec | None


@dataclass
class VariableSpec:
    key: str
    value: str | None  # None: a secret whose value is not available here (flags are still checked)
    secret: bool
    masked: bool
    protected: bool
    raw: bool


@dataclass
class ScheduleSpec:
    name: str  # the schedule's description in GitLab
    project: str
    cron: str
    ref: str
    variables: dict[str, str]


@dataclass
class DeployTokenSpec:
    key: str  # key under the project's deploy_tokens (also the token's name in GitLab)
    project: str
    scopes: list[str]
    secret: str  # values-file key receiving the value (<secret>_username, <secret>_id beside it)
    username: str | None = None  # GitLab's default: gitlab+deploy-token-<id>
    expires_in_days: int | None = None  # None: no expiry (GitLab's default for deploy tokens)


@dataclass
class ProjectSpec:
    path: str
    mirror_from: str | None
    self_hosted: bool
    protected_branches: dict[str, dict[str, int]]
    settings: dict[str, Any]
    deploy_tokens: list[DeployTokenSpec] = field(default_factory=list)


@dataclass
class Desired:
    users: list[UserSpec] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    projects: list[ProjectSpec] = field(default_factory=list)
    variables: list[VariableSpec] = field(default_factory=list)
    schedules: list[ScheduleSpec] = field(default_factory=list)
    members: dict[str, dict[str, int]] = field(default_factory=dict)  # group path -> username -> access level
    token_warn_days: int = 30
    # Keys (never values) of the values file when it could be read here; None: not readable, so
    # whether a deploy token's value is stored cannot be known and is not judged.
    values_file_keys: set[str] | None = None

    def secret_values(self) -> list[str]:
        return [v.value for v in self.variables if v.secret and v.value]

    @property
    def self_project(self) -> ProjectSpec | None:
        return next((p for p in self.projects if p.self_hosted), None)


def _dotted(site: Mapping[str, Any], dotted: str) -> Any:
    node: Any = site
    for part in dotted.split(".")[1:]:  # "site.bots.dicom_bot" -> bots, dicom_bot
        if not isinstance(node, Mapping) or part not in node:
            raise UserError(f"gitlab.yml: value_from '{dotted}' names nothing in site.yml")
        node = node[part]
    return node


def desired(gitlab_doc: Mapping[str, Any], site: Mapping[str, Any],
            secret_values: Mapping[str, str] | None = None) -> Desired:
    """What gitlab.yml asks for, with site values resolved and secret values when known."""
    secret_values = secret_values or {}
    bots = site.get("bots") or {}
    email_domain = bots.get("email_domain", "localhost")
    out = Desired(token_warn_days=int((site.get("health") or {}).get("token_warn_days", 30)))
    for key, u in (gitlab_doc.get("users") or {}).items():
        username = str(bots.get(key, key))  # site.yml bots.<key> names the bot when present
        tok = u.get("token")
        out.users.append(UserSpec(
            key=key, username=username, name=u["name"], email=f"{username}@{email_domain}",
            admin=bool(u.get("admin", False)),
            token=TokenSpec(tok["name"], list(tok["scopes"]), int(tok["expires_in_days"]), tok.get("secret"),
                            tok.get("variable"), bool(tok.get("variable_protected", True))) if tok else None))
    for path, g in (gitlab_doc.get("groups") or {}).items():
        out.groups[path] = {"name": g.get("name", path.rsplit("/", 1)[-1]), "visibility": g.get("visibility", "private")}
        if g.get("members"):
            out.members[path] = {str(bots.get(k, k)): MEMBER_ACCESS[v] for k, v in g["members"].items()}
    for path, p in (gitlab_doc.get("projects") or {}).items():
        settings = {}
        if "only_allow_merge_if_pipeline_succeeds" in p:
            settings["only_allow_merge_if_pipeline_succeeds"] = bool(p["only_allow_merge_if_pipeline_succeeds"])
        if "ci_config_path" in p:
            settings["ci_config_path"] = str(p["ci_config_path"])
        out.projects.append(ProjectSpec(
            path=path, mirror_from=p.get("mirror_from"), self_hosted=bool(p.get("self", False)),
            protected_branches={b: {"push": ACCESS[v.get("push", "maintainer")], "merge": ACCESS[v.get("merge", "maintainer")]}
                                for b, v in (p.get("protected_branches") or {}).items()},
            settings=settings,
            deploy_tokens=[DeployTokenSpec(k, path, list(d["scopes"]), str(d["secret"]), d.get("username"),
                                           int(d["expires_in_days"]) if d.get("expires_in_days") else None)
                           for k, d in (p.get("deploy_tokens") or {}).items()]))
    if any(p.deploy_tokens for p in out.projects):
        out.values_file_keys = _values_file_keys(site)
    for key, v in (gitlab_doc.get("variables") or {}).items():
        if "value" in v:
            value, secret = str(v["value"]), False
        elif "value_from" in v:
            value, secret = str(_dotted(site, v["value_from"])), False
        else:
            value, secret = secret_values.get(v["secret"]), True
        out.variables.append(VariableSpec(key, value, secret, bool(v["masked"]), bool(v["protected"]), bool(v["raw"])))
    for name, s in (gitlab_doc.get("schedules") or {}).items():
        out.schedules.append(ScheduleSpec(name, s["project"], s["cron"], s.get("ref", DEFAULT_REF),
                                          {k: str(x) for k, x in (s.get("variables") or {}).items()}))
    return out




def _values_file_keys(site: Mapping[str, Any]) -> set[str] | None:
    from bidsflux.swarm import secretstore

    path = (site.get("secrets") or {}).get("file")
    try:
        return {k for k, v in secretstore.read_values_file(path).items() if v} if path else None
    except (OSError, UserError):
        return None


def is_url(source: str | None) -> bool:
    """mirror_from is a URL GitLab imports from, else a local clone or bundle bidsflux pushes (offline)."""
    return bool(source) and "://" in str(source)
