"""Emulator core: GitLab state records, the request context, errors and helpers shared by the route modules."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:
    from .server import GitLabEmulator

ACCESS_LEVELS = {0: "No access", 30: "Developers + Maintainers", 40: "Maintainers", 60: "Admins"}
SCOPES = {"api", "read_api", "read_user", "read_repository", "write_repository", "read_registry",
          "write_registry", "sudo", "admin_mode", "create_runner", "manage_runner", "k8s_proxy",
          "ai_features", "self_rotate"}
# Masked variable values, app/models/concerns/ci/maskable.rb (17.x): REGEX when the variable is
# expanded (raw false): 8+ characters of the Base64 alphabet plus @:.~-_+=/; MASK_AND_RAW_REGEX when
# raw (expansion off): any 8+ non-whitespace characters, one line.
MASKABLE = re.compile(r"\A[a-zA-Z0-9_+=/@:.~-]{8,}\Z")
MASKABLE_RAW = re.compile(r"\A\S{8,}\Z")
# lib/gitlab/import_sources.rb values accepted by PUT /application/settings import_sources
# (lib/api/settings.rb `values: %w[github bitbucket bitbucket_server fogbugz git gitlab_project gitea manifest]`).
IMPORT_SOURCES = {"github", "bitbucket", "bitbucket_server", "fogbugz", "git", "gitlab_project", "gitea", "manifest"}
CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?]+$")


class HTTPError(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def not_found(what: str) -> HTTPError:
    return HTTPError(404, {"message": f"404 {what} Not Found"})


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def as_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).lower() in ("true", "1", "yes", "on")


def as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [str(x) for x in v]
    return [s.strip() for s in str(v).split(",") if s.strip()]


@dataclass
class Request:
    """One API request as the emulator saw it (for tests counting reads and writes)."""

    method: str
    path: str  # decoded path without the query string
    query: dict[str, Any]
    status: int
    user: str | None

    @property
    def is_write(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Token:
    id: int
    value: str
    name: str
    user_id: int
    scopes: list[str]
    expires_at: dt.date | None
    created_at: dt.datetime
    revoked: bool = False
    family: int = 0  # id of the first token of a rotation chain
    rotated_to: int | None = None
    last_used_at: dt.datetime | None = None
    description: str = ""

    def active(self) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > now().date())

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "revoked": self.revoked, "created_at": iso(self.created_at),
                "description": self.description, "scopes": list(self.scopes), "user_id": self.user_id,
                "last_used_at": iso(self.last_used_at), "active": self.active(),
                "expires_at": self.expires_at.isoformat() if self.expires_at else None}


@dataclass
class Runner:
    id: int
    token: str
    description: str
    runner_type: str
    tag_list: list[str]
    run_untagged: bool
    locked: bool
    paused: bool
    access_level: str
    maximum_timeout: int | None
    created_at: dt.datetime
    creator_id: int
    token_expires_at: dt.datetime | None = None
    contacted_at: dt.datetime | None = None
    online: bool = False
    version: str | None = None
    group_id: int | None = None
    project_id: int | None = None

    def status(self) -> str:
        if self.contacted_at is None:
            return "stale" if now() - self.created_at > dt.timedelta(days=7) else "never_contacted"
        if self.online:
            return "online"
        if now() - self.contacted_at > dt.timedelta(days=7):
            return "stale"
        return "offline"

    def short(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "ip_address": None, "active": not self.paused,
                "paused": self.paused, "is_shared": self.runner_type == "instance_type",
                "runner_type": self.runner_type, "name": "gitlab-runner" if self.contacted_at else None,
                "online": self.status() == "online", "status": self.status()}

    def details(self) -> dict[str, Any]:
        d = self.short()
        d.update({"tag_list": list(self.tag_list), "run_untagged": self.run_untagged, "locked": self.locked,
                  "access_level": self.access_level, "maximum_timeout": self.maximum_timeout,
                  "contacted_at": iso(self.contacted_at), "created_at": iso(self.created_at),
                  "maintenance_note": None, "version": self.version,
                  "projects": [{"id": self.project_id}] if self.project_id else [],
                  "groups": [{"id": self.group_id}] if self.group_id else []})
        # Entities::Ci::RunnerDetails has no token_expires_at (gitlab-org/gitlab#627823 "Runner details
        # API does not return token_expires_at field"); only the create answer and POST /runners/verify do.
        return d


@dataclass
class State:
    """Everything the emulated GitLab holds. Tests may read it; change it through GitLabEmulator."""

    next_id: dict[str, int] = field(default_factory=dict)
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[int, Token] = field(default_factory=dict)
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    projects: dict[int, dict[str, Any]] = field(default_factory=dict)
    protected: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)  # project -> name -> pb
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedules: dict[int, dict[str, Any]] = field(default_factory=dict)
    runners: dict[int, Runner] = field(default_factory=dict)
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    merge_requests: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: dict[int, dict[str, Any]] = field(default_factory=dict)
    pipelines: dict[int, dict[str, Any]] = field(default_factory=dict)
    deploy_tokens: dict[int, Any] = field(default_factory=dict)  # id -> deploy_tokens.DeployToken
    # Application settings. import_sources defaults to [] on instances created with 16.0+
    # (config/initializers/1_settings.rb `Settings.gitlab['import_sources'] ||= []`, MR gitlab-org/gitlab!118970).
    settings: dict[str, Any] = field(default_factory=lambda: {
        "import_sources": [], "allow_local_requests_from_web_hooks_and_services": False,
        "valid_runner_registrars": ["project", "group"]})

    def new_id(self, kind: str) -> int:
        self.next_id[kind] = self.next_id.get(kind, 0) + 1
        return self.next_id[kind]


Handler = Callable[["Ctx"], Any]
SEG = r"([^/]+)"
# (method, path regex, handler, scope class 'read'|'write'|..., admin only)
RouteSpec = tuple[str, str, Handler, str, bool]


@dataclass
class Ctx:
    method: str
    args: list[str]
    params: dict[str, Any]
    user: dict[str, Any] | None
    token: Token | None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    link_base: str = ""  # absolute URL of this request, for pagination links
    query: dict[str, Any] = field(default_factory=dict)



def member_level(gl: GitLabEmulator, project: dict[str, Any], user: dict[str, Any]) -> int:
    if user["is_admin"]:
        return 50
    level = project["_members"].get(user["id"], 0)
    ns = gl.state.groups.get(project["namespace"]["id"]) if project["namespace"]["kind"] == "group" else None
    if ns is not None:
        level = max(level, ns["_members"].get(user["id"], 0))
    return level



def paginate(c: Ctx, items: list[Any]) -> list[Any]:
    try:
        per_page = max(1, min(100, int(c.params.get("per_page", 20))))
        page = max(1, int(c.params.get("page", 1)))
    except ValueError as exc:
        raise HTTPError(400, {"error": "page is invalid"}) from exc
    total = len(items)
    pages = max(1, -(-total // per_page))
    c.headers.update({"X-Total": str(total), "X-Total-Pages": str(pages), "X-Per-Page": str(per_page),
                      "X-Page": str(page), "X-Next-Page": str(page + 1) if page < pages else "",
                      "X-Prev-Page": str(page - 1) if page > 1 else ""})
    rest = {k: v for k, v in c.query.items() if k not in ("page", "per_page")}

    def link(n: int) -> str:
        q = urlencode([*flat(rest), ("page", str(n)), ("per_page", str(per_page))])
        return f"{c.link_base}?{q}"

    links = []
    if page < pages:
        links.append(f'<{link(page + 1)}>; rel="next"')
    if page > 1:
        links.append(f'<{link(page - 1)}>; rel="prev"')
    links.append(f'<{link(1)}>; rel="first"')
    links.append(f'<{link(pages)}>; rel="last"')
    c.headers["Link"] = ", ".join(links)
    return items[(page - 1) * per_page: page * per_page]


def flat(q: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in q.items():
        if isinstance(v, list):
            out += [(f"{k}[]", str(x)) for x in v]
        else:
            out.append((k, str(v)))
    return out


def require(c: Ctx, *names: str) -> None:
    for n in names:
        if c.params.get(n) in (None, ""):
            raise HTTPError(400, {"error": f"{n} is missing"})

