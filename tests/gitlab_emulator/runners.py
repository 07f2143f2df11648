"""Emulated runners: `POST /user/runners`, list, get, update, delete, `POST /runners/verify`."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from .model import (
    SEG,
    Ctx,
    HTTPError,
    RouteSpec,
    Runner,
    as_bool,
    as_list,
    iso,
    member_level,
    not_found,
    now,
    paginate,
    require,
)

if TYPE_CHECKING:
    from .server import GitLabEmulator


def _create_runner(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    """lib/api/user_runners.rb + app/services/ci/runners/create_runner_service.rb (17.x)."""
    assert c.user is not None
    require(c, "runner_type")
    rtype = str(c.params["runner_type"])
    if rtype not in ("instance_type", "group_type", "project_type"):
        raise HTTPError(400, {"error": "runner_type does not have a valid value"})
    # Grape: group_id required iff group_type, project_id iff project_type.
    if rtype == "group_type":
        require(c, "group_id")
    if rtype == "project_type":
        require(c, "project_id")
    access = str(c.params.get("access_level") or "not_protected")
    if access not in ("not_protected", "ref_protected"):
        raise HTTPError(400, {"error": "access_level does not have a valid value"})
    # 1. strategy.validate_params (create_runner_service.rb strategies): the scope must exist.
    group = project = None
    if rtype == "instance_type" and (c.params.get("group_id") or c.params.get("project_id")):
        raise HTTPError(400, {"message": "400 Bad request - Unexpected scope"})
    if rtype == "group_type":
        group = gl.namespace(str(c.params["group_id"]))
        if group is None:
            raise HTTPError(400, {"message": "400 Bad request - Missing/invalid group"})
    if rtype == "project_type":
        project = gl.project_by_ref(str(c.params["project_id"]))
        if project is None:
            raise HTTPError(400, {"message": "400 Bad request - Missing/invalid project"})
    # 2. authorisation (doc/ci/runners/runners_scope.md): instance runner = administrator, group
    # runner = group Owner, project runner = project Maintainer.
    allowed = (c.user["is_admin"] or
               (group is not None and group["_members"].get(c.user["id"], 0) >= 50) or
               (project is not None and member_level(gl, project, c.user) >= 40))
    if not allowed:
        raise HTTPError(403, {"message": "403 Forbidden - Insufficient permissions"})
    # 3. runner.save! (app/models/ci/runner.rb validations) -> 400 with full messages.
    tags = as_list(c.params.get("tag_list"))
    run_untagged = as_bool(c.params.get("run_untagged", True))
    if not tags and not run_untagged:  # Ci::Runner#tag_constraints
        raise HTTPError(400, {"message": "400 Bad request - Tags list can not be empty when runner is not "
                                         "allowed to pick untagged jobs"})
    timeout = int(c.params["maximum_timeout"]) if c.params.get("maximum_timeout") else None
    if timeout is not None and timeout < 600:
        raise HTTPError(400, {"message": "400 Bad request - Maximum timeout needs to be at least 10 minutes"})
    rid = gl.state.new_id("runner")
    r = Runner(id=rid, token="glrt-" + secrets.token_urlsafe(20), description=str(c.params.get("description") or ""),
               runner_type=rtype, tag_list=tags, run_untagged=run_untagged,
               locked=as_bool(c.params.get("locked", False)), paused=as_bool(c.params.get("paused", False)),
               access_level=access, maximum_timeout=timeout, created_at=now(), creator_id=c.user["id"],
               group_id=group["id"] if group else None, project_id=project["id"] if project else None)
    r.token_expires_at = gl.runner_token_expiry()
    gl.state.runners[rid] = r
    # Entities::Ci::RunnerRegistrationDetails: the only answer that carries the token.
    return {"id": r.id, "token": r.token, "token_expires_at": iso(r.token_expires_at)}


def _list_runners(gl: GitLabEmulator, c: Ctx, everything: bool) -> list[Any]:
    assert c.user is not None
    user = c.user
    runners = [r for r in gl.state.runners.values() if everything or r.creator_id == user["id"]]
    p = c.params
    if "type" in p:
        runners = [r for r in runners if r.runner_type == p["type"]]
    if "status" in p:
        runners = [r for r in runners if r.status() == p["status"]]
    if "paused" in p:
        runners = [r for r in runners if r.paused == as_bool(p["paused"])]
    if "tag_list" in p:
        want = set(as_list(p["tag_list"]))
        runners = [r for r in runners if want <= set(r.tag_list)]
    return paginate(c, [r.short() for r in runners])


def _get_runner(gl: GitLabEmulator, c: Ctx) -> Runner:
    assert c.user is not None
    r = gl.state.runners.get(int(c.args[0])) if c.args[0].isdigit() else None
    if r is None:
        raise not_found("Runner")
    if not (c.user["is_admin"] or r.creator_id == c.user["id"]):
        raise HTTPError(403, {"message": "403 Forbidden"})
    return r


def _update_runner(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    r = _get_runner(gl, c)
    if "description" in c.params:
        r.description = str(c.params["description"])
    if "tag_list" in c.params:
        r.tag_list = as_list(c.params["tag_list"])
    for k in ("run_untagged", "locked", "paused"):
        if k in c.params:
            setattr(r, k, as_bool(c.params[k]))
    if "access_level" in c.params:
        if c.params["access_level"] not in ("not_protected", "ref_protected"):
            raise HTTPError(400, {"error": "access_level does not have a valid value"})
        r.access_level = str(c.params["access_level"])
    if not r.tag_list and not r.run_untagged:  # Ci::Runner#tag_constraints on update too
        raise HTTPError(400, {"message": "400 Bad request - Tags list can not be empty when runner is not "
                                         "allowed to pick untagged jobs"})
    return r.details()


def _delete_runner(gl: GitLabEmulator, c: Ctx) -> None:
    r = _get_runner(gl, c)
    del gl.state.runners[r.id]
    return None


def _verify_runner(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    require(c, "token")
    r = next((x for x in gl.state.runners.values() if x.token == c.params["token"]), None)
    if r is None or (r.token_expires_at is not None and r.token_expires_at <= now()):
        raise HTTPError(403, {"message": "403 Forbidden"})
    c.status = 200
    return {"id": r.id, "token": r.token, "token_expires_at": iso(r.token_expires_at)}


def routes(gl: GitLabEmulator) -> list[RouteSpec]:
    """(method, path regex, handler, scope class, admin only) for this module's endpoints."""
    return [
        ("POST", r"/user/runners", lambda c: _create_runner(gl, c), "create_runner", False),
        ("GET", r"/runners", lambda c: _list_runners(gl, c, everything=False), "read", False),
        ("GET", r"/runners/all", lambda c: _list_runners(gl, c, everything=True), "read", True),
        ("POST", r"/runners/verify", lambda c: _verify_runner(gl, c), "none", False),
        ("GET", rf"/runners/{SEG}", lambda c: _get_runner(gl, c).details(), "read", False),
        ("PUT", rf"/runners/{SEG}", lambda c: _update_runner(gl, c), "manage_runner", False),
        ("DELETE", rf"/runners/{SEG}", lambda c: _delete_runner(gl, c), "manage_runner", False),
    ]
