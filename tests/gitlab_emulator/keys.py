"""Emulated SSH keys of the token's user (`/user/keys`) and the internal API gitlab-shell calls
(`/internal/authorized_keys`, `/internal/allowed`, `/internal/post_receive`).

Sources: doc/api/user_keys.md (GitLab 17: "Add an SSH key for your account", list, get, delete),
lib/api/users.rb (`post "keys"`: `requires :key, :title`, `optional :expires_at, :usage_type`;
201 with the key, 400 with the model errors), app/models/key.rb (key must parse as an OpenSSH
public key, `fingerprint_sha256` unique: "has already been taken", title required), and
lib/api/internal/base.rb (gitlab-shell's calls, authenticated with the shell secret)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import subprocess
from typing import TYPE_CHECKING, Any

from .model import SEG, Ctx, HTTPError, RouteSpec, iso, member_level, not_found, now

if TYPE_CHECKING:
    from .server import GitLabEmulator

# Key types GitLab accepts by default (app/models/key.rb + Gitlab::SSHPublicKey::TECHNOLOGIES).
KEY_TYPES = {"ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "sk-ecdsa-sha2-nistp256@openssh.com", "sk-ssh-ed25519@openssh.com"}


def ssh_keys(gl: GitLabEmulator) -> dict[int, dict[str, Any]]:
    """Key records by id (kept beside the other state; `_user_id` and `_fingerprint` are private)."""
    return gl.state.__dict__.setdefault("ssh_keys", {})


def _parse_key(text: str) -> tuple[str, bytes] | None:
    """(type, blob) when `text` is an OpenSSH public key whose blob names the same type."""
    parts = text.strip().split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (n,) = struct.unpack(">I", blob[:4])
    except (binascii.Error, struct.error):
        return None
    if blob[4:4 + n].decode(errors="replace") != parts[0]:
        return None
    if parts[0] == "ssh-rsa":
        # Gitlab::SSHPublicKey: RSA keys under 1024 bits are refused ("must be at least 1024 bits").
        (elen,) = struct.unpack(">I", blob[4 + n:8 + n])
        (mlen,) = struct.unpack(">I", blob[8 + n + elen:12 + n + elen])
        if (mlen - 1) * 8 < 1024:
            return None
    return parts[0], blob


def key_public(k: dict[str, Any]) -> dict[str, Any]:
    return {"id": k["id"], "title": k["title"], "created_at": k["created_at"], "expires_at": k["expires_at"],
            "key": k["key"], "usage_type": k["usage_type"]}


def _add_key(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    assert c.user is not None
    # Grape `requires`: a missing parameter is 400 {"error": "<name> is missing"}.
    for name in ("key", "title"):
        if name not in c.params:
            raise HTTPError(400, {"error": f"{name} is missing"})
    errors: dict[str, list[str]] = {}
    title, text = str(c.params["title"]).strip(), str(c.params["key"]).strip()
    if not title:
        errors.setdefault("title", []).append("can't be blank")
    parsed = _parse_key(text)
    forbidden = gl.__dict__.get("forbidden_key_types", set())
    if parsed is None:
        errors.setdefault("key", []).append("is invalid")
    elif parsed[0] in forbidden:
        # app/models/key.rb key_meets_restrictions: an admin restricted this technology
        # (application settings <type>_key_restriction = -1).
        allowed = sorted({"ssh-rsa": "RSA", "ssh-ed25519": "ED25519", "ecdsa-sha2-nistp256": "ECDSA"}[t]
                         for t in ("ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256") if t not in forbidden)
        errors.setdefault("key", []).append(f"type is forbidden. Must be {', or '.join(allowed)}")
    else:
        fingerprint = hashlib.sha256(parsed[1]).hexdigest()
        if any(k["_fingerprint"] == fingerprint for k in ssh_keys(gl).values()):
            errors.setdefault("fingerprint_sha256", []).append("has already been taken")
    usage = str(c.params.get("usage_type", "auth_and_signing"))
    if usage not in ("auth", "signing", "auth_and_signing"):
        raise HTTPError(400, {"error": "usage_type does not have a valid value"})
    if errors:
        raise HTTPError(400, {"message": errors})
    assert parsed is not None
    kid = gl.state.new_id("ssh_key")
    # GitLab stores the key without its comment's trailing whitespace; the type and blob are kept.
    record = {"id": kid, "title": title, "key": text, "created_at": iso(now()),
              "expires_at": c.params.get("expires_at") or None, "usage_type": usage,
              "_user_id": c.user["id"], "_fingerprint": hashlib.sha256(parsed[1]).hexdigest()}
    ssh_keys(gl)[kid] = record
    return key_public(record)


def _own_key(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    assert c.user is not None
    try:
        k = ssh_keys(gl).get(int(c.args[0]))
    except ValueError:
        k = None
    if k is None or k["_user_id"] != c.user["id"]:
        raise not_found("Key")
    return k


def _delete_key(gl: GitLabEmulator, c: Ctx) -> None:
    del ssh_keys(gl)[_own_key(gl, c)["id"]]


# ---- the internal API (gitlab-shell) ------------------------------------------------------------

def _shell_auth(gl: GitLabEmulator, c: Ctx) -> None:
    # lib/api/helpers.rb authenticate_by_gitlab_shell_token!: `secret_token` must equal the
    # instance's .gitlab_shell_secret, otherwise 401.
    given = str(c.params.get("secret_token", ""))
    if not gl.__dict__.get("shell_secret") or not hmac.compare_digest(given, gl.shell_secret):
        raise HTTPError(401, {"message": "401 Unauthorized"})


def _authorized_key(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    _shell_auth(gl, c)
    # GET /internal/authorized_keys?key=<base64 blob>: the key record or 404.
    blob = str(c.params.get("key", ""))
    for k in ssh_keys(gl).values():
        if k["key"].split()[1] == blob:
            return {"id": k["id"], "title": k["title"], "key": " ".join(k["key"].split()[:2])}
    raise not_found("Key")


def _allowed(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    """POST /internal/allowed: may key-<id> run `action` on `project`? (Gitlab::GitAccess)"""
    _shell_auth(gl, c)
    try:
        k = ssh_keys(gl).get(int(str(c.params.get("key_id", ""))))
    except ValueError:
        k = None
    if k is None:
        raise HTTPError(401, {"status": False, "message": "Could not find the given key"})
    user = gl.state.users.get(k["_user_id"])
    path = str(c.params.get("project", "")).removesuffix(".git").strip("/")
    project = gl.project_by_ref(path)
    denied = {"status": False, "message": "The project you were looking for could not be found or you don't have permission to view it."}
    if user is None or user["state"] != "active" or project is None:
        raise HTTPError(404, denied)
    level = member_level(gl, project, user)
    if level < 10 and project["visibility"] == "private":
        raise HTTPError(404, denied)
    if c.params.get("action") == "git-receive-pack" and level < 30:
        raise HTTPError(403, {"status": False, "message": "You are not allowed to push code to this project."})
    repo = gl.git_root / f"{project['id']}.git"
    if not repo.exists():
        subprocess.run(["git", "init", "-q", "--bare", "-b", project["default_branch"] or "main", str(repo)], check=True)
    # GitLab answers gl_repository/gl_project_path/gitaly; the stand-in shell gets a path instead of Gitaly.
    c.status = 200
    return {"status": True, "gl_repository": f"project-{project['id']}", "gl_project_path": project["path_with_namespace"],
            "gl_username": user["username"], "repository_path": str(repo)}


def _post_receive(gl: GitLabEmulator, c: Ctx) -> dict[str, Any]:
    _shell_auth(gl, c)
    pid = int(str(c.params.get("gl_repository", "project-0")).removeprefix("project-"))
    project = gl.state.projects.get(pid)
    if project is not None:
        project["empty_repo"] = False
    c.status = 200
    return {"reference_counter_decreased": True, "messages": []}


def routes(gl: GitLabEmulator) -> list[RouteSpec]:
    """(method, path regex, handler, scope class, admin only) for this module's endpoints."""
    return [
        ("GET", r"/user/keys", lambda c: [key_public(k) for k in ssh_keys(gl).values() if c.user and k["_user_id"] == c.user["id"]], "read_user", False),
        ("POST", r"/user/keys", lambda c: _add_key(gl, c), "write", False),
        ("GET", rf"/user/keys/{SEG}", lambda c: key_public(_own_key(gl, c)), "read_user", False),
        ("DELETE", rf"/user/keys/{SEG}", lambda c: _delete_key(gl, c), "write", False),
        ("GET", r"/internal/authorized_keys", lambda c: _authorized_key(gl, c), "none", False),
        ("POST", r"/internal/allowed", lambda c: _allowed(gl, c), "none", False),
        ("POST", r"/internal/post_receive", lambda c: _post_receive(gl, c), "none", False),
    ]
