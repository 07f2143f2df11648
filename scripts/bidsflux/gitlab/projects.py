"""GitLab projects of gitlab.yml with their protected branches, and the import_sources setting imports need."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bidsflux.gitlab.client import get_or_none
from bidsflux.gitlab.reconcile import UNREADABLE, ApplyContext, Change, Observed, Plan, field_changes, readonly_guard
from bidsflux.gitlab.spec import ACCESS_NAMES, Desired, is_url
from bidsflux.redact import strip_url_credentials

KINDS = ("setting", "project", "protected_branch")


def _levels(pb: Mapping[str, Any], key: str) -> int:
    levels = [x.get("access_level") for x in pb.get(key) or [] if x.get("user_id") is None and x.get("group_id") is None]
    return int(levels[0]) if levels else 0


def observe(gl: Any, want: Desired, obs: Observed) -> None:
    for p in want.projects:
        proj = get_or_none(lambda path=p.path: gl.projects.get(path))
        obs.projects[p.path] = proj.asdict() if proj else None
        if proj is None:
            continue
        obs.handles[p.path] = proj
        if p.protected_branches:
            obs.protected[p.path] = {pb.name: {"push": _levels(pb.asdict(), "push_access_levels"),
                                               "merge": _levels(pb.asdict(), "merge_access_levels")}
                                     for pb in proj.protectedbranches.list(get_all=True)}
    if any(is_url(p.mirror_from) and obs.projects.get(p.path) is None for p in want.projects):
        settings = readonly_guard(obs, "application settings", gl.settings.get)
        if settings is not UNREADABLE:
            obs.import_sources = list(settings.asdict().get("import_sources") or [])


def _pb_details(live: Mapping[str, int] | None, want: Mapping[str, int]) -> dict[str, Any]:
    return {k: {"from": ACCESS_NAMES.get(live[k], live[k]) if live else None, "to": ACCESS_NAMES[want[k]]}
            for k in ("push", "merge") if not live or live[k] != want[k]}


def diff(want: Desired, obs: Observed, plan: Plan) -> None:
    add = plan.changes.append
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
                # A mirror URL may carry credentials (https://user:token@host/...): plans never show them.
                d["import_url" if is_url(p.mirror_from) else "pushed_from"] = {"from": None,
                                                                               "to": strip_url_credentials(p.mirror_from)}
            d.update({k: {"from": None, "to": v} for k, v in p.settings.items()})
            add(Change("create", "project", p.path, d))
            for b, lv in p.protected_branches.items():
                add(Change("create", "protected_branch", f"{p.path}:{b}", _pb_details(None, lv)))
            continue
        if d := field_changes(live, p.settings):
            add(Change("update", "project", p.path, d))
        live_pbs = obs.protected.get(p.path, {})
        for b, lv in p.protected_branches.items():
            if b not in live_pbs:
                add(Change("create", "protected_branch", f"{p.path}:{b}", _pb_details(None, lv)))
            elif live_pbs[b] != lv:
                add(Change("update", "protected_branch", f"{p.path}:{b}", _pb_details(live_pbs[b], lv)))


def apply(gl: Any, c: Change, ctx: ApplyContext) -> None:
    if c.kind == "setting":
        live = list(gl.settings.get().asdict().get("import_sources") or [])
        if "git" not in live:  # PUT replaces the whole list: keep what the admin enabled
            gl.settings.update(new_data={"import_sources": [*live, "git"]})
        return
    if c.kind == "protected_branch":
        path, _, branch = c.name.rpartition(":")
        lv = next(x for x in ctx.want.projects if x.path == path).protected_branches[branch]
        proj = gl.projects.get(path)
        if c.action == "update":
            proj.protectedbranches.delete(branch)
        proj.protectedbranches.create({"name": branch, "push_access_level": lv["push"], "merge_access_level": lv["merge"]})
        return
    p = next(x for x in ctx.want.projects if x.path == c.name)
    if c.action != "create":
        gl.projects.update(c.name, {k: p.settings[k] for k in c.details})
        return
    ns, _, leaf = c.name.rpartition("/")
    data = {"name": leaf, "path": leaf, "namespace_id": gl.groups.get(ns).id, **p.settings}
    if is_url(p.mirror_from):
        from bidsflux.gitlab.imports import create_imported

        create_imported(gl, c.name, data, str(p.mirror_from))
        return
    created = gl.projects.create(data)
    if p.mirror_from:  # a local clone or bundle: pushed, which works offline
        from bidsflux.gitlab.imports import push_local

        push_local(str(p.mirror_from), created.http_url_to_repo, ctx.token or gl.private_token)
