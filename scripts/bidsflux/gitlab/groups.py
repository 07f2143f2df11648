"""GitLab groups of gitlab.yml (name, visibility, parent) and their members: observe, diff, apply."""

from __future__ import annotations

from typing import Any

from bidsflux.gitlab.client import get_or_none
from bidsflux.gitlab.reconcile import ApplyContext, Change, Observed, Plan, field_changes
from bidsflux.gitlab.spec import MEMBER_ACCESS, Desired

MEMBER_NAMES = {v: k for k, v in MEMBER_ACCESS.items()}

KINDS = ("group", "group_member")


def observe(gl: Any, want: Desired, obs: Observed) -> None:
    for path in want.groups:
        g = get_or_none(lambda p=path: gl.groups.get(p))
        obs.groups[path] = g.asdict() if g else None
        for username in want.members.get(path, {}) if g else ():
            user = obs.users.get(username)  # users.py reads the bots first
            member = get_or_none(lambda uid=user["id"], grp=g: grp.members.get(uid)) if user else None
            obs.members.setdefault(path, {})[username] = int(member.access_level) if member else None


def diff(want: Desired, obs: Observed, plan: Plan) -> None:
    for path, g in want.groups.items():
        live = obs.groups.get(path)
        if live is None:
            plan.changes.append(Change("create", "group", path, {"visibility": {"from": None, "to": g["visibility"]}}))
        elif d := field_changes(live, g):
            plan.changes.append(Change("update", "group", path, d))
        for username, level in want.members.get(path, {}).items():
            have = (obs.members.get(path) or {}).get(username)
            if have != level:
                plan.changes.append(Change("create" if have is None else "update", "group_member", f"{path}:{username}",
                                           {"access_level": {"from": MEMBER_NAMES.get(have or -1), "to": MEMBER_NAMES[level]}}))


def apply(gl: Any, c: Change, ctx: ApplyContext) -> None:
    if c.kind == "group_member":
        path, _, username = c.name.rpartition(":")
        level = ctx.want.members[path][username]
        group = gl.groups.get(path)
        uid = gl.users.list(username=username, get_all=False)[0].id
        if c.action == "create":
            group.members.create({"user_id": uid, "access_level": level})
        else:
            group.members.update(uid, {"access_level": level})
        return
    g = ctx.want.groups[c.name]
    if c.action == "create":
        parent, _, leaf = c.name.rpartition("/")
        data: dict[str, Any] = {"name": g["name"], "path": leaf, "visibility": g["visibility"]}
        if parent:
            data["parent_id"] = gl.groups.get(parent).id
        gl.groups.create(data)
    else:
        gl.groups.update(c.name, {k: g[k] for k in c.details})
