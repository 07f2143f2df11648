"""Emulated groups, projects and protected branches."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .model import (
    ACCESS_LEVELS,
    SEG,
    Ctx,
    HTTPError,
    RouteSpec,
    as_bool,
    iso,
    member_level,
    not_found,
    now,
    paginate,
    require,
)

if TYPE_CHECKING:
    from .server import GitLabEmulator


def _group_public(g: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in g.items() if not k.startswith("_")}


def get_group(gl: GitLabEmulator, c: Ctx, ref: str) -> dict[str, Any]:
    g = gl.namespace(ref)
    assert c.user is not None
    if g is None or (g["visibility"] == "private" and not c.user["is_admin"] and c.user["id"] not in g["_members"]):
        raise not_found("Group")
    return g


def _list_groups(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    assert c.user is not None
    groups = [g for g in gl.state.groups.values()
              if c.user["is_admin"] or g["visibility"] != "private" or c.user["id"] in g["_members"]]
    if "search" in c.params:
        s = str(c.params["search"]).lower()
        groups = [g for g in groups if s in g["full_path"].lower() or s in g["name"].lower()]
    return paginate(c, [_group_public(g) for g in groups])


def _create_group(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    assert c.user is not None
    require(c, "name", "path")
    parent = None
    if c.params.get("parent_id"):
        parent = gl.state.groups.get(int(c.params["parent_id"]))
        if parent is None:
            raise not_found("Parent Group")
    full = f"{parent['full_path']}/{c.params['path']}" if parent else str(c.params["path"])
    if gl.namespace(full) or gl.user_by_username(full):
        raise HTTPError(400, {"message": "Failed to save group {:path=>[\"has already been taken\"]}"})
    visibility = str(c.params.get("visibility") or "private")
    if visibility not in ("private", "internal", "public"):
        raise HTTPError(400, {"error": "visibility does not have a valid value"})
    gid = gl.state.new_id("namespace")
    g = {"id": gid, "name": str(c.params["name"]), "path": str(c.params["path"]), "full_path": full,
         "full_name": str(c.params["name"]), "visibility": visibility, "parent_id": parent["id"] if parent else None,
         "description": str(c.params.get("description") or ""), "web_url": f"{gl.url}/groups/{full}",
         "created_at": iso(now()), "_members": {c.user["id"]: 50}}
    gl.state.groups[gid] = g
    return _group_public(g)


def _update_group(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    g = get_group(gl, c, c.args[0])
    assert c.user is not None
    if not (c.user["is_admin"] or g["_members"].get(c.user["id"], 0) >= 50):
        raise HTTPError(403, {"message": "403 Forbidden"})
    for k in ("name", "visibility", "description"):
        if k in c.params:
            g[k] = c.params[k]
    return _group_public(g)


def _delete_group(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    g = get_group(gl, c, c.args[0])
    # doc/api/groups.md "Delete a group": its subgroups and projects go with it.
    doomed = {g["id"]}
    while True:
        more = {x["id"] for x in gl.state.groups.values() if x.get("parent_id") in doomed} - doomed
        if not more:
            break
        doomed |= more
    for p in [p for p in gl.state.projects.values() if p["namespace"]["id"] in doomed]:
        del gl.state.projects[p["id"]]
    for gid in doomed:
        del gl.state.groups[gid]
    c.status = 202
    return {"message": "202 Accepted"}


def _project_public(gl: GitLabEmulator, p: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in p.items() if not k.startswith("_")}
    if out.get("import_url"):
        # GitLab never shows credentials embedded in an import URL.
        out["import_url"] = re.sub(r"//[^@/]+@", "//*****:*****@", out["import_url"])
    return out


def get_project(gl: GitLabEmulator, c: Ctx, ref: str, level: int = 0) -> dict[str, Any]:
    p = gl.project_by_ref(ref)
    assert c.user is not None
    if p is None:
        raise not_found("Project")
    member = member_level(gl, p, c.user)
    if p["visibility"] == "private" and member < 10:
        raise not_found("Project")
    if level and member < level:
        raise HTTPError(403, {"message": "403 Forbidden"})
    return p


def _list_projects(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    assert c.user is not None
    user = c.user
    projects = [p for p in gl.state.projects.values()
                if p["visibility"] != "private" or member_level(gl, p, user) >= 10]
    if "search" in c.params:
        s = str(c.params["search"]).lower()
        projects = [p for p in projects if s in p["path_with_namespace"].lower()]
    return paginate(c, [_project_public(gl, p) for p in projects])


PROJECT_SETTINGS = ("description", "visibility", "default_branch", "only_allow_merge_if_pipeline_succeeds",
                    "only_allow_merge_if_all_discussions_are_resolved", "merge_method", "ci_config_path",
                    "remove_source_branch_after_merge", "issues_enabled", "merge_requests_enabled",
                    "container_registry_enabled", "shared_runners_enabled", "mirror")
BOOL_SETTINGS = {"only_allow_merge_if_pipeline_succeeds", "only_allow_merge_if_all_discussions_are_resolved",
                 "remove_source_branch_after_merge", "issues_enabled", "merge_requests_enabled",
                 "container_registry_enabled", "shared_runners_enabled", "mirror"}


def _project_settings(p: dict[str, Any], c: Ctx) -> None:
    """PROJECT_SETTINGS from the request, validated as app/models/project.rb does before saving."""
    errors: dict[str, list[str]] = {}
    if "ci_config_path" in c.params and c.params["ci_config_path"] is not None:
        # app/models/project.rb: `def ci_config_path=(value)` deletes NUL bytes, then
        # `validates :ci_config_path, format: { without: %r{(\.{2}|\A/)}, message: 'cannot include
        # leading slash or directory traversal.' }, length: { maximum: 255 }, allow_blank: true`;
        # lib/api/projects.rb answers an invalid project with render_validation_error! (400).
        value = str(c.params["ci_config_path"]).replace("\0", "")
        if re.search(r"(\.{2}|\A/)", value):
            errors.setdefault("ci_config_path", []).append("cannot include leading slash or directory traversal.")
        if len(value) > 255:
            errors.setdefault("ci_config_path", []).append("is too long (maximum is 255 characters)")
        c.params["ci_config_path"] = value
    if errors:
        raise HTTPError(400, {"message": errors})
    for k in PROJECT_SETTINGS:
        if k in c.params:
            p[k] = as_bool(c.params[k]) if k in BOOL_SETTINGS else c.params[k]


def _create_project(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    assert c.user is not None
    if not c.params.get("name") and not c.params.get("path"):
        raise HTTPError(400, {"error": "name, path are missing, at least one parameter must be provided"})
    path = str(c.params.get("path") or c.params["name"])
    name = str(c.params.get("name") or path)
    if c.params.get("namespace_id"):
        ns = gl.namespace(str(c.params["namespace_id"]))
        if ns is None:
            raise not_found("Namespace")
        if not (c.user["is_admin"] or ns["_members"].get(c.user["id"], 0) >= 40):
            raise HTTPError(403, {"message": "403 Forbidden"})
        namespace = {"id": ns["id"], "name": ns["name"], "path": ns["path"], "kind": "group", "full_path": ns["full_path"]}
    else:
        namespace = {"id": 100000 + c.user["id"], "name": c.user["name"], "path": c.user["username"],
                     "kind": "user", "full_path": c.user["username"]}
    full = f"{namespace['full_path']}/{path}"
    if gl.project_by_ref(full):
        raise HTTPError(400, {"message": {"project_namespace.name": ["has already been taken"],
                                          "name": ["has already been taken"], "path": ["has already been taken"]}})
    import_url = c.params.get("import_url")
    if import_url and not re.match(r"^(https?|git)://", str(import_url)):
        raise HTTPError(400, {"message": {"import_url": ["is blocked: Only allowed schemes are http, https, git"]}})
    if import_url:
        _check_import(gl, str(import_url))
    pid = gl.state.new_id("project")
    p: dict[str, Any] = {
        "id": pid, "name": name, "path": path, "path_with_namespace": full, "name_with_namespace": f"{namespace['name']} / {name}",
        "namespace": namespace, "description": str(c.params.get("description") or ""),
        "visibility": str(c.params.get("visibility") or "private"), "default_branch": "main",
        "web_url": f"{gl.url}/{full}", "http_url_to_repo": f"{gl.url}/{full}.git",
        "ssh_url_to_repo": f"ssh://git@{gl.ssh_authority}/{full}.git", "created_at": iso(now()),
        "import_url": str(import_url) if import_url else None,
        "import_status": "scheduled" if import_url else "none", "import_type": "git" if import_url else None,
        "import_error": None, "mirror": False, "empty_repo": not bool(import_url), "archived": False,
        "only_allow_merge_if_pipeline_succeeds": False, "only_allow_merge_if_all_discussions_are_resolved": False,
        "merge_method": "merge", "ci_config_path": None, "remove_source_branch_after_merge": True,
        "issues_enabled": True, "merge_requests_enabled": True, "container_registry_enabled": True,
        "shared_runners_enabled": True, "creator_id": c.user["id"], "_members": {c.user["id"]: 50},
    }
    _project_settings(p, c)
    gl.state.projects[pid] = p
    gl.state.protected[pid] = {}
    if import_url:
        _run_import(gl, p, str(import_url))
        # An imported project protects its default branch like any new project does.
        gl.state.protected[pid][p["default_branch"] or "main"] = _pb_record(gl, p["default_branch"] or "main", 40, 40)
    return _project_public(gl, p)


def _check_import(gl: GitLabEmulator, url: str) -> None:
    """POST /projects with import_url, in GitLab's order:
    1. lib/api/helpers/projects_helpers.rb validate_git_import_url! probes the remote
       (app/services/import/validate_remote_git_endpoint_service.rb): unreachable -> 422
       "Unable to access repository with the URL and credentials provided";
    2. app/services/projects/create_service.rb validate_import_source_enabled!: import_type `git`
       (lib/api/projects.rb add_import_params) must be in application setting import_sources, else
       lib/api/projects.rb `forbidden!` -> plain 403 (the reason is not in the body)."""
    import subprocess

    probe = subprocess.run(["git", "ls-remote", "--heads", url], capture_output=True, timeout=30, check=False,
                           env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"})
    if probe.returncode != 0:
        raise HTTPError(422, {"message": "Unable to access repository with the URL and credentials provided"})
    if "git" not in gl.state.settings["import_sources"]:
        raise HTTPError(403, {"message": "403 Forbidden"})


def _run_import(gl: GitLabEmulator, p: dict[str, Any], url: str) -> None:
    """The import worker (RepositoryImportWorker): a mirror clone; import_status ends `finished`
    or `failed` with import_error (GET /projects/:id/import)."""
    import subprocess

    repo = gl.repo_dir(p)
    done = subprocess.run(["git", "clone", "-q", "--mirror", url, str(repo)], capture_output=True, text=True,
                          timeout=120, check=False, env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        p["import_status"], p["import_error"] = "failed", (done.stderr.strip().splitlines() or ["clone failed"])[-1]
        return
    subprocess.run(["git", "-C", str(repo), "config", "http.receivepack", "true"], check=True)
    head = subprocess.run(["git", "-C", str(repo), "symbolic-ref", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()
    branches, _ = gl.repo_refs(p)
    p["default_branch"] = head if head in branches else (sorted(branches)[0] if branches else None)
    p["import_status"], p["empty_repo"] = "finished", not branches


def _update_project(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0], level=40)
    _project_settings(p, c)
    if "name" in c.params:
        p["name"] = str(c.params["name"])
    return _project_public(gl, p)


def _delete_project(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0], level=50)
    del gl.state.projects[p["id"]]
    gl.state.protected.pop(p["id"], None)
    for sid in [s for s, v in gl.state.schedules.items() if v["_project"] == p["id"]]:
        del gl.state.schedules[sid]
    c.status = 202
    return {"message": "202 Accepted"}


# ---- protected branches -------------------------------------------------------------------------


def _levels(level: int) -> list[dict[str, Any]]:
    return [{"id": 1, "access_level": level, "access_level_description": ACCESS_LEVELS.get(level, str(level)),
             "user_id": None, "group_id": None}]


def _pb_record(gl: GitLabEmulator, name: str, push: int, merge: int, force: bool = False) -> dict[str, Any]:
    return {"id": gl.state.new_id("protected_branch"), "name": name, "push_access_levels": _levels(push),
            "merge_access_levels": _levels(merge), "unprotect_access_levels": [], "allow_force_push": force,
            "code_owner_approval_required": False}


def _list_pbs(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    p = get_project(gl, c, c.args[0])
    return paginate(c, [dict(v) for v in gl.state.protected[p["id"]].values()])


def _get_pb(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0])
    pb = gl.state.protected[p["id"]].get(c.args[1])
    if pb is None:
        raise not_found("Protected Branch")
    return dict(pb)


def _level_param(c: Ctx, name: str) -> int:
    try:
        level = int(c.params.get(name, 40))
    except ValueError as exc:
        raise HTTPError(400, {"error": f"{name} does not have a valid value"}) from exc
    if level not in ACCESS_LEVELS:
        raise HTTPError(400, {"error": f"{name} does not have a valid value"})
    return level


def _create_pb(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0], level=40)
    require(c, "name")
    name = str(c.params["name"])
    if name in gl.state.protected[p["id"]]:
        raise HTTPError(409, {"message": f"Protected branch '{name}' already exists"})
    pb = _pb_record(gl, name, _level_param(c, "push_access_level"), _level_param(c, "merge_access_level"),
                    as_bool(c.params.get("allow_force_push", False)))
    gl.state.protected[p["id"]][name] = pb
    return dict(pb)


def _update_pb(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0], level=40)
    pb = gl.state.protected[p["id"]].get(c.args[1])
    if pb is None:
        raise not_found("Protected Branch")
    if "allow_force_push" in c.params:
        pb["allow_force_push"] = as_bool(c.params["allow_force_push"])
    for key, levels_key in (("allowed_to_push", "push_access_levels"), ("allowed_to_merge", "merge_access_levels")):
        for entry in c.params.get(key) or []:
            if isinstance(entry, dict) and "access_level" in entry:
                pb[levels_key] = _levels(int(entry["access_level"]))
    return dict(pb)


def _delete_pb(gl: GitLabEmulator, c: Ctx) -> None:
    p = get_project(gl, c, c.args[0], level=40)
    if gl.state.protected[p["id"]].pop(c.args[1], None) is None:
        raise not_found("Protected Branch")
    return None


def routes(gl: GitLabEmulator) -> list[RouteSpec]:
    """(method, path regex, handler, scope class, admin only) for this module's endpoints."""
    return [
        ("GET", r"/groups", lambda c: _list_groups(gl, c), "read", False),
        ("GET", rf"/groups/{SEG}", lambda c: _group_public(get_group(gl, c, c.args[0])), "read", False),
        ("POST", r"/groups", lambda c: _create_group(gl, c), "write", False),
        ("PUT", rf"/groups/{SEG}", lambda c: _update_group(gl, c), "write", False),
        ("DELETE", rf"/groups/{SEG}", lambda c: _delete_group(gl, c), "write", False),
        ("GET", r"/projects", lambda c: _list_projects(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}", lambda c: _project_public(gl, get_project(gl, c, c.args[0])), "read", False),
        ("POST", r"/projects", lambda c: _create_project(gl, c), "write", False),
        ("PUT", rf"/projects/{SEG}", lambda c: _update_project(gl, c), "write", False),
        ("DELETE", rf"/projects/{SEG}", lambda c: _delete_project(gl, c), "write", False),
        ("GET", rf"/projects/{SEG}/protected_branches", lambda c: _list_pbs(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}/protected_branches/{SEG}", lambda c: _get_pb(gl, c), "read", False),
        ("POST", rf"/projects/{SEG}/protected_branches", lambda c: _create_pb(gl, c), "write", False),
        ("PATCH", rf"/projects/{SEG}/protected_branches/{SEG}", lambda c: _update_pb(gl, c), "write", False),
        ("DELETE", rf"/projects/{SEG}/protected_branches/{SEG}", lambda c: _delete_pb(gl, c), "write", False),
    ]
