"""Emulated users and personal access tokens (create, list, rotate, revoke)."""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any

from .model import (
    SCOPES,
    SEG,
    Ctx,
    HTTPError,
    RouteSpec,
    Token,
    as_bool,
    as_list,
    not_found,
    now,
    paginate,
    require,
)

if TYPE_CHECKING:
    from .server import GitLabEmulator


def user_public(user: dict[str, Any] | None, full: bool = False) -> dict[str, Any]:
    if user is None:
        raise HTTPError(401, {"message": "401 Unauthorized"})
    keys = ["id", "username", "name", "state", "avatar_url", "web_url", "bot", "created_at"]
    if full:
        keys += ["email", "is_admin", "projects_limit", "can_create_group", "can_create_project", "external"]
    return {k: user[k] for k in keys}


def _get_user(gl: GitLabEmulator, ref: str) -> dict[str, Any]:
    user = gl.state.users.get(int(ref)) if ref.isdigit() else None
    if user is None:
        raise not_found("User")
    return user


def _list_users(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    users = list(gl.state.users.values())
    if "username" in c.params:
        users = [u for u in users if u["username"].lower() == str(c.params["username"]).lower()]
    if "search" in c.params:
        s = str(c.params["search"]).lower()
        users = [u for u in users if s in u["username"].lower() or s in u["name"].lower() or s in u["email"].lower()]
    full = bool(c.user and c.user["is_admin"])
    return paginate(c, [user_public(u, full) for u in users])


def _create_user(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    require(c, "email", "username", "name")
    if not any(c.params.get(k) for k in ("password", "reset_password", "force_random_password")):
        raise HTTPError(400, {"error": "password, reset_password, force_random_password are missing, at least one parameter must be provided"})
    if gl.user_by_username(str(c.params["username"])):
        raise HTTPError(409, {"message": "Username has already been taken"})
    if any(u["email"].lower() == str(c.params["email"]).lower() for u in gl.state.users.values()):
        raise HTTPError(409, {"message": "Email has already been taken"})
    if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", str(c.params["username"])):
        raise HTTPError(400, {"message": {"username": ["can contain only letters, digits, '_', '-' and '.'"]}})
    user = gl.add_user(str(c.params["username"]), str(c.params["name"]), str(c.params["email"]),
                        admin=as_bool(c.params.get("admin", False)))
    return user_public(user, full=True)


def _update_user(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    user = _get_user(gl, c.args[0])
    for k in ("name", "email"):
        if k in c.params:
            user[k] = str(c.params[k])
    if "admin" in c.params:
        user["is_admin"] = as_bool(c.params["admin"])
    return user_public(user, full=True)


def _delete_user(gl: GitLabEmulator, c: Ctx) -> None:
    user = _get_user(gl, c.args[0])
    del gl.state.users[user["id"]]
    for t in gl.state.tokens.values():
        if t.user_id == user["id"]:
            t.revoked = True
    return None


def _parse_date(value: Any, field_name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise HTTPError(400, {"error": f"{field_name} is invalid"}) from exc


def _expiry(c: Ctx, default_days: int) -> dt.date:
    if c.params.get("expires_at"):
        exp = _parse_date(c.params["expires_at"], "expires_at")
    else:
        exp = now().date() + dt.timedelta(days=default_days)
    # app/models/personal_access_token.rb expires_at_before_instance_max_expiry_date:
    # max = Date.current.advance(days: 365); Date.current is the server's date in UTC.
    limit = now().date() + dt.timedelta(days=365)
    if exp > limit:
        raise HTTPError(400, {"message": {"expires_at": [f"must be before {limit.isoformat()}"]}})
    if exp <= now().date():
        raise HTTPError(400, {"message": {"expires_at": ["must be in the future"]}})
    return exp


def _create_pat(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    user = _get_user(gl, c.args[0])
    require(c, "name", "scopes")
    scopes = as_list(c.params["scopes"])
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise HTTPError(400, {"error": "scopes does not have a valid value"})
    tok = gl.mint(user["id"], str(c.params["name"]), scopes, _expiry(c, 365))
    tok.description = str(c.params.get("description") or "")
    return {**tok.public(), "token": tok.value}


def _visible_tokens(gl: GitLabEmulator, c: Ctx) -> list[Token]:
    assert c.user is not None
    tokens = list(gl.state.tokens.values())
    if not c.user["is_admin"]:
        if "user_id" in c.params and str(c.params["user_id"]) != str(c.user["id"]):
            raise HTTPError(401, {"message": "401 Unauthorized"})
        tokens = [t for t in tokens if t.user_id == c.user["id"]]
    return tokens


def _list_pats(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    tokens = _visible_tokens(gl, c)
    p = c.params
    if "user_id" in p:
        tokens = [t for t in tokens if str(t.user_id) == str(p["user_id"])]
    if "state" in p:
        want_active = p["state"] == "active"
        tokens = [t for t in tokens if t.active() == want_active]
    if "revoked" in p:
        tokens = [t for t in tokens if t.revoked == as_bool(p["revoked"])]
    if "search" in p:
        tokens = [t for t in tokens if str(p["search"]).lower() in t.name.lower()]
    return paginate(c, [t.public() for t in tokens])


def _get_pat(gl: GitLabEmulator, c: Ctx, ref: str) -> Token:
    tok = gl.state.tokens.get(int(ref)) if ref.isdigit() else None
    assert c.user is not None
    if tok is None or not (c.user["is_admin"] or tok.user_id == c.user["id"]):
        raise not_found("Personal Access Token" if c.user["is_admin"] else "")
    return tok


def _rotate(gl: GitLabEmulator, c: Ctx, ref: str) -> dict[str, Any]:
    assert c.token is not None and c.user is not None
    if ref == "self":
        if not ({"api", "self_rotate"} & set(c.token.scopes)):
            raise HTTPError(403, {"message": "403 Forbidden"})
        old = c.token
    else:
        tok = gl.state.tokens.get(int(ref)) if ref.isdigit() else None
        if tok is None:
            if c.user["is_admin"]:
                raise not_found("")
            raise HTTPError(401, {"message": "401 Unauthorized"})
        if not (c.user["is_admin"] or tok.user_id == c.user["id"]):
            raise HTTPError(401, {"message": "401 Unauthorized"})
        old = tok
    if not old.active():
        raise HTTPError(400, {"message": "400 Bad request - Token already revoked" if old.revoked
                              else "400 Bad request - Token expired"})
    try:
        exp = _expiry(c, 7)  # rotate_service.rb: no expires_at -> 1.week.from_now
    except HTTPError as exc:
        # lib/api/helpers/personal_access_tokens_helpers.rb rotate_token: bad_request!(service.message),
        # the model error as a full message ("Expiration date" is how expires_at humanises).
        msg = exc.body.get("message") if isinstance(exc.body, dict) else None
        if isinstance(msg, dict) and "expires_at" in msg:
            raise HTTPError(400, {"message": f"400 Bad request - Expiration date {msg['expires_at'][0]}"}) from None
        raise
    old.revoked = True
    new = gl.mint(old.user_id, old.name, old.scopes, exp, family=old.family)
    new.description = old.description
    old.rotated_to = new.id
    c.status = 200
    return {**new.public(), "token": new.value}


def _revoke(gl: GitLabEmulator, c: Ctx, ref: str) -> None:
    assert c.token is not None
    tok = c.token if ref == "self" else _get_pat(gl, c, ref)
    if tok.revoked:
        raise HTTPError(400, {"message": "400 Bad request - Token already revoked"})
    tok.revoked = True
    return None


def routes(gl: GitLabEmulator) -> list[RouteSpec]:
    """(method, path regex, handler, scope class, admin only) for this module's endpoints."""
    return [
        ("GET", r"/user", lambda c: user_public(c.user, full=True), "read_user", False),
        ("GET", r"/users", lambda c: _list_users(gl, c), "read_user", False),
        ("GET", rf"/users/{SEG}", lambda c: user_public(_get_user(gl, c.args[0]), full=bool(c.user and c.user["is_admin"])), "read_user", False),
        ("POST", r"/users", lambda c: _create_user(gl, c), "write", True),
        ("DELETE", rf"/users/{SEG}", lambda c: _delete_user(gl, c), "write", True),
        ("PUT", rf"/users/{SEG}", lambda c: _update_user(gl, c), "write", True),
        ("POST", rf"/users/{SEG}/personal_access_tokens", lambda c: _create_pat(gl, c), "write", True),
        ("GET", r"/personal_access_tokens", lambda c: _list_pats(gl, c), "read", False),
        ("GET", r"/personal_access_tokens/self", lambda c: c.token.public() if c.token else None, "any", False),
        ("POST", r"/personal_access_tokens/self/rotate", lambda c: _rotate(gl, c, "self"), "self_rotate", False),
        ("DELETE", r"/personal_access_tokens/self", lambda c: _revoke(gl, c, "self"), "any", False),
        ("GET", rf"/personal_access_tokens/{SEG}", lambda c: _get_pat(gl, c, c.args[0]).public(), "read", False),
        ("POST", rf"/personal_access_tokens/{SEG}/rotate", lambda c: _rotate(gl, c, c.args[0]), "write", False),
        ("DELETE", rf"/personal_access_tokens/{SEG}", lambda c: _revoke(gl, c, c.args[0]), "write", False),
    ]
