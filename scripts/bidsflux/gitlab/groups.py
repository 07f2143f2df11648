"""GitLab groups of gitlab.yml (name, visibility, parent): observe, diff, apply."""

from __future__ import annotations

from typing import Any

from bidsflux.gitlab.client import get_or_none
from bidsflux.gitlab.reconcile import ApplyContext, Change, Observed, Plan, field_changes
from bidsflux.gitlab.spec import Desired

KINDS = ("group",)


def observe(gl: Any, want: Desired, obs: Observed) -> None:
    for path in want.groups:
        g = get_or_none(lambda p=path: gl.groups.get(p))
        obs.groups[path] = g.asdict() if g else None


def diff(want: Desired, obs: Observed, plan: Plan) -> None:
    for path, g in want.groups.items():
        live = obs.groups.get(path)
        if live is None:
            plan.changes.append(Change("create", "group", path, {"visibility": {"from": None, "to": g["visibility"]}}))
        elif d := field_changes(live, g):
            plan.changes.append(Change("update", "group", path, d))


def apply(gl: Any, c: Change, ctx: ApplyContext) -> None:
    g = ctx.want.groups[c.name]
    if c.action == "create":
        parent, _, leaf = c.name.rpartition("/")
        data: dict[str, Any] = {"name": g["name"], "path": leaf, "visibility": g["visibility"]}
        if parent:
            data["parent_id"] = gl.groups.get(parent).id
        gl.groups.create(data)
    else:
        gl.groups.update(c.name, {k: g[k] for k in c.details})
