"""A first admin token without a browser: minted and revoked with `gitlab-rails runner` in the GitLab task.

The admin token is minted by `gitlab-rails runner` inside the running GitLab task (docker exec
through docker-py). Its value is chosen here and handed over in the exec's environment, never on
a command line; it lives in this process's memory only and is revoked (again through
gitlab-rails, which needs no token) when the `root_token` block ends, even on failure."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bidsflux.diagnostics import UserError, clip
from bidsflux.gitlab.objects import (
    scrub,
)

BOOTSTRAP_TOKEN_NAME = "bidsflux-bootstrap"
ROOT_SCOPES = ("api", "sudo", "admin_mode", "create_runner", "manage_runner")

# Constant Ruby: every input comes from the exec's environment, so nothing secret is in argv.
MINT_RUBY = (
    "user = User.find_by_username(ENV.fetch('BIDSFLUX_ROOT_USER')); "
    "raise 'no such user' unless user; "
    "token = user.personal_access_tokens.new(name: ENV.fetch('BIDSFLUX_TOKEN_NAME'), "
    "scopes: ENV.fetch('BIDSFLUX_TOKEN_SCOPES').split(','), "
    "expires_at: Date.today + ENV.fetch('BIDSFLUX_TOKEN_DAYS').to_i); "
    "token.set_token(ENV.fetch('BIDSFLUX_TOKEN')); token.save!; "
    "puts \"bidsflux-token-id=#{token.id}\""
)
# Only the token this run minted (by id, and still carrying our name): another admin may keep a
# token of the same name on purpose.
REVOKE_RUBY = (
    "n = 0; PersonalAccessToken.active.where(id: ENV.fetch('BIDSFLUX_TOKEN_ID').split(',').map(&:to_i), "
    "name: ENV.fetch('BIDSFLUX_TOKEN_NAME')).each { |t| t.revoke!; n += 1 }; "
    "puts \"bidsflux-revoked=#{n}\""
)


def find_gitlab_container(client: Any, stack: str, service: str = "gitlab") -> Any:
    """The running container of the `<stack>_<service>` swarm task on this node."""
    from docker.errors import DockerException

    label = f"com.docker.swarm.service.name={stack}_{service}"
    try:
        found = client.containers.list(filters={"label": label, "status": "running"})
    except DockerException as exc:
        raise UserError(f"cannot list containers: {clip(str(exc).splitlines()[0], 200)}") from None
    if not found:
        raise UserError(f"no running container of service {stack}_{service} on this node; run this on the node "
                        "that runs GitLab (the data role) once `bidsflux deploy` has started it")
    return found[0]


def _rails(container: Any, ruby: str, env: Mapping[str, str], secret: str | None = None) -> str:
    from docker.errors import DockerException

    try:
        code, output = container.exec_run(["gitlab-rails", "runner", ruby], environment=dict(env))
    except DockerException as exc:
        raise UserError(f"cannot run gitlab-rails in {container.name}: {clip(scrub(str(exc), [secret or '']), 200)}") from None
    text = (output or b"").decode(errors="replace")
    if code != 0:
        last = clip(scrub(text.strip().splitlines()[-1] if text.strip() else f"exit {code}", [secret or ""]), 300)
        raise UserError(f"gitlab-rails runner failed in {container.name}: {last}; is GitLab fully started? "
                        "(bidsflux health, or wait for /-/readiness)")
    return text


@dataclass
class RootToken:
    value: str = field(repr=False)
    id: int
    expires_at: str

    def __str__(self) -> str:  # never the value
        return f"admin token #{self.id} (expires {self.expires_at})"


def mint_root_token(container: Any, days: int = 1, user: str = "root", name: str = BOOTSTRAP_TOKEN_NAME) -> RootToken:
    value = "glpat-" + secrets.token_urlsafe(20)
    env = {"BIDSFLUX_ROOT_USER": user, "BIDSFLUX_TOKEN_NAME": name, "BIDSFLUX_TOKEN_SCOPES": ",".join(ROOT_SCOPES),
           "BIDSFLUX_TOKEN_DAYS": str(days), "BIDSFLUX_TOKEN": value}
    out = _rails(container, MINT_RUBY, env, value)
    ids = [line.split("=", 1)[1] for line in out.splitlines() if line.startswith("bidsflux-token-id=")]
    if not ids or not ids[0].strip().isdigit():
        raise UserError(f"gitlab-rails in {container.name} did not report the new token; nothing to use")
    # Date.today in the Ruby above is the GitLab server's date (UTC in the omnibus image).
    return RootToken(value, int(ids[0]), (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)).isoformat())


def revoke_root_tokens(container: Any, ids: list[int], name: str = BOOTSTRAP_TOKEN_NAME) -> int:
    """Revoke the bootstrap tokens with these ids (the ones this tool minted), nothing else."""
    if not ids:
        return 0
    out = _rails(container, REVOKE_RUBY, {"BIDSFLUX_TOKEN_NAME": name,
                                          "BIDSFLUX_TOKEN_ID": ",".join(str(int(i)) for i in ids)})
    counts = [line.split("=", 1)[1] for line in out.splitlines() if line.startswith("bidsflux-revoked=")]
    return int(counts[0]) if counts and counts[0].strip().isdigit() else 0


@contextmanager
def root_token(container: Any, days: int = 1) -> Iterator[RootToken]:
    """A short-lived admin token for the duration of the block; revoked at its end, even on error."""
    token = mint_root_token(container, days)
    try:
        yield token
    finally:
        revoke_root_tokens(container, [token.id])


# ---------------------------------------------------------------------------------- self-hosting push
