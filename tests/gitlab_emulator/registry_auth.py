"""GitLab's container registry token service, `GET /jwt/auth`: a real distribution registry
(Debian's docker-registry) configured with `auth: token` trusts the certificate this emulator signs
with, as GitLab's bundled registry trusts GitLab's (omnibus `registry['internal_key']`).

Sources: app/controllers/jwt_controller.rb (HTTP Basic login with a personal access token through
Gitlab::Auth.find_for_git_client; a failure renders 401 {"errors":[{"code":"UNAUTHORIZED",...}]}),
app/services/auth/container_registry_authentication_service.rb (service `container_registry`,
issuer `omnibus-gitlab-issuer` in omnibus, `repository:<project path>/<image>:pull` granted to users
who can read the project, the token's `access` lists only what was granted), and distribution's
docs/spec/auth/jwt.md and registry/auth/token/token.go (RS256 with a `kid` that is the libtrust key ID
of a key in `rootcertbundle`; `iss`, `aud`, `exp`, `nbf` checked).

Deploy tokens: lib/gitlab/auth.rb `deploy_token_check(login, password, project)` (DeployToken.active
found by the password, the login must equal its username, abilities from its scopes: read_registry ->
:read_container_image, write_registry -> :create_container_image); ContainerRegistryAuthenticationService
grants `pull` to a deploy token only on projects it `has_access_to?` (its own project) with
read_container_image, `push` only with create_container_image; doc/user/packages/container_registry/
authenticate_with_container_registry.md (a deploy token with read_registry pulls)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .model import member_level

if TYPE_CHECKING:
    from .server import GitLabEmulator

SERVICE = "container_registry"
ISSUER = "omnibus-gitlab-issuer"
REGISTRY_SCOPES = {"api", "read_registry"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class SigningKey:
    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gitlab-issuer")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=10))
                .not_valid_after(now + dt.timedelta(days=2)).sign(self.key, hashes.SHA256()))
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        # libtrust's KeyID: SHA-256 of the DER public key, first 240 bits, base32, 12 groups of 4.
        b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
        self.kid = ":".join(b32[i:i + 4] for i in range(0, 48, 4))

    def sign(self, claims: dict[str, Any]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        head = _b64(json.dumps({"typ": "JWT", "alg": "RS256", "kid": self.kid}).encode())
        body = _b64(json.dumps(claims).encode())
        sig = self.key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{head}.{body}.{_b64(sig)}"


def jwt_auth(gl: GitLabEmulator, authorization: str | None, query: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    denied = (401, {"errors": [{"code": "UNAUTHORIZED", "message": "HTTP Basic: Access denied. If a password was "
                                "provided for Git authentication, the password was incorrect or you're required to "
                                "use a token instead of a password."}]})
    if not authorization or not authorization.startswith("Basic "):
        return denied
    try:
        login, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
    except ValueError:
        return denied
    tok = gl.token_record(password)
    if tok is None:
        return _deploy_token_auth(gl, login, password, query, denied)
    user = gl.state.users.get(tok.user_id)
    if not tok.active() or user is None or not (set(tok.scopes) & REGISTRY_SCOPES) \
            or user["username"].lower() != login.lower():
        return denied
    access = []
    for name, actions, project in _requested(gl, query):
        level = member_level(gl, project, user) if project is not None else 0
        granted = [a for a in actions if (a == "pull" and (level >= 20 or (project or {}).get("visibility")
                                                           != "private")) or (a == "push" and level >= 30)]
        if project is not None and granted:
            access.append({"type": "repository", "name": name, "actions": granted})
    return _token(gl, user["username"], query, access)


def _requested(gl: GitLabEmulator, query: dict[str, Any]) -> Iterator[tuple[str, list[str], dict[str, Any] | None]]:
    """The repository scopes a client asks for (`scope=repository:<path>:pull,push`, space separated),
    each with its project: the path's parent, or the path itself for an image at a project's root."""
    for scope in str(query.get("scope") or "").split():
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not name:
            continue
        yield name, actions.split(","), gl.project_by_ref(name.rpartition("/")[0]) or gl.project_by_ref(name)


def _token(gl: GitLabEmulator, subject: str, query: dict[str, Any], access: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """The registry token the registry verifies with GitLab's signing key: valid for 5 minutes."""
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": subject, "aud": str(query.get("service") or SERVICE), "iat": now,
              "nbf": now - 5, "exp": now + 300, "jti": secrets.token_hex(16), "access": access}
    return 200, {"token": gl.registry_signing_key().sign(claims)}


def _deploy_token_auth(gl: GitLabEmulator, login: str, password: str, query: dict[str, Any],
                       denied: tuple[int, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    from .deploy_tokens import find_by_value

    tok = find_by_value(gl, password)
    if tok is None or not login or login != tok.username:  # exact match, as deploy_token_check compares
        return denied
    may = {"pull": "read_registry" in tok.scopes, "push": "write_registry" in tok.scopes}
    access = []
    for name, actions, project in _requested(gl, query):
        if project is None or project["id"] != tok.project_id:
            continue  # has_access_to?: only the token's own project
        granted = [a for a in actions if may.get(a)]
        if granted:
            access.append({"type": "repository", "name": name, "actions": granted})
    return _token(gl, tok.username, query, access)
