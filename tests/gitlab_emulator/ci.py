"""Emulated instance CI/CD variables and pipeline schedules (with their variables)."""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any

from .model import (
    CRON_FIELD,
    MASKABLE,
    MASKABLE_RAW,
    SEG,
    Ctx,
    HTTPError,
    RouteSpec,
    as_bool,
    iso,
    not_found,
    now,
    paginate,
    require,
)
from .projects import get_project
from .users import user_public

if TYPE_CHECKING:
    from .server import GitLabEmulator


def _get_var(gl: GitLabEmulator, key: str) -> dict[str, Any]:
    v = gl.state.variables.get(key)
    if v is None:
        raise not_found("Variable")
    return v


def _var_fields(c: Ctx, v: dict[str, Any]) -> dict[str, Any]:
    out = dict(v)
    for k in ("protected", "masked", "raw"):
        if k in c.params:
            out[k] = as_bool(c.params[k])
    if "value" in c.params:
        out["value"] = str(c.params["value"])
    if "description" in c.params:
        out["description"] = c.params["description"]
    if "variable_type" in c.params:
        if c.params["variable_type"] not in ("env_var", "file"):
            raise HTTPError(400, {"error": "variable_type does not have a valid value"})
        out["variable_type"] = c.params["variable_type"]
    # app/models/concerns/ci/maskable.rb: `validates :value, format: {with: masked_regex}` -> Rails'
    # "is invalid" under `value`, rendered by lib/api/ci/variables.rb render_validation_error! (400).
    rule = MASKABLE_RAW if out["raw"] else MASKABLE
    if out["masked"] and not rule.match(out["value"]):
        raise HTTPError(400, {"message": {"value": ["is invalid"]}})
    return out


def _create_var(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    require(c, "key")
    if "value" not in c.params:
        raise HTTPError(400, {"error": "value is missing"})
    key = str(c.params["key"])
    if not re.match(r"^[A-Za-z0-9_]{1,255}$", key):
        raise HTTPError(400, {"message": {"key": ["can contain only letters, digits and '_'."]}})
    if key in gl.state.variables:
        raise HTTPError(400, {"message": {"key": [f"({key}) has already been taken"]}})
    v = _var_fields(c, {"key": key, "value": "", "variable_type": "env_var", "protected": False,
                        "masked": False, "raw": False, "description": None})
    gl.state.variables[key] = v
    return dict(v)


def _update_var(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    v = _var_fields(c, _get_var(gl, c.args[0]))
    gl.state.variables[c.args[0]] = v
    return dict(v)


def _delete_var(gl: GitLabEmulator, c: Ctx) -> None:
    _get_var(gl, c.args[0])
    del gl.state.variables[c.args[0]]
    return None


# ---- pipeline schedules -------------------------------------------------------------------------


def _schedule_public(s: dict[str, Any], with_variables: bool = False) -> dict[str, Any]:
    out = {k: v for k, v in s.items() if not k.startswith("_")}
    if with_variables:
        out["variables"] = [dict(v) for v in s["_variables"].values()]
    return out


def _list_schedules(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    p = get_project(gl, c, c.args[0])
    return paginate(c, [_schedule_public(s) for s in gl.state.schedules.values() if s["_project"] == p["id"]])


def _get_schedule(gl: GitLabEmulator, c: Ctx, level: int = 0) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0], level=level)
    s = gl.state.schedules.get(int(c.args[1])) if c.args[1].isdigit() else None
    if s is None or s["_project"] != p["id"]:
        raise not_found("Pipeline Schedule")
    return s


def _check_cron(cron: str) -> None:
    parts = cron.split()
    if len(parts) != 5 or not all(CRON_FIELD.match(x) for x in parts):
        raise HTTPError(400, {"message": {"cron": ["is invalid syntax"]}})


FULL_REF = re.compile(r"\A(refs/tags/|refs/heads/)\S+")  # Ci::PipelineSchedule::VALID_REF_FORMAT_REGEX


def _expand_ref(gl: GitLabEmulator, project: dict[str, Any], ref: str) -> str:
    """The ref as GitLab 17 stores it, or 400 "is ambiguous".

    app/services/ci/pipeline_schedules/base_save_service.rb (17.0+): a ref not matching
    VALID_REF_FORMAT_REGEX goes through Ci::PipelineSchedule#expand_short_ref
    (app/models/ci/pipeline_schedule.rb: `project.repository.expand_ref(ref)`, skipped when a branch
    and a tag share the name); still short -> `errors.add(:ref, 'is ambiguous')` -> 400. So a short
    ref that names no branch or tag (an empty repository) is refused; a full ref is not checked."""
    if FULL_REF.match(ref):
        return ref
    branches, tags = gl.repo_refs(project)
    if ref in branches and ref not in tags:
        return f"refs/heads/{ref}"
    if ref in tags and ref not in branches:
        return f"refs/tags/{ref}"
    raise HTTPError(400, {"message": {"ref": ["is ambiguous"]}})


def _create_schedule(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0], level=30)
    assert c.user is not None
    require(c, "description", "ref", "cron")
    _check_cron(str(c.params["cron"]))
    ref = _expand_ref(gl, p, str(c.params["ref"]))
    sid = gl.state.new_id("schedule")
    # lib/api/entities/ci/pipeline_schedule.rb `expose :ref`: GET returns the stored, expanded ref.
    s = {"id": sid, "description": str(c.params["description"]), "ref": ref,
         "cron": str(c.params["cron"]), "cron_timezone": str(c.params.get("cron_timezone") or "UTC"),
         "next_run_at": iso(now() + dt.timedelta(hours=1)), "active": as_bool(c.params.get("active", True)),
         "created_at": iso(now()), "updated_at": iso(now()), "owner": user_public(c.user),
         "_project": p["id"], "_variables": {}}
    gl.state.schedules[sid] = s
    return _schedule_public(s)


def _update_schedule(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    s = _get_schedule(gl, c, level=30)
    if "cron" in c.params:
        _check_cron(str(c.params["cron"]))
    if "ref" in c.params:  # update goes through the same BaseSaveService
        project = gl.state.projects[s["_project"]]
        c.params["ref"] = _expand_ref(gl, project, str(c.params["ref"]))
    for k in ("description", "ref", "cron", "cron_timezone"):
        if k in c.params:
            s[k] = str(c.params[k])
    if "active" in c.params:
        s["active"] = as_bool(c.params["active"])
    s["updated_at"] = iso(now())
    return _schedule_public(s)


def _delete_schedule(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    s = _get_schedule(gl, c, level=30)
    del gl.state.schedules[s["id"]]
    c.status = 204
    return _schedule_public(s)


def _create_sched_var(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    s = _get_schedule(gl, c, level=30)
    require(c, "key")
    key = str(c.params["key"])
    if key in s["_variables"]:
        raise HTTPError(400, {"message": {"key": [f"({key}) has already been taken"]}})
    v = {"key": key, "value": str(c.params.get("value", "")), "variable_type": str(c.params.get("variable_type") or "env_var")}
    s["_variables"][key] = v
    return dict(v)


def _update_sched_var(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    s = _get_schedule(gl, c, level=30)
    v = s["_variables"].get(c.args[2])
    if v is None:
        raise not_found("Variable")
    if "value" in c.params:
        v["value"] = str(c.params["value"])
    return dict(v)


def _delete_sched_var(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    s = _get_schedule(gl, c, level=30)
    v = s["_variables"].pop(c.args[2], None)
    if v is None:
        raise not_found("Variable")
    c.status = 204
    return dict(v)


def routes(gl: GitLabEmulator) -> list[RouteSpec]:
    """(method, path regex, handler, scope class, admin only) for this module's endpoints."""
    return [
        ("GET", r"/admin/ci/variables", lambda c: paginate(c, [dict(v) for v in gl.state.variables.values()]), "read", True),
        ("GET", rf"/admin/ci/variables/{SEG}", lambda c: dict(_get_var(gl, c.args[0])), "read", True),
        ("POST", r"/admin/ci/variables", lambda c: _create_var(gl, c), "write", True),
        ("PUT", rf"/admin/ci/variables/{SEG}", lambda c: _update_var(gl, c), "write", True),
        ("DELETE", rf"/admin/ci/variables/{SEG}", lambda c: _delete_var(gl, c), "write", True),
        ("GET", rf"/projects/{SEG}/pipeline_schedules", lambda c: _list_schedules(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}/pipeline_schedules/{SEG}", lambda c: _schedule_public(_get_schedule(gl, c), True), "read", False),
        ("POST", rf"/projects/{SEG}/pipeline_schedules", lambda c: _create_schedule(gl, c), "write", False),
        ("PUT", rf"/projects/{SEG}/pipeline_schedules/{SEG}", lambda c: _update_schedule(gl, c), "write", False),
        ("DELETE", rf"/projects/{SEG}/pipeline_schedules/{SEG}", lambda c: _delete_schedule(gl, c), "write", False),
        ("POST", rf"/projects/{SEG}/pipeline_schedules/{SEG}/variables", lambda c: _create_sched_var(gl, c), "write", False),
        ("PUT", rf"/projects/{SEG}/pipeline_schedules/{SEG}/variables/{SEG}", lambda c: _update_sched_var(gl, c), "write", False),
        ("DELETE", rf"/projects/{SEG}/pipeline_schedules/{SEG}/variables/{SEG}", lambda c: _delete_sched_var(gl, c), "write", False),
    ]
