"""Emulated branches (read) and pipelines: create on a ref, list, get. Nothing runs a job here: a
test plays the runner and sets a pipeline's status with GitLabEmulator.set_pipeline_status."""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING, Any

from .model import SEG, Ctx, HTTPError, RouteSpec, iso, member_level, not_found, now, paginate, require
from .projects import get_project

if TYPE_CHECKING:
    from .server import GitLabEmulator


def _git(gl: GitLabEmulator, project: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(gl.repo_dir(project)), *args], capture_output=True, text=True, check=False)


def _branch(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    """GET /projects/:id/repository/branches/:branch (lib/api/branches.rb, Entities::Branch):
    404 {"message":"404 Branch Not Found"} when the repository has no such branch."""
    p = get_project(gl, c, c.args[0])
    name = c.args[1]
    sha = _git(gl, p, "rev-parse", "--verify", "-q", f"refs/heads/{name}^{{commit}}").stdout.strip()
    if not sha:
        raise not_found("Branch")
    return {"name": name, "merged": False, "protected": name in gl.state.protected.get(p["id"], {}),
            "default": name == p.get("default_branch"), "developers_can_push": False, "developers_can_merge": False,
            "can_push": True, "web_url": f"{p['web_url']}/-/tree/{name}",
            "commit": {"id": sha, "short_id": sha[:8], "title": _git(gl, p, "log", "-1", "--format=%s", sha).stdout.strip()}}


def _config_error(gl: GitLabEmulator, c: Ctx, p: dict[str, Any], sha: str) -> str | None:
    """Why Ci::CreatePipelineService would find no configuration, as GitLab says it:
    - ci_config_path FILE@GROUP/PROJECT[:REF] becomes `include: [{project, file, ref}]`
      (lib/gitlab/ci/project_config/external_project.rb); the file is read at REF, else HEAD, of that
      project (lib/gitlab/ci/config/external/file/project.rb), which the pipeline's user must be
      able to read; its errors (wording from that file's validations, recalled, not fetched):
      "Project `P` not found or access denied! ..." and "Project `P` file `F` does not exist!";
    - otherwise the file (default .gitlab-ci.yml) must be in the project's own commit
      ("Missing CI config file", Gitlab::Ci::Pipeline::Chain::Config::Content)."""
    path = p.get("ci_config_path") or ".gitlab-ci.yml"
    if "@" in path:
        file, _, location = path.partition("@")
        project_path, _, ref = location.partition(":")
        other = gl.project_by_ref(project_path)
        assert c.user is not None
        if other is None or (other["visibility"] == "private" and member_level(gl, other, c.user) < 20):
            return (f"Project `{project_path}` not found or access denied! Make sure any includes in the pipeline "
                    "configuration are correctly defined.")
        if _git(gl, other, "cat-file", "-e", f"{ref or 'HEAD'}:{file}").returncode != 0:
            return f"Project `{project_path}` file `{file}` does not exist!"
        return None
    if _git(gl, p, "cat-file", "-e", f"{sha}:{path}").returncode != 0:
        return "Missing CI config file"
    return None


def _create(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    """POST /projects/:id/pipeline (lib/api/ci/pipelines.rb): `ref` required; Developer or more; a
    pipeline that cannot be created answers render_validation_error! -> 400 {"message":{"base":[...]}}."""
    p = get_project(gl, c, c.args[0], level=30)
    require(c, "ref")
    ref = str(c.params["ref"])
    sha = _git(gl, p, "rev-parse", "--verify", "-q", f"refs/heads/{ref}^{{commit}}").stdout.strip() or \
        _git(gl, p, "rev-parse", "--verify", "-q", f"refs/tags/{ref}^{{commit}}").stdout.strip()
    if not sha:
        raise HTTPError(400, {"message": {"base": ["Reference not found"]}})
    error = _config_error(gl, c, p, sha)
    if error:
        raise HTTPError(400, {"message": {"base": [error]}})
    pid = gl.state.new_id("pipeline")
    assert c.user is not None
    pipeline = {"id": pid, "iid": pid, "project_id": p["id"], "sha": sha, "ref": ref, "status": "created",
                "source": "api", "created_at": iso(now()), "updated_at": iso(now()),
                "web_url": f"{p['web_url']}/-/pipelines/{pid}", "user": {"id": c.user["id"], "username": c.user["username"]}}
    gl.state.pipelines[pid] = pipeline
    c.status = 201
    return dict(pipeline)


def _list(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    """GET /projects/:id/pipelines with `sha`, `ref`, `status` filters; newest first by default."""
    p = get_project(gl, c, c.args[0], level=20)
    items = [dict(x) for x in gl.state.pipelines.values() if x["project_id"] == p["id"]]
    for key in ("sha", "ref", "status"):
        if key in c.params:
            items = [x for x in items if x[key] == str(c.params[key])]
    items.sort(key=lambda x: x["id"], reverse=str(c.params.get("sort", "desc")) == "desc")
    return paginate(c, items)


def _get(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0], level=20)
    x = gl.state.pipelines.get(int(c.args[1])) if c.args[1].isdigit() else None
    if x is None or x["project_id"] != p["id"]:
        raise HTTPError(404, {"message": "404 Not Found"})
    return dict(x)


def routes(gl: GitLabEmulator) -> list[RouteSpec]:
    return [
        ("GET", rf"/projects/{SEG}/repository/branches/{SEG}", lambda c: _branch(gl, c), "read", False),
        ("POST", rf"/projects/{SEG}/pipeline", lambda c: _create(gl, c), "write", False),
        ("GET", rf"/projects/{SEG}/pipelines", lambda c: _list(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}/pipelines/{SEG}", lambda c: _get(gl, c), "read", False),
    ]
