"""desired -> observe -> plan -> apply over every GitLab object kind; the kinds live one per module (users, groups, projects, variables, schedules).

Every object is looked up by its exact path or key (GET /groups/ni-dataops, /projects/a%2Fb,
/admin/ci/variables/KEY, /users?username=...), never by search, so reads grow with the number of
objects in gitlab.yml and not with the size of GitLab, and a second apply makes no write.

Token values (bot tokens, secret-backed variables) never enter a plan, a message or a log: plans
say that a value differs, not what it is; errors are scrubbed of every value we hold.

A kind module offers `observe(gl, want, obs)`, `diff(want, obs, plan)` and `apply(gl, change, ctx)`
for the change kinds it names in `KINDS`; this module runs them in order."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bidsflux.gitlab.client import gitlab_errors
from bidsflux.gitlab.spec import Desired

if TYPE_CHECKING:
    from bidsflux.gitlab.tokens import TokenStore

SCHEDULE_KINDS = ("schedule", "schedule_variable")
# Apply order: settings and users first (tokens need them), groups before projects, projects
# before their branches and schedules; token changes last.
KINDS = ("setting", "user", "group", "group_member", "project", "protected_branch", "variable", "schedule",
         "schedule_variable", "token", "deploy_token")


@dataclass
class Change:
    action: str  # create | update | delete | rotate
    kind: str  # one of KINDS
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


def field_changes(live: Mapping[str, Any], want: Mapping[str, Any]) -> dict[str, Any]:
    """The one reconcile helper every kind uses: {field: {"from": live, "to": wanted}} where they differ."""
    return {k: {"from": live.get(k), "to": v} for k, v in want.items() if live.get(k) != v}


@dataclass
class Observed:
    users: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # username -> attrs
    tokens: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # username -> active tokens
    groups: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    members: dict[str, dict[str, int | None]] = field(default_factory=dict)  # group -> username -> level
    projects: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    handles: dict[str, Any] = field(default_factory=dict)  # project path -> python-gitlab object (no re-read)
    protected: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # project -> branch -> levels
    variables: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    schedules: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # name -> attrs (+variables)
    deploy_tokens: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # project:name -> active tokens
    import_sources: list[str] | None = None  # application setting, read only when an import is due
    unreadable: list[str] = field(default_factory=list)  # what a read-only (MR plan) token may not read


UNREADABLE = object()


def readonly_guard(obs: Observed, what: str, read: Callable[[], Any]) -> Any:
    """Admin-only reads (other users' tokens, instance variables, settings) with a read-only token:
    UNREADABLE and a note instead of an error, so merge-request plans run with a read_api token."""
    import gitlab

    try:
        return read()
    except (gitlab.GitlabAuthenticationError, gitlab.GitlabGetError, gitlab.GitlabListError) as exc:
        if exc.response_code in (401, 403):
            obs.unreadable.append(what)
            return UNREADABLE
        raise


@dataclass
class ApplyResult:
    done: list[str] = field(default_factory=list)
    stored: dict[str, list[str]] = field(default_factory=dict)  # token label -> where its value went


@dataclass
class ApplyContext:
    want: Desired
    store: TokenStore | None
    result: ApplyResult
    token: str  # the admin token in use (pushes of local clones carry it)


def _modules() -> list[Any]:
    from bidsflux.gitlab import deploy_tokens, groups, projects, schedules, users, variables

    return [users, groups, projects, variables, schedules, deploy_tokens]


def observe(gl: Any, want: Desired) -> Observed:
    """Read exactly the objects `want` names."""
    obs = Observed()
    for module in _modules():
        module.observe(gl, want, obs)
    return obs


def diff(want: Desired, obs: Observed) -> Plan:
    plan = Plan()
    if obs.unreadable:
        plan.notes.append("read-only token: not checked (administrators only): " + ", ".join(obs.unreadable))
    for module in _modules():
        module.diff(want, obs, plan)
    return plan


def apply(gl: Any, want: Desired, plan: Plan, store: TokenStore | None, url: str = "",
          kinds: tuple[str, ...] | None = None, token: str = "") -> ApplyResult:
    """Perform `plan` in KINDS order (only `kinds` when given). Token values are stored
    (TokenStore) before anything else happens."""
    handlers = {kind: module for module in _modules() for kind in module.KINDS}
    ctx = ApplyContext(want, store, ApplyResult(), token)
    secrets = want.secret_values()
    for kind in [k for k in KINDS if kinds is None or k in kinds]:
        for c in [c for c in plan.changes if c.kind == kind]:
            with gitlab_errors(f"applying '{c.line()}'", url or gl.url, secrets):
                handlers[kind].apply(gl, c, ctx)
            ctx.result.done.append(c.line())
    return ctx.result
