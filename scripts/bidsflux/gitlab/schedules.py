"""Pipeline schedules of gitlab.yml and their variables: observe, diff, apply (after the first push)."""

from __future__ import annotations

from typing import Any

from bidsflux.diagnostics import UserError
from bidsflux.gitlab.reconcile import ApplyContext, Change, Observed, Plan, field_changes
from bidsflux.gitlab.spec import Desired, full_ref

KINDS = ("schedule", "schedule_variable")


def observe(gl: Any, want: Desired, obs: Observed) -> None:
    for path in {s.project for s in want.schedules}:
        proj = obs.handles.get(path)  # read by projects.py; a missing project has no schedules
        if proj is None:
            continue
        live = {s.description: s for s in proj.pipelineschedules.list(get_all=True)}
        for s in [s for s in want.schedules if s.project == path]:
            hit = live.get(s.name)
            obs.schedules[s.name] = proj.pipelineschedules.get(hit.id).asdict() if hit else None


def diff(want: Desired, obs: Observed, plan: Plan) -> None:
    add = plan.changes.append
    for s in want.schedules:
        live = obs.schedules.get(s.name)
        if live is None:
            add(Change("create", "schedule", s.name, {"cron": {"from": None, "to": s.cron}, "ref": {"from": None, "to": s.ref}}))
            for k in s.variables:
                add(Change("create", "schedule_variable", f"{s.name}:{k}"))
            continue
        d = field_changes(live, {"cron": s.cron})
        # GitLab stores the ref expanded (Ci::PipelineSchedule#expand_short_ref): compare expanded.
        if full_ref(str(live.get("ref") or "")) != full_ref(s.ref):
            d["ref"] = {"from": live.get("ref"), "to": s.ref}
        if not live.get("active", True):
            d["active"] = {"from": False, "to": True}
        if d:
            add(Change("update", "schedule", s.name, d))
        live_vars = {x["key"]: x.get("value") for x in live.get("variables") or []}
        for k, val in s.variables.items():
            if k not in live_vars:
                add(Change("create", "schedule_variable", f"{s.name}:{k}", {"value": {"from": None, "to": val}}))
            elif live_vars[k] != val:
                add(Change("update", "schedule_variable", f"{s.name}:{k}", {"value": {"from": live_vars[k], "to": val}}))
        for k in live_vars.keys() - s.variables.keys():
            add(Change("delete", "schedule_variable", f"{s.name}:{k}"))


def apply(gl: Any, c: Change, ctx: ApplyContext) -> None:
    name, _, key = c.name.partition(":")
    s = next(x for x in ctx.want.schedules if x.name == name)
    proj = gl.projects.get(s.project)
    if c.kind == "schedule" and c.action == "create":
        if proj.empty_repo:
            # GitLab 17 refuses a schedule whose ref does not exist (base_save_service.rb, "is ambiguous").
            raise UserError(f"schedule {s.name}: project {s.project} has no branch {s.ref} yet; push the repository "
                            "first (bootstrap does, then creates the schedules), then re-run `bidsflux gitlab apply`")
        proj.pipelineschedules.create({"description": s.name, "ref": s.ref, "cron": s.cron,
                                       "cron_timezone": "UTC", "active": True})
        return
    live = next(x for x in proj.pipelineschedules.list(get_all=True) if x.description == s.name)
    if c.kind == "schedule":
        proj.pipelineschedules.update(live.id, {"cron": s.cron, "ref": s.ref, "active": True})
        return
    sched = proj.pipelineschedules.get(live.id, lazy=True)
    if c.action == "create":
        sched.variables.create({"key": key, "value": s.variables[key]})
    elif c.action == "update":
        sched.variables.update(key, {"value": s.variables[key]})
    else:
        sched.variables.delete(key)
