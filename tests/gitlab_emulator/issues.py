"""Emulated project issues, merge requests and merge-request notes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .model import (
    SEG,
    Ctx,
    HTTPError,
    RouteSpec,
    as_list,
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


def _list_issues(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    p = get_project(gl, c, c.args[0])
    issues = [i for i in gl.state.issues.values() if i["project_id"] == p["id"]]
    state = c.params.get("state", "all")
    if state in ("opened", "closed"):
        issues = [i for i in issues if i["state"] == state]
    if c.params.get("labels"):
        want = set(as_list(c.params["labels"]))
        issues = [i for i in issues if want <= set(i["labels"])]
    if c.params.get("search"):
        s = str(c.params["search"]).lower()
        issues = [i for i in issues if s in i["title"].lower() or s in (i["description"] or "").lower()]
    issues.sort(key=lambda i: i["id"], reverse=True)  # GitLab orders by created_at desc
    return paginate(c, [dict(i) for i in issues])


def _get_issue(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0])
    i = next((x for x in gl.state.issues.values() if x["project_id"] == p["id"] and str(x["iid"]) == c.args[1]), None)
    if i is None:
        raise not_found("Issue")
    return i


def _create_issue(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0], level=10 if c.user and not c.user["is_admin"] else 0)
    require(c, "title")
    iid = 1 + max((i["iid"] for i in gl.state.issues.values() if i["project_id"] == p["id"]), default=0)
    iid_global = gl.state.new_id("issue")
    issue = {"id": iid_global, "iid": iid, "project_id": p["id"], "title": str(c.params["title"]),
             "description": c.params.get("description"), "state": "opened", "labels": sorted(as_list(c.params.get("labels"))),
             "created_at": iso(now()), "updated_at": iso(now()), "closed_at": None,
             "author": user_public(c.user), "web_url": f"{p['web_url']}/-/issues/{iid}"}
    gl.state.issues[iid_global] = issue
    return dict(issue)


def _update_issue(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    i = _get_issue(gl, c)
    for k in ("title", "description"):
        if k in c.params:
            i[k] = c.params[k]
    if "labels" in c.params:
        i["labels"] = sorted(as_list(c.params["labels"]))
    if "add_labels" in c.params:
        i["labels"] = sorted(set(i["labels"]) | set(as_list(c.params["add_labels"])))
    if "remove_labels" in c.params:
        i["labels"] = sorted(set(i["labels"]) - set(as_list(c.params["remove_labels"])))
    event = c.params.get("state_event")
    if event == "close":
        i["state"], i["closed_at"] = "closed", iso(now())
    elif event == "reopen":
        i["state"], i["closed_at"] = "opened", None
    i["updated_at"] = iso(now())
    return dict(i)


def _list_mrs(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    p = get_project(gl, c, c.args[0])
    mrs = [dict(m) for m in gl.state.merge_requests.values() if m["project_id"] == p["id"]]
    if c.params.get("state") in ("opened", "closed", "merged"):
        mrs = [m for m in mrs if m["state"] == c.params["state"]]
    return paginate(c, mrs)


def _get_mr(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0])
    m = next((x for x in gl.state.merge_requests.values() if x["project_id"] == p["id"] and str(x["iid"]) == c.args[1]), None)
    if m is None:
        raise not_found("Merge Request")
    return m


def _create_mr(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0], level=30)
    require(c, "source_branch", "target_branch", "title")
    iid = 1 + max((m["iid"] for m in gl.state.merge_requests.values() if m["project_id"] == p["id"]), default=0)
    gid = gl.state.new_id("merge_request")
    m = {"id": gid, "iid": iid, "project_id": p["id"], "title": str(c.params["title"]),
         "description": c.params.get("description"), "state": "opened",
         "source_branch": str(c.params["source_branch"]), "target_branch": str(c.params["target_branch"]),
         "author": user_public(c.user), "created_at": iso(now()), "web_url": f"{p['web_url']}/-/merge_requests/{iid}"}
    gl.state.merge_requests[gid] = m
    return dict(m)


def _list_notes(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    m = _get_mr(gl, c)
    notes = [dict(n) for n in gl.state.notes.values() if n["noteable_id"] == m["id"]]
    return paginate(c, notes)


def _get_note(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    m = _get_mr(gl, c)
    n = gl.state.notes.get(int(c.args[2])) if c.args[2].isdigit() else None
    if n is None or n["noteable_id"] != m["id"]:
        raise not_found("Note")
    return n


def _create_note(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    m = _get_mr(gl, c)
    require(c, "body")
    if len(str(c.params["body"])) > 1_000_000:
        raise HTTPError(400, {"message": {"note": ["is too long (maximum is 1000000 characters)"]}})
    nid = gl.state.new_id("note")
    n = {"id": nid, "body": str(c.params["body"]), "author": user_public(c.user), "system": False,
         "created_at": iso(now()), "updated_at": iso(now()), "noteable_id": m["id"], "noteable_iid": m["iid"],
         "noteable_type": "MergeRequest", "resolvable": False}
    gl.state.notes[nid] = n
    return dict(n)


def _update_note(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    n = _get_note(gl, c)
    assert c.user is not None
    if n["author"]["id"] != c.user["id"] and not c.user["is_admin"]:
        raise HTTPError(403, {"message": "403 Forbidden"})
    require(c, "body")
    n["body"], n["updated_at"] = str(c.params["body"]), iso(now())
    return dict(n)


def _delete_note(gl: GitLabEmulator, c: Ctx) -> None:
    n = _get_note(gl, c)
    del gl.state.notes[n["id"]]
    return None


def routes(gl: GitLabEmulator) -> list[RouteSpec]:
    """(method, path regex, handler, scope class, admin only) for this module's endpoints."""
    return [
        ("GET", rf"/projects/{SEG}/issues", lambda c: _list_issues(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}/issues/{SEG}", lambda c: dict(_get_issue(gl, c)), "read", False),
        ("POST", rf"/projects/{SEG}/issues", lambda c: _create_issue(gl, c), "write", False),
        ("PUT", rf"/projects/{SEG}/issues/{SEG}", lambda c: _update_issue(gl, c), "write", False),
        ("GET", rf"/projects/{SEG}/merge_requests", lambda c: _list_mrs(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}/merge_requests/{SEG}", lambda c: dict(_get_mr(gl, c)), "read", False),
        ("POST", rf"/projects/{SEG}/merge_requests", lambda c: _create_mr(gl, c), "write", False),
        ("GET", rf"/projects/{SEG}/merge_requests/{SEG}/notes", lambda c: _list_notes(gl, c), "read", False),
        ("GET", rf"/projects/{SEG}/merge_requests/{SEG}/notes/{SEG}", lambda c: dict(_get_note(gl, c)), "read", False),
        ("POST", rf"/projects/{SEG}/merge_requests/{SEG}/notes", lambda c: _create_note(gl, c), "write", False),
        ("PUT", rf"/projects/{SEG}/merge_requests/{SEG}/notes/{SEG}", lambda c: _update_note(gl, c), "write", False),
        ("DELETE", rf"/projects/{SEG}/merge_requests/{SEG}/notes/{SEG}", lambda c: _delete_note(gl, c), "write", False),
    ]
