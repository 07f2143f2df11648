"""Emulated group members (`/groups/:id/members[/:user_id]`): lib/api/members.rb, app/models/members/group_member.rb."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .model import SEG, Ctx, HTTPError, RouteSpec, not_found, require
from .projects import get_group
from .users import user_public

if TYPE_CHECKING:
    from .server import GitLabEmulator

# Gitlab::Access: guest 10, reporter 20, developer 30, maintainer 40, owner 50 (planner 15 is 17.7+).
MEMBER_LEVELS = {10, 20, 30, 40, 50}


def _member(gl: GitLabEmulator, group: dict[str, Any], uid: int) -> dict[str, Any]:
    user = gl.state.users.get(uid)
    if user is None or uid not in group["_members"]:
        raise not_found("Member")
    return {**user_public(user), "access_level": group["_members"][uid], "expires_at": None}


def _owner(c: Ctx, group: dict[str, Any]) -> None:
    # Managing members needs admin_group_member (Owner; Maintainers up to their own level) — Owner here.
    assert c.user is not None
    if not (c.user["is_admin"] or group["_members"].get(c.user["id"], 0) >= 50):
        raise HTTPError(403, {"message": "403 Forbidden"})


def _level(c: Ctx) -> int:
    require(c, "access_level")
    try:
        level = int(c.params["access_level"])
    except ValueError:
        level = -1
    if level not in MEMBER_LEVELS:
        raise HTTPError(400, {"error": "access_level does not have a valid value"})
    return level


def _add(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    group = get_group(gl, c, c.args[0])
    _owner(c, group)
    require(c, "user_id")
    uid = int(c.params["user_id"])
    if uid not in gl.state.users:
        raise not_found("User")
    if uid in group["_members"]:  # lib/api/members.rb: conflict!('Member already exists')
        raise HTTPError(409, {"message": "Member already exists"})
    group["_members"][uid] = _level(c)
    return _member(gl, group, uid)


def _edit(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    group = get_group(gl, c, c.args[0])
    _owner(c, group)
    uid = int(c.args[1]) if c.args[1].isdigit() else -1
    _member(gl, group, uid)
    group["_members"][uid] = _level(c)
    return _member(gl, group, uid)


def routes(gl: GitLabEmulator) -> list[RouteSpec]:
    return [
        ("GET", rf"/groups/{SEG}/members/{SEG}",
         lambda c: _member(gl, get_group(gl, c, c.args[0]), int(c.args[1]) if c.args[1].isdigit() else -1), "read", False),
        ("POST", rf"/groups/{SEG}/members", lambda c: _add(gl, c), "write", False),
        ("PUT", rf"/groups/{SEG}/members/{SEG}", lambda c: _edit(gl, c), "write", False),
    ]
