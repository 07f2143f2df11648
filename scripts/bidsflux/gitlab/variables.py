"""Instance CI/CD variables of gitlab.yml (and the bots' token variables): observe, diff, apply."""

from __future__ import annotations

from typing import Any

from bidsflux.gitlab.client import get_or_none
from bidsflux.gitlab.reconcile import UNREADABLE, ApplyContext, Change, Observed, Plan, field_changes, readonly_guard
from bidsflux.gitlab.spec import Desired

KINDS = ("variable",)
FLAGS = ("masked", "protected", "raw")


def observe(gl: Any, want: Desired, obs: Observed) -> None:
    keys = [v.key for v in want.variables] + [u.token.variable for u in want.users if u.token and u.token.variable]
    for key in keys:
        var = readonly_guard(obs, f"instance variable {key}", lambda k=key: get_or_none(lambda: gl.variables.get(k)))
        if var is not UNREADABLE:
            obs.variables[key] = var.asdict() if var else None


def diff(want: Desired, obs: Observed, plan: Plan) -> None:
    add = plan.changes.append
    for v in want.variables:
        if v.key not in obs.variables:
            continue  # not readable with this token (read-only plan): see the note
        live = obs.variables[v.key]
        flags = {k: getattr(v, k) for k in FLAGS}
        if live is None:
            if v.value is None:
                plan.notes.append(f"variable {v.key}: its secret value is not available here; create it where the "
                                  "secrets file is (bootstrap) or pass BIDSFLUX_SECRET_<NAME>")
                continue
            add(Change("create", "variable", v.key, {k: {"from": None, "to": x} for k, x in flags.items()}))
            continue
        d = field_changes(live, flags)
        if live.get("variable_type", "env_var") != "env_var":
            d["variable_type"] = {"from": live.get("variable_type"), "to": "env_var"}
        if v.value is not None and live.get("value") != v.value:
            d["value"] = {"from": "(secret)", "to": "(new secret)"} if v.secret or v.masked else {"from": live.get("value"), "to": v.value}
        if d:
            add(Change("update", "variable", v.key, d))


def apply(gl: Any, c: Change, ctx: ApplyContext) -> None:
    v = next(x for x in ctx.want.variables if x.key == c.name)
    attrs: dict[str, Any] = {"masked": v.masked, "protected": v.protected, "raw": v.raw, "variable_type": "env_var"}
    if c.action == "create":
        assert v.value is not None
        gl.variables.create({"key": v.key, "value": v.value, **attrs})
    else:
        if v.value is not None:
            attrs["value"] = v.value
        gl.variables.update(v.key, attrs)


def put_variable(gl: Any, key: str, value: str, masked: bool, protected: bool, raw: bool) -> None:
    """Create or update one instance variable (where a bot token's new value goes)."""
    attrs = {"value": value, "masked": masked, "protected": protected, "raw": raw, "variable_type": "env_var"}
    if get_or_none(lambda: gl.variables.get(key)) is None:
        gl.variables.create({"key": key, **attrs})
    else:
        gl.variables.update(key, attrs)
