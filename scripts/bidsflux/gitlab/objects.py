"""GitLab objects of stack/gitlab.yml: desired, observe, diff, apply (through python-gitlab).

Every object is looked up by its exact path or key (GET /groups/ni-dataops, /projects/a%2Fb,
/admin/ci/variables/KEY, /users?username=...), never by search, so reads grow with the number of
objects in gitlab.yml and not with the size of GitLab, and a second apply makes no write.

Token values (bot tokens, secret-backed variables) never enter a plan, a message or a log: plans
say that a value differs, not what it is; errors are scrubbed of every value we hold."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bidsflux.diagnostics import UserError, clip

if TYPE_CHECKING:  # tokens.py builds on this module
    from bidsflux.gitlab.tokens import TokenStore

ACCESS = {"no_one": 0, "developer": 30, "maintainer": 40}
ACCESS_NAMES = {v: k for k, v in ACCESS.items()}
DEFAULT_REF = "main"


# ---------------------------------------------------------------------------------- desired state


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
class ProjectSpec:
    path: str
    mirror_from: str | None
    self_hosted: bool
    protected_branches: dict[str, dict[str, int]]
    settings: dict[str, Any]


@dataclass
class Desired:
    users: list[UserSpec] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    projects: list[ProjectSpec] = field(default_factory=list)
    variables: list[VariableSpec] = field(default_factory=list)
    schedules: list[ScheduleSpec] = field(default_factory=list)
    token_warn_days: int = 30

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
    for path, p in (gitlab_doc.get("projects") or {}).items():
        settings = {}
        if "only_allow_merge_if_pipeline_succeeds" in p:
            settings["only_allow_merge_if_pipeline_succeeds"] = bool(p["only_allow_merge_if_pipeline_succeeds"])
        out.projects.append(ProjectSpec(
            path=path, mirror_from=p.get("mirror_from"), self_hosted=bool(p.get("self", False)),
            protected_branches={b: {"push": ACCESS[v.get("push", "maintainer")], "merge": ACCESS[v.get("merge", "maintainer")]}
                                for b, v in (p.get("protected_branches") or {}).items()},
            settings=settings))
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


# ---------------------------------------------------------------------------------- plan


@dataclass
class Change:
    action: str  # create | update | delete | rotate
    kind: str  # user | token | group | project | protected_branch | variable | schedule | schedule_variable
    name: str
    details: dict[str, Any] = field(default_factory=dict)  # field -> {"from": ..., "to": ...}; never a secret value
    reason: str = ""

    def line(self) -> str:
        sign = {"create": "+", "delete": "-", "update": "~", "rotate": "↻"}.get(self.action, "?")
        extra = ", ".join(f"{k}: {_show(d.get('from'))} -> {_show(d.get('to'))}" for k, d in self.details.items())
        why = f" ({self.reason})" if self.reason else ""
        return f"{sign} {self.kind} {self.name}{': ' + extra if extra else ''}{why}"


def _show(value: Any) -> str:
    return "-" if value is None else json.dumps(value) if not isinstance(value, str) else value


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.changes

    def lines(self) -> list[str]:
        if self.empty:
            return ["GitLab matches gitlab.yml: no change"] + [f"note: {n}" for n in self.notes]
        return [c.line() for c in self.changes] + [f"note: {n}" for n in self.notes] + \
            [f"{len(self.changes)} change(s)"]

    def to_json(self) -> str:
        return json.dumps({"changes": [asdict(c) for c in self.changes], "notes": self.notes}, indent=2)


# ---------------------------------------------------------------------------------- errors


def scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "****")
    return re.sub(r"(glpat-|glrt-)[A-Za-z0-9_\-]{8,}", r"\1****", text)


@contextmanager
def gitlab_errors(what: str, url: str, secrets: list[str] | None = None) -> Iterator[None]:
    """python-gitlab and connection errors as UserErrors naming the cause and the fix."""
    import gitlab
    import requests

    try:
        yield
    except gitlab.GitlabAuthenticationError:
        raise UserError(f"GitLab at {url} refused the token while {what} (401: wrong, expired or revoked token); "
                        "pass a valid admin token (--token-env) or mint one with `bidsflux gitlab root-token`") from None
    except gitlab.GitlabError as exc:
        code = exc.response_code
        body = clip(scrub(str(exc.error_message), secrets or []), 300)
        if code == 403:
            fix = "the token lacks a scope or admin rights: use an administrator's token with the api scope"
        elif code and code >= 500:
            fix = "GitLab failed on its side; check its health (bidsflux health) and re-run: applying is idempotent"
        elif code == 404:
            fix = "the object is missing or the token cannot see it"
        else:
            fix = "fix the value in stack/gitlab.yml and re-run"
        raise UserError(f"GitLab answered {code} while {what}: {body}; {fix}") from None
    except requests.exceptions.RequestException as exc:
        first = clip(scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, secrets or []), 200)
        waited = ""
        if isinstance(exc, requests.exceptions.Timeout):
            from bidsflux.console import connect_timeout

            waited = f"no answer within {connect_timeout():g}s; "
        raise UserError(f"cannot reach GitLab at {url} while {what} ({waited}{first}); check the URL (--url), that "
                        "GitLab is up (bidsflux health), or wait longer with --connect-timeout") from None


def site_url(site: Mapping[str, Any]) -> str:
    """http://<hosts.gitlab>[:<ports.http>], GitLab's external URL as the stack renders it."""
    hosts, ports = site.get("hosts") or {}, site.get("ports") or {}
    port = int(ports.get("http", 80))
    return f"http://{hosts.get('gitlab', 'localhost')}" + ("" if port == 80 else f":{port}")


def connect(url: str, token: str, timeout: float | None = None) -> Any:
    """A python-gitlab client that never retries on its own (a retried rotation is dangerous);
    each request waits `timeout` seconds (default: --connect-timeout)."""
    import gitlab

    from bidsflux.console import connect_timeout

    timeout = connect_timeout() if timeout is None else timeout

    gl = gitlab.Gitlab(url, private_token=token, timeout=timeout, retry_transient_errors=False, keep_base_url=True)
    with gitlab_errors("checking the token", url, [token]):
        gl.auth()
    logging.getLogger("bidsflux").info("GitLab at %s: signed in as %s (timeout %gs)", url,
                                       getattr(gl.user, "username", "?"), timeout)
    return gl


def _get_or_none(getter: Callable[[], Any]) -> Any:
    import gitlab

    try:
        return getter()
    except gitlab.GitlabGetError as exc:
        if exc.response_code == 404:
            return None
        raise


# ---------------------------------------------------------------------------------- observe


@dataclass
class Observed:
    users: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # username -> attrs
    tokens: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # username -> active tokens
    groups: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    projects: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    protected: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # project -> branch -> levels
    variables: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    schedules: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # name -> attrs (+variables)
    import_sources: list[str] | None = None  # application setting, read only when an import is due
    unreadable: list[str] = field(default_factory=list)  # what a read-only (MR plan) token may not read


def _readonly_guard(obs: Observed, what: str, read: Callable[[], Any]) -> Any:
    """Admin-only reads (other users' tokens, instance variables, settings) with a read-only token:
    a note instead of an error, so merge-request plans run with a read_api token of a non-admin bot."""
    import gitlab

    try:
        return read()
    except (gitlab.GitlabAuthenticationError, gitlab.GitlabGetError, gitlab.GitlabListError) as exc:
        if exc.response_code in (401, 403):
            obs.unreadable.append(what)
            return _UNREADABLE
        raise


_UNREADABLE = object()


def _levels(pb: Mapping[str, Any], key: str) -> int:
    levels = [x.get("access_level") for x in pb.get(key) or [] if x.get("user_id") is None and x.get("group_id") is None]
    return int(levels[0]) if levels else 0


def observe(gl: Any, want: Desired) -> Observed:
    """Read exactly the objects `want` names."""
    obs = Observed()
    for u in want.users:
        found = [x for x in gl.users.list(username=u.username, get_all=False) if x.username == u.username]
        obs.users[u.username] = found[0].asdict() if found else None
        if found and u.token:
            listed = _readonly_guard(obs, f"tokens of {u.username}", lambda uid=found[0].id: gl.personal_access_tokens.list(
                user_id=uid, state="active", get_all=True))
            if listed is not _UNREADABLE:
                obs.tokens[u.username] = [t.asdict() for t in listed if t.name == u.token.name]
    for path in want.groups:
        g = _get_or_none(lambda p=path: gl.groups.get(p))
        obs.groups[path] = g.asdict() if g else None
    for p in want.projects:
        proj = _get_or_none(lambda path=p.path: gl.projects.get(path))
        obs.projects[p.path] = proj.asdict() if proj else None
        if proj is None:
            continue
        if p.protected_branches:
            obs.protected[p.path] = {pb.name: {"push": _levels(pb.asdict(), "push_access_levels"),
                                               "merge": _levels(pb.asdict(), "merge_access_levels")}
                                     for pb in proj.protectedbranches.list(get_all=True)}
        schedules = [s for s in want.schedules if s.project == p.path]
        if schedules:
            live = {s.description: s for s in proj.pipelineschedules.list(get_all=True)}
            for s in schedules:
                hit = live.get(s.name)
                obs.schedules[s.name] = proj.pipelineschedules.get(hit.id).asdict() if hit else None
    if any(is_url(p.mirror_from) and obs.projects.get(p.path) is None for p in want.projects):
        settings = _readonly_guard(obs, "application settings", gl.settings.get)
        if settings is not _UNREADABLE:
            obs.import_sources = list(settings.asdict().get("import_sources") or [])
    keys = [v.key for v in want.variables] + [u.token.variable for u in want.users if u.token and u.token.variable]
    for key in keys:
        var = _readonly_guard(obs, f"instance variable {key}", lambda k=key: _get_or_none(lambda: gl.variables.get(k)))
        if var is _UNREADABLE:
            continue
        obs.variables[key] = var.asdict() if var else None
    return obs


# ---------------------------------------------------------------------------------- diff


def _days_left(expires_at: str | None) -> float:
    if not expires_at:
        return float("inf")
    return (dt.date.fromisoformat(expires_at[:10]) - utc_today()).days


def diff(want: Desired, obs: Observed) -> Plan:
    plan = Plan()
    add = plan.changes.append
    if obs.unreadable:
        plan.notes.append("read-only token: not checked (administrators only): " + ", ".join(obs.unreadable))
    for u in want.users:
        live = obs.users.get(u.username)
        if live is None:
            add(Change("create", "user", u.username, {"admin": {"from": None, "to": u.admin}}))
        else:
            d = {}
            if live.get("name") != u.name:
                d["name"] = {"from": live.get("name"), "to": u.name}
            if "is_admin" in live and bool(live["is_admin"]) != u.admin:
                d["admin"] = {"from": bool(live["is_admin"]), "to": u.admin}
            if d:
                add(Change("update", "user", u.username, d))
        if u.token and live is not None and u.username not in obs.tokens and obs.unreadable:
            pass  # its tokens were not readable with this token (read-only plan): see the note
        elif u.token:
            tokens = obs.tokens.get(u.username) or []
            current = max(tokens, key=lambda t: t.get("expires_at") or "9999") if tokens else None
            label = f"{u.username}/{u.token.name}"
            if current is None:
                add(Change("create", "token", label, {"scopes": {"from": None, "to": u.token.scopes}},
                           reason=f"expires in {u.token.expires_in_days} days"))
            elif sorted(current.get("scopes") or []) != sorted(u.token.scopes):
                add(Change("create", "token", label, {"scopes": {"from": sorted(current.get("scopes") or []),
                                                                 "to": sorted(u.token.scopes)}},
                           reason="scopes changed: a new token replaces the old one"))
            elif _days_left(current.get("expires_at")) <= want.token_warn_days:
                add(Change("rotate", "token", label, {"expires_at": {"from": current.get("expires_at"), "to": None}},
                           reason=f"expires within {want.token_warn_days} days"))
            elif u.token.variable and obs.variables.get(u.token.variable) is None:
                add(Change("rotate", "token", label, reason=f"its CI variable {u.token.variable} is missing"))
    for path, g in want.groups.items():
        live = obs.groups.get(path)
        if live is None:
            add(Change("create", "group", path, {"visibility": {"from": None, "to": g["visibility"]}}))
        else:
            d = {k: {"from": live.get(k), "to": v} for k, v in g.items() if live.get(k) != v}
            if d:
                add(Change("update", "group", path, d))
    if obs.import_sources is not None and "git" not in obs.import_sources:
        # Import sources are off on instances created with GitLab 16.0+ (gitlab-org/gitlab!118970):
        # POST /projects with import_url answers a bare 403 until `git` is enabled.
        add(Change("update", "setting", "import_sources",
                   {"import_sources": {"from": obs.import_sources, "to": [*obs.import_sources, "git"]}},
                   reason="gitlab.yml imports a project by URL (mirror_from)"))
    for p in want.projects:
        live = obs.projects.get(p.path)
        if live is None:
            d: dict[str, Any] = {}
            if p.mirror_from:
                d["import_url" if is_url(p.mirror_from) else "pushed_from"] = {"from": None, "to": p.mirror_from}
            d.update({k: {"from": None, "to": v} for k, v in p.settings.items()})
            add(Change("create", "project", p.path, d))
            for b, lv in p.protected_branches.items():
                add(Change("create", "protected_branch", f"{p.path}:{b}", _pb_details(None, lv)))
            continue
        d = {k: {"from": live.get(k), "to": v} for k, v in p.settings.items() if live.get(k) != v}
        if d:
            add(Change("update", "project", p.path, d))
        live_pbs = obs.protected.get(p.path, {})
        for b, lv in p.protected_branches.items():
            if b not in live_pbs:
                add(Change("create", "protected_branch", f"{p.path}:{b}", _pb_details(None, lv)))
            elif live_pbs[b] != lv:
                add(Change("update", "protected_branch", f"{p.path}:{b}", _pb_details(live_pbs[b], lv)))
    for v in want.variables:
        if v.key not in obs.variables and obs.unreadable:
            continue  # not readable with this token (read-only plan): see the note
        live = obs.variables.get(v.key)
        if live is None:
            if v.value is None:
                plan.notes.append(f"variable {v.key}: its secret value is not available here; create it where the "
                                  "secrets file is (bootstrap) or pass BIDSFLUX_SECRET_<NAME>")
                continue
            add(Change("create", "variable", v.key, {k: {"from": None, "to": getattr(v, k)} for k in ("masked", "protected", "raw")}))
            continue
        d = {k: {"from": live.get(k), "to": getattr(v, k)} for k in ("masked", "protected", "raw") if live.get(k) != getattr(v, k)}
        if live.get("variable_type", "env_var") != "env_var":
            d["variable_type"] = {"from": live.get("variable_type"), "to": "env_var"}
        if v.value is not None and live.get("value") != v.value:
            d["value"] = {"from": "(secret)", "to": "(new secret)"} if v.secret or v.masked else {"from": live.get("value"), "to": v.value}
        if d:
            add(Change("update", "variable", v.key, d))
    for s in want.schedules:
        live = obs.schedules.get(s.name)
        if live is None:
            add(Change("create", "schedule", s.name, {"cron": {"from": None, "to": s.cron}, "ref": {"from": None, "to": s.ref}}))
            for k in s.variables:
                add(Change("create", "schedule_variable", f"{s.name}:{k}"))
            continue
        d = {k: {"from": live.get(k), "to": getattr(s, k)} for k in ("cron",) if live.get(k) != getattr(s, k)}
        if full_ref(str(live.get("ref") or "")) != full_ref(s.ref):
            d["ref"] = {"from": live.get("ref"), "to": s.ref}
        if not live.get("active", True):
            d["active"] = {"from": False, "to": True}
        if d:
            add(Change("update", "schedule", s.name, d))
        live_vars = {x["key"]: x.get("value") for x in live.get("variables") or []}
        for k, val in s.variables.items():
            if k not in live_vars:
                add(Change("create", "schedule_variable", f"{s.name}:{k}", {"value": {"from": None, "to": val}}))
            elif live_vars[k] != val:
                add(Change("update", "schedule_variable", f"{s.name}:{k}", {"value": {"from": live_vars[k], "to": val}}))
        for k in live_vars.keys() - s.variables.keys():
            add(Change("delete", "schedule_variable", f"{s.name}:{k}"))
    return plan


def is_url(source: str | None) -> bool:
    """mirror_from is a URL GitLab imports from, else a local clone or bundle bidsflux pushes (offline)."""
    return bool(source) and "://" in str(source)


def _pb_details(live: Mapping[str, int] | None, want: Mapping[str, int]) -> dict[str, Any]:
    return {k: {"from": ACCESS_NAMES.get(live[k], live[k]) if live else None, "to": ACCESS_NAMES[want[k]]}
            for k in ("push", "merge") if not live or live[k] != want[k]}


def put_variable(gl: Any, key: str, value: str, masked: bool, protected: bool, raw: bool) -> None:
    attrs = {"value": value, "masked": masked, "protected": protected, "raw": raw, "variable_type": "env_var"}
    if _get_or_none(lambda: gl.variables.get(key)) is None:
        gl.variables.create({"key": key, **attrs})
    else:
        gl.variables.update(key, attrs)


# ---------------------------------------------------------------------------------- apply


@dataclass
class ApplyResult:
    done: list[str] = field(default_factory=list)
    stored: dict[str, list[str]] = field(default_factory=dict)  # token label -> where its value went


SCHEDULE_KINDS = ("schedule", "schedule_variable")
# Apply order: settings and users first (tokens need them), groups before projects, projects
# before their branches and schedules; token changes last.
KINDS = ("setting", "user", "group", "project", "protected_branch", "variable", "schedule", "schedule_variable", "token")


def apply(gl: Any, want: Desired, plan: Plan, store: TokenStore | None, url: str = "",
          kinds: tuple[str, ...] | None = None, token: str = "") -> ApplyResult:
    """Perform `plan`. Users first (tokens need them), groups before projects, projects before their
    branches and schedules. Token values are stored (TokenStore) before anything else happens."""
    result = ApplyResult()
    secrets = want.secret_values()
    order = [k for k in KINDS if kinds is None or k in kinds]
    users = {u.username: u for u in want.users}
    projects = {p.path: p for p in want.projects}
    variables = {v.key: v for v in want.variables}
    schedules = {s.name: s for s in want.schedules}
    for kind in order:
        for c in [c for c in plan.changes if c.kind == kind]:
            with gitlab_errors(f"applying '{c.line()}'", url or gl.url, secrets):
                _apply_one(gl, c, users, projects, variables, schedules, want, store, result, token)
            result.done.append(c.line())
    return result


def _project(gl: Any, path: str) -> Any:
    return gl.projects.get(path)


def _apply_one(gl: Any, c: Change, users: dict[str, UserSpec], projects: dict[str, ProjectSpec],
               variables: dict[str, VariableSpec], schedules: dict[str, ScheduleSpec], want: Desired,
               store: TokenStore | None, result: ApplyResult, token: str = "") -> None:
    import secrets as pysecrets

    if c.kind == "setting":
        live = list(gl.settings.get().asdict().get("import_sources") or [])
        if "git" not in live:  # PUT replaces the whole list: keep what the admin enabled
            gl.settings.update(new_data={"import_sources": [*live, "git"]})
    elif c.kind == "user":
        u = users[c.name]
        if c.action == "create":
            gl.users.create({"username": u.username, "name": u.name, "email": u.email, "admin": u.admin,
                             "password": pysecrets.token_urlsafe(24), "skip_confirmation": True})
        else:
            live = gl.users.list(username=u.username, get_all=False)[0]
            gl.users.update(live.id, {"name": u.name, "admin": u.admin})
    elif c.kind == "group":
        g = want.groups[c.name]
        if c.action == "create":
            parent, _, leaf = c.name.rpartition("/")
            data: dict[str, Any] = {"name": g["name"], "path": leaf, "visibility": g["visibility"]}
            if parent:
                data["parent_id"] = gl.groups.get(parent).id
            gl.groups.create(data)
        else:
            gl.groups.update(c.name, {k: g[k] for k in c.details})
    elif c.kind == "project":
        p = projects[c.name]
        if c.action == "create":
            ns, _, leaf = c.name.rpartition("/")
            data = {"name": leaf, "path": leaf, "namespace_id": gl.groups.get(ns).id, **p.settings}
            if is_url(p.mirror_from):
                from bidsflux.gitlab.imports import create_imported

                create_imported(gl, c.name, data, str(p.mirror_from))
            else:
                created = gl.projects.create(data)
                if p.mirror_from:
                    from bidsflux.gitlab.imports import push_local

                    push_local(str(p.mirror_from), created.http_url_to_repo, token or gl.private_token)
        else:
            gl.projects.update(c.name, {k: p.settings[k] for k in c.details})
    elif c.kind == "protected_branch":
        path, _, branch = c.name.rpartition(":")
        lv = projects[path].protected_branches[branch]
        proj = _project(gl, path)
        if c.action == "update":
            proj.protectedbranches.delete(branch)
        proj.protectedbranches.create({"name": branch, "push_access_level": lv["push"], "merge_access_level": lv["merge"]})
    elif c.kind == "variable":
        v = variables[c.name]
        if c.action == "create":
            assert v.value is not None
            gl.variables.create({"key": v.key, "value": v.value, "masked": v.masked, "protected": v.protected,
                                 "raw": v.raw, "variable_type": "env_var"})
        else:
            attrs: dict[str, Any] = {"masked": v.masked, "protected": v.protected, "raw": v.raw, "variable_type": "env_var"}
            if v.value is not None:
                attrs["value"] = v.value
            gl.variables.update(v.key, attrs)
    elif c.kind == "schedule":
        s = schedules[c.name]
        proj = _project(gl, s.project)
        if c.action == "create":
            if proj.empty_repo:
                # GitLab 17 refuses a schedule whose ref does not exist (base_save_service.rb, "is ambiguous").
                raise UserError(f"schedule {s.name}: project {s.project} has no branch {s.ref} yet; push the repository "
                                "first (bootstrap does, then creates the schedules), then re-run `bidsflux gitlab apply`")
            proj.pipelineschedules.create({"description": s.name, "ref": s.ref, "cron": s.cron,
                                           "cron_timezone": "UTC", "active": True})
        else:
            live = next(x for x in proj.pipelineschedules.list(get_all=True) if x.description == s.name)
            proj.pipelineschedules.update(live.id, {"cron": s.cron, "ref": s.ref, "active": True})
    elif c.kind == "schedule_variable":
        name, _, key = c.name.partition(":")
        s = schedules[name]
        proj = _project(gl, s.project)
        live = next(x for x in proj.pipelineschedules.list(get_all=True) if x.description == s.name)
        sched = proj.pipelineschedules.get(live.id, lazy=True)
        if c.action == "create":
            sched.variables.create({"key": key, "value": s.variables[key]})
        elif c.action == "update":
            sched.variables.update(key, {"value": s.variables[key]})
        else:
            sched.variables.delete(key)
    elif c.kind == "token":
        username = c.name.split("/", 1)[0]
        u = users[username]
        if store is None:
            raise UserError(f"token {c.name}: no place to store its value (TokenStore missing); nothing was created")
        if c.action == "create":
            from bidsflux.gitlab.tokens import create_token

            result.stored[c.name] = create_token(gl, u, store)
        else:
            from bidsflux.gitlab.tokens import rotate_token

            result.stored[c.name] = rotate_token(gl, u, store)


# ---------------------------------------------------------------------------------- loading


def load_config(repo: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(gitlab.yml, site.yml) as plain data, after validate found nothing wrong."""
    from bidsflux.site.yamlsource import load
    from bidsflux.validation import load_valid

    site_doc, _ = load_valid(repo)
    return load(repo.gitlab_file, repo.root).data or {}, site_doc.data


def secret_values_from(site: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Secret values known here: the values file (when readable), then BIDSFLUX_SECRET_<NAME> overrides."""
    from bidsflux.swarm import secretstore

    values: dict[str, str] = {}
    path = (site.get("secrets") or {}).get("file")
    if path:
        try:
            values.update(secretstore.read_values_file(path))
        except OSError:
            pass  # not root, or not on the manager: secrets stay unknown and only flags are compared
    for k, v in environ.items():
        if k.startswith("BIDSFLUX_SECRET_"):
            values[k[len("BIDSFLUX_SECRET_"):].lower()] = v
    return values
