"""Day zero in GitLab: a first admin token without a browser, then everything of gitlab.yml, then
this repository pushed to its own project so its pipeline takes over.

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
from pathlib import Path
from typing import Any

from bidsflux.diagnostics import UserError
from bidsflux.gitlab.objects import (
    ApplyResult,
    Plan,
    TokenStore,
    apply,
    connect,
    desired,
    diff,
    gitlab_errors,
    load_config,
    observe,
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
REVOKE_RUBY = (
    "n = 0; PersonalAccessToken.active.where(name: ENV.fetch('BIDSFLUX_TOKEN_NAME')).each { |t| t.revoke!; n += 1 }; "
    "puts \"bidsflux-revoked=#{n}\""
)


def find_gitlab_container(client: Any, stack: str, service: str = "gitlab") -> Any:
    """The running container of the `<stack>_<service>` swarm task on this node."""
    from docker.errors import DockerException

    label = f"com.docker.swarm.service.name={stack}_{service}"
    try:
        found = client.containers.list(filters={"label": label, "status": "running"})
    except DockerException as exc:
        raise UserError(f"cannot list containers: {str(exc).splitlines()[0][:200]}") from None
    if not found:
        raise UserError(f"no running container of service {stack}_{service} on this node; run this on the node "
                        "that runs GitLab (the data role) once `bidsflux deploy` has started it")
    return found[0]


def _rails(container: Any, ruby: str, env: Mapping[str, str], secret: str | None = None) -> str:
    from docker.errors import DockerException

    try:
        code, output = container.exec_run(["gitlab-rails", "runner", ruby], environment=dict(env))
    except DockerException as exc:
        raise UserError(f"cannot run gitlab-rails in {container.name}: {scrub(str(exc), [secret or ''])[:200]}") from None
    text = (output or b"").decode(errors="replace")
    if code != 0:
        last = scrub(text.strip().splitlines()[-1] if text.strip() else f"exit {code}", [secret or ""])[:300]
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
    return RootToken(value, int(ids[0]), (dt.date.today() + dt.timedelta(days=days)).isoformat())


def revoke_root_tokens(container: Any, name: str = BOOTSTRAP_TOKEN_NAME) -> int:
    out = _rails(container, REVOKE_RUBY, {"BIDSFLUX_TOKEN_NAME": name})
    counts = [line.split("=", 1)[1] for line in out.splitlines() if line.startswith("bidsflux-revoked=")]
    return int(counts[0]) if counts and counts[0].strip().isdigit() else 0


@contextmanager
def root_token(container: Any, days: int = 1) -> Iterator[RootToken]:
    """A short-lived admin token for the duration of the block; revoked at its end, even on error."""
    token = mint_root_token(container, days)
    try:
        yield token
    finally:
        revoke_root_tokens(container)


# ---------------------------------------------------------------------------------- self-hosting push


def push_repository(repo_root: Path, gitlab_url: str, project_path: str, token: str, ref: str = "HEAD",
                    branch: str = "main") -> None:
    """`git push` this repository to its project. The token travels in an HTTP header set through
    git's environment configuration (GIT_CONFIG_*), so it is neither in argv nor in .git/config."""
    import base64
    import os

    import sh

    url = f"{gitlab_url.rstrip('/')}/{project_path}.git"
    basic = base64.b64encode(f"oauth2:{token}".encode()).decode()
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_COUNT": "1",
           "GIT_CONFIG_KEY_0": "http.extraHeader", "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}
    try:
        sh.git("-C", str(repo_root), "push", url, f"{ref}:refs/heads/{branch}", _env=env, _err_to_out=True)
    except sh.ErrorReturnCode as exc:
        out = scrub(exc.stdout.decode(errors="replace"), [token, basic]).strip().splitlines()
        raise UserError(f"git push to {url} failed: {out[-1] if out else 'no output'}; is the repository committed "
                        "and does the token may push (maintainer on the project)?") from None
    except sh.CommandNotFound:
        raise UserError("git is not installed; install git to push the repository to GitLab") from None


@dataclass
class DayZeroResult:
    plan: Plan
    applied: ApplyResult
    pushed: str | None


def gitlab_day_zero(repo: Any, gitlab_url: str, admin_token: str, *, stack: str,
                    secret_values: Mapping[str, str], values_file: str | None,
                    docker_client: Any = None, push: bool = True, ref: str = "HEAD") -> DayZeroResult:
    """Bootstrap's last step: apply gitlab.yml from nothing (bots, tokens stored as docker secret /
    CI variable, groups, mirrored projects, variables, protections, schedules), then push this
    repository to the project marked `self: true` so that its pipeline takes over.

    Safe to re-run: a second call finds everything in place and only pushes (a no-op when GitLab
    has the commit). `admin_token` is typically `root_token(...)`'s value."""
    gdoc, site = load_config(repo)
    want = desired(gdoc, site, secret_values)
    gl = connect(gitlab_url, admin_token)
    secrets_known = [admin_token, *want.secret_values()]
    with gitlab_errors("reading GitLab objects", gitlab_url, secrets_known):
        plan = diff(want, observe(gl, want))
    store = TokenStore(gl, stack, values_file, (lambda: docker_client) if docker_client is not None else None)
    applied = apply(gl, want, plan, store, gitlab_url)
    pushed = None
    target = want.self_project
    if push and target is not None:
        push_repository(Path(repo.root), gitlab_url, target.path, admin_token, ref)
        pushed = target.path
    return DayZeroResult(plan, applied, pushed)
