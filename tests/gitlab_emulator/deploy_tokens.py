"""Project deploy tokens: `GET|POST /projects/:id/deploy_tokens`, `GET|DELETE /projects/:id/deploy_tokens/:token_id`.

Sources (GitLab 17): lib/api/deploy_tokens.rb (maintainer-only `authorize!(:create_deploy_token|
:read_deploy_token|:destroy_deploy_token, user_project)`; `name` and `scopes` required, scopes among
DeployToken::AVAILABLE_SCOPES, optional `expires_at` and `username`, the `active` list filter; create
presents Entities::DeployTokenWithToken, the only answer carrying `token`; delete answers 204),
lib/api/entities/deploy_token.rb (id, name, username, expires_at, revoked, expired, scopes),
app/models/deploy_token.rb (`gldt-` prefix, default username `gitlab+deploy-token-{id}`, username
format, at least one scope, `active` = not revoked and not expired), doc/api/deploy_tokens.md.
DestroyService deletes the token: a deleted token no longer authenticates anywhere."""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .model import SEG, Ctx, HTTPError, RouteSpec, as_bool, as_list, iso, now, require
from .projects import get_project

if TYPE_CHECKING:
    from .server import GitLabEmulator

# DeployToken::AVAILABLE_SCOPES (app/models/deploy_token.rb)
AVAILABLE_SCOPES = ("read_repository", "read_registry", "write_registry", "read_package_registry",
                    "write_package_registry", "read_virtual_registry", "write_virtual_registry")
USERNAME = re.compile(r"\A[a-zA-Z0-9.+_-]+\Z")


@dataclass
class DeployToken:
    id: int
    project_id: int
    name: str
    username: str
    scopes: list[str]
    value: str
    expires_at: dt.datetime | None
    revoked: bool = False

    def expired(self) -> bool:
        # DeployToken#expired?: expires_at < Date.today
        return self.expires_at is not None and self.expires_at.date() < now().date()

    def active(self) -> bool:
        return not self.revoked and not self.expired()

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "username": self.username, "expires_at": iso(self.expires_at),
                "revoked": self.revoked, "expired": self.expired(), "scopes": list(self.scopes)}


def _tokens(gl: GitLabEmulator) -> dict[int, DeployToken]:
    return gl.state.deploy_tokens


def find_by_value(gl: GitLabEmulator, value: str) -> DeployToken | None:
    """DeployToken.active.find_by_token(password) (lib/gitlab/auth.rb deploy_token_check)."""
    return next((t for t in _tokens(gl).values() if t.value == value and t.active()), None)


def _list(gl: GitLabEmulator, c: Ctx) -> list[Any]:
    p = get_project(gl, c, c.args[0], level=40)
    out = [t for t in _tokens(gl).values() if t.project_id == p["id"]]
    if "active" in c.params:
        want = as_bool(c.params["active"])
        out = [t for t in out if t.active() == want]
    return [t.public() for t in out]


def _create(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    p = get_project(gl, c, c.args[0], level=40)
    require(c, "name", "scopes")
    scopes = as_list(c.params["scopes"])
    if any(s not in AVAILABLE_SCOPES for s in scopes):
        raise HTTPError(400, {"error": "scopes does not have a valid value"})  # Grape `values:` validation
    expires: dt.datetime | None = None
    if c.params.get("expires_at") not in (None, ""):
        try:
            expires = dt.datetime.fromisoformat(str(c.params["expires_at"]).replace("Z", "+00:00"))
        except ValueError:
            raise HTTPError(400, {"error": "expires_at is invalid"}) from None
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.UTC)
    username = c.params.get("username") or None
    errors = []
    if username is not None and (len(str(username)) > 255 or not USERNAME.match(str(username))):
        errors.append("Username can contain only letters, digits, '_', '-', '+', and '.'")
    if not scopes:
        errors.append("Scopes can't be blank")
    if errors:
        # CreateService answers the model's errors; the API renders them with render_api_error!(msg, 400).
        raise HTTPError(400, {"message": ", ".join(errors)})
    tid = gl.state.new_id("deploy_token")
    tok = DeployToken(tid, p["id"], str(c.params["name"]), str(username or f"gitlab+deploy-token-{tid}"),
                      [s for s in AVAILABLE_SCOPES if s in scopes], "gldt-" + secrets.token_urlsafe(15), expires)
    _tokens(gl)[tid] = tok
    return {**tok.public(), "token": tok.value}


def _one(gl: GitLabEmulator, c: Ctx, level: int) -> DeployToken:
    p = get_project(gl, c, c.args[0], level=level)
    tok = _tokens(gl).get(int(c.args[1])) if c.args[1].isdigit() else None
    if tok is None or tok.project_id != p["id"]:
        raise HTTPError(404, {"message": "404 Not found"})  # project.deploy_tokens.find -> RecordNotFound
    return tok


def _delete(gl: GitLabEmulator, c: Ctx) -> None:
    tok = _one(gl, c, 40)
    del _tokens(gl)[tok.id]
    return None


def routes(gl: GitLabEmulator) -> list[RouteSpec]:
    return [
        ("GET", rf"/projects/{SEG}/deploy_tokens", lambda c: _list(gl, c), "read", False),
        ("POST", rf"/projects/{SEG}/deploy_tokens", lambda c: _create(gl, c), "write", False),
        ("GET", rf"/projects/{SEG}/deploy_tokens/{SEG}", lambda c: _one(gl, c, 40).public(), "read", False),
        ("DELETE", rf"/projects/{SEG}/deploy_tokens/{SEG}", lambda c: _delete(gl, c), "write", False),
    ]
