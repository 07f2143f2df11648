"""Bot tokens: created, rotated once and never replayed, and stored (values file, docker secret, CI variable) before use."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from bidsflux.diagnostics import UserError, clip
from bidsflux.gitlab.objects import UserSpec, put_variable, scrub

# ---------------------------------------------------------------------------------- token storage


class TokenStore:
    """Where a bot token's new value goes, in this order, before it is used for anything.

    1. the root-only values file (site.yml secrets.file) when one is configured and writable;
    2. a new version of the token's docker secret (token.secret) when it names one;
    3. the masked, protected instance CI variable (token.variable) when it names one.
    A failure in any step raises; the caller decides what to undo."""

    def __init__(self, gl: Any, stack: str, values_file: str | None,
                 docker_client: Callable[[], Any] | None = None) -> None:
        self.gl, self.stack, self.values_file = gl, stack, values_file
        self._docker = docker_client
        self.stored: list[str] = []

    def key(self, user: UserSpec) -> str:
        assert user.token is not None
        return user.token.secret or f"gitlab_token_{user.key}"

    def store(self, user: UserSpec, value: str, token_id: int) -> list[str]:
        from bidsflux.swarm import secretstore

        assert user.token is not None
        done: list[str] = []
        if self.values_file:
            secretstore.write_values_file(self.values_file, {self.key(user): value, f"{self.key(user)}_id": str(token_id)})
            done.append(f"values file {self.values_file}")
        if user.token.secret:
            client = (self._docker or secretstore.docker_client)()
            version = live_version(client, self.stack, user.token.secret) + 1
            name = secretstore.create_secret(client, self.stack, user.token.secret, version, value)
            done.append(f"docker secret {self.stack}_{user.token.secret}_v{version} ({name[:12]})")
        if user.token.variable:
            put_variable(self.gl, user.token.variable, value, masked=True, protected=user.token.variable_protected,
                         raw=True)
            done.append(f"CI variable {user.token.variable}")
        self.stored = done
        return done


def live_version(client: Any, stack: str, logical: str) -> int:
    from bidsflux.swarm import secretstore

    versions = [int((s.attrs["Spec"].get("Labels") or {}).get(secretstore.LABEL_VERSION, 0))
                for s in client.secrets.list(filters={"label": [f"{secretstore.LABEL_STACK}={stack}",
                                                                f"{secretstore.LABEL_SECRET}={logical}"]})]
    return max(versions, default=0)


def expiry_date(days: int) -> str:
    """GitLab validates expires_at against Date.current in UTC (max today + 365 days), not local time."""
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)).isoformat()


def use_token(gl: Any, value: str) -> None:
    """Switch the python-gitlab client to `value` (after rotating the token it was using)."""
    gl.private_token = value
    gl._set_auth_info()  # python-gitlab keeps the token in a requests auth object built from private_token


def own_token_id(gl: Any) -> int | None:
    """Id of the token this client authenticates with (GET /personal_access_tokens/self)."""
    try:
        return int(gl.personal_access_tokens.get("self").id)
    except Exception:  # noqa: BLE001 - not a personal access token (OAuth, job token): never ours to rotate
        return None


def create_token(gl: Any, user: UserSpec, store: TokenStore) -> list[str]:
    """Create the bot's token and store it. If storing fails the new token is revoked again, so a
    re-run starts from the same state (no token whose value nobody holds)."""
    assert user.token is not None
    live = gl.users.list(username=user.username, get_all=False)[0]
    old = [t for t in gl.personal_access_tokens.list(user_id=live.id, state="active", get_all=True)
           if t.name == user.token.name]
    created = gl.users.get(live.id, lazy=True).personal_access_tokens.create(
        {"name": user.token.name, "scopes": user.token.scopes, "expires_at": expiry_date(user.token.expires_in_days)})
    value, token_id = created.token, created.id
    try:
        where = store.store(user, value, token_id)
    except BaseException as exc:
        try:
            gl.personal_access_tokens.delete(token_id)
        except Exception:  # noqa: BLE001 - report the storing failure, which matters more
            pass
        raise UserError(f"token {user.username}/{user.token.name} was created but could not be stored "
                        f"({clip(scrub(str(exc), [value]), 200)}); it was revoked again, fix the store and re-run") from None
    # Tokens it replaces (another scope set, or a value nobody holds) stop working only now.
    for t in old:
        gl.personal_access_tokens.delete(t.id)
    return where


class RotationUnknown(UserError):
    """A rotation request whose outcome is unknown: it must not be retried blindly."""


def rotate_token(gl: Any, user: UserSpec, store: TokenStore) -> list[str]:
    """Rotate the bot's current token with GitLab's rotate API and store the new value first.

    The rotation is sent once: python-gitlab's retries are off, and an ambiguous failure (no
    answer, 5xx) raises RotationUnknown instead of trying again, because GitLab revokes the
    whole token family when a rotated token is presented again."""
    import gitlab
    import requests

    assert user.token is not None
    live = gl.users.list(username=user.username, get_all=False)
    if not live:
        raise UserError(f"user {user.username} does not exist in GitLab; run `bidsflux gitlab apply` first")
    tokens = [t for t in gl.personal_access_tokens.list(user_id=live[0].id, state="active", get_all=True)
              if t.name == user.token.name]
    if not tokens:
        return create_token(gl, user, store)
    current = max(tokens, key=lambda t: t.expires_at or "9999")
    rotating_own = own_token_id(gl) == current.id
    try:
        new = gl.personal_access_tokens.rotate(current.id, expires_at=expiry_date(user.token.expires_in_days),
                                               retry_transient_errors=False, obey_rate_limit=False, max_retries=0)
    except gitlab.GitlabError as exc:
        if exc.response_code is not None and exc.response_code < 500:
            raise UserError(f"GitLab refused to rotate token {user.username}/{user.token.name} "
                            f"({exc.response_code}: {clip(scrub(str(exc.error_message), []), 200)}); nothing changed") from None
        raise RotationUnknown(unknown_outcome(user, f"GitLab answered {exc.response_code}")) from None
    except requests.exceptions.RequestException as exc:
        raise RotationUnknown(unknown_outcome(user, type(exc).__name__)) from None
    value, token_id = new["token"], new["id"]
    if rotating_own:
        # GitLab revoked the token this client uses the moment it rotated it (rotate_service.rb,
        # revoke! then create in one transaction): every further request, starting with storing the
        # new value in the CI variable, must carry the new token or it gets 401 and the value is lost.
        use_token(gl, value)
    try:
        return store.store(user, value, token_id)
    except BaseException as exc:
        raise UserError(
            f"token {user.username}/{user.token.name} was rotated (new id {token_id}) but storing it failed after "
            f"{', '.join(store.stored) or 'no store'}: {clip(scrub(str(exc), [value]), 200)}. The old token is revoked; "
            f"fix the store and run `bidsflux gitlab tokens rotate {user.key}` (it rotates the new token, "
            "not the old one)") from None


def unknown_outcome(user: UserSpec, why: str) -> str:
    assert user.token is not None
    return (f"rotation of token {user.username}/{user.token.name} has an unknown outcome ({why}); it was NOT "
            "retried, because GitLab revokes the whole token family when a rotated token is replayed. Check with "
            f"`bidsflux gitlab plan`, then run `bidsflux gitlab tokens rotate {user.key}` once: it rotates whichever "
            "token is current now")


