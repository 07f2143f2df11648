"""GitLab users (the bots of gitlab.yml) and their personal access tokens: observe, diff, apply."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bidsflux.diagnostics import UserError
from bidsflux.gitlab.reconcile import UNREADABLE, ApplyContext, Change, Observed, Plan, readonly_guard
from bidsflux.gitlab.spec import Desired, utc_today

KINDS = ("user", "token")


def observe(gl: Any, want: Desired, obs: Observed) -> None:
    for u in want.users:
        found = [x for x in gl.users.list(username=u.username, get_all=False) if x.username == u.username]
        obs.users[u.username] = found[0].asdict() if found else None
        if found and u.token:
            listed = readonly_guard(obs, f"tokens of {u.username}", lambda uid=found[0].id: gl.personal_access_tokens.list(
                user_id=uid, state="active", get_all=True))
            if listed is not UNREADABLE:
                obs.tokens[u.username] = [t.asdict() for t in listed if t.name == u.token.name]
    # Token variables are observed with the other instance variables (variables.py).


def days_left(expires_at: str | None) -> float:
    """Whole days until a token's `expires_at` (GitLab's UTC date); infinite when it never expires."""
    if not expires_at:
        return float("inf")
    return (dt.date.fromisoformat(expires_at[:10]) - utc_today()).days


def diff(want: Desired, obs: Observed, plan: Plan) -> None:
    add = plan.changes.append
    for u in want.users:
        live = obs.users.get(u.username)
        if live is None:
            add(Change("create", "user", u.username, {"admin": {"from": None, "to": u.admin}}))
        else:
            d = {}
            if live.get("name") != u.name:
                d["name"] = {"from": live.get("name"), "to": u.name}
            if "is_admin" in live and bool(live["is_admin"]) != u.admin:
                d["admin"] = {"from": bool(live["is_admin"]), "to": u.admin}
            if d:
                add(Change("update", "user", u.username, d))
        if not u.token or (live is not None and u.username not in obs.tokens):
            continue  # no token wanted, or its tokens were not readable with this token (see the note)
        tokens = obs.tokens.get(u.username) or []
        current = max(tokens, key=lambda t: t.get("expires_at") or "9999") if tokens else None
        label = f"{u.username}/{u.token.name}"
        if current is None:
            add(Change("create", "token", label, {"scopes": {"from": None, "to": u.token.scopes}},
                       reason=f"expires in {u.token.expires_in_days} days"))
        elif sorted(current.get("scopes") or []) != sorted(u.token.scopes):
            add(Change("create", "token", label, {"scopes": {"from": sorted(current.get("scopes") or []),
                                                             "to": sorted(u.token.scopes)}},
                       reason="scopes changed: a new token replaces the old one"))
        elif days_left(current.get("expires_at")) <= want.token_warn_days:
            add(Change("rotate", "token", label, {"expires_at": {"from": current.get("expires_at"), "to": None}},
                       reason=f"expires within {want.token_warn_days} days"))
        elif u.token.variable and u.token.variable in obs.variables and obs.variables[u.token.variable] is None:
            add(Change("rotate", "token", label, reason=f"its CI variable {u.token.variable} is missing"))


def apply(gl: Any, c: Change, ctx: ApplyContext) -> None:
    import secrets as pysecrets

    if c.kind == "user":
        u = next(x for x in ctx.want.users if x.username == c.name)
        if c.action == "create":
            gl.users.create({"username": u.username, "name": u.name, "email": u.email, "admin": u.admin,
                             "password": pysecrets.token_urlsafe(24), "skip_confirmation": True})
        else:
            live = gl.users.list(username=u.username, get_all=False)[0]
            gl.users.update(live.id, {"name": u.name, "admin": u.admin})
        return
    username = c.name.split("/", 1)[0]
    u = next(x for x in ctx.want.users if x.username == username)
    if ctx.store is None:
        raise UserError(f"token {c.name}: no place to store its value (TokenStore missing); nothing was created")
    if c.action == "create":
        from bidsflux.gitlab.tokens import create_token

        ctx.result.stored[c.name] = create_token(gl, u, ctx.store)
    else:
        from bidsflux.gitlab.tokens import rotate_token

        ctx.result.stored[c.name] = rotate_token(gl, u, ctx.store)
