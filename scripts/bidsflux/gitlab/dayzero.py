"""GitLab's part of `bidsflux bootstrap`, run once the stack has converged: wait until GitLab is
ready, mint a short-lived admin token inside the GitLab task, apply gitlab.yml and push this
repository (gitlab_bootstrap.gitlab_day_zero), register the runner fleet, revoke the token.

Idempotent like the swarm part: a second run finds every object in place and the fleet
registered, so it makes no write request to GitLab (the runner check only reads).
Any failure is a UserError saying that the swarm part is done and how to resume."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bidsflux.diagnostics import UserError, clip, seconds_from_env
from bidsflux.gitlab.objects import (
    KINDS,
    SCHEDULE_KINDS,
    ApplyResult,
    Plan,
    apply,
    connect,
    desired,
    diff,
    gitlab_errors,
    load_config,
    observe,
    scrub,
)
from bidsflux.gitlab.tokens import TokenStore

READY_TIMEOUT_ENV = "BIDSFLUX_GITLAB_READY_TIMEOUT"
DEFAULT_READY_TIMEOUT = 900.0  # GitLab's first start (migrations) takes several minutes


def gitlab_url(site: dict[str, Any]) -> str:
    """BIDSFLUX_GITLAB_URL, else https://<hosts.gitlab> as `bidsflux gitlab` uses it."""
    from bidsflux.gitlab.objects import site_url

    return os.environ.get("BIDSFLUX_GITLAB_URL") or site_url(site)


def ready_timeout(value: float | None = None) -> float:
    return seconds_from_env(READY_TIMEOUT_ENV, DEFAULT_READY_TIMEOUT, value)


def _probe(url: str) -> tuple[bool, str]:
    """(ready, what GitLab said) for one GET of /-/readiness?all=1."""
    import requests

    from bidsflux.proxy.trust import requests_verify

    try:
        resp = requests.get(f"{url.rstrip('/')}/-/readiness", params={"all": "1"}, timeout=5,
                            verify=requests_verify(None))
    except requests.exceptions.RequestException as exc:
        return False, f"not answering ({type(exc).__name__})"
    if resp.status_code == 200:
        return True, "ready"
    failing: list[str] = []
    try:
        body = resp.json()
        failing = sorted(k for k, v in body.items()
                         if isinstance(v, list) and any(isinstance(c, dict) and c.get("status") != "ok" for c in v))
    except ValueError:
        pass
    return False, f"HTTP {resp.status_code}" + (f", failing: {', '.join(failing)}" if failing else "")


# GitLab answers /-/readiness only to addresses in gitlab_rails['monitoring_whitelist'] (default
# 127.0.0.0/8, ::1/128; requires_allowlisted_monitoring_client.rb renders 404 otherwise). Through a
# host-mode published port the request arrives from docker_gwbridge's gateway, not 127.0.0.1, so
# the probe runs inside the GitLab task, where it comes from localhost. The omnibus image has curl;
# BIDSFLUX_READINESS_URL in the task's environment overrides the URL (GitLab's nginx listens on 80).
PROBE_SH = (
    'u="${BIDSFLUX_READINESS_URL:-http://127.0.0.1/-/readiness?all=1}"; '
    'if command -v curl >/dev/null 2>&1; then curl -s -o /dev/null -w "%{http_code}" --max-time 5 "$u"; '
    'else wget -q -O /dev/null "$u" && echo 200 || echo failed; fi'
)


def task_probe(container_finder: Callable[[], Any]) -> Callable[[str], tuple[bool, str]]:
    """A readiness probe that runs in the GitLab task (found anew each time: the task may not exist yet)."""

    def probe(_url: str) -> tuple[bool, str]:
        try:
            container = container_finder()
        except UserError as exc:
            return False, str(exc)
        try:
            code, out = container.exec_run(["sh", "-c", PROBE_SH])
        except Exception as exc:  # noqa: BLE001 - the task may be restarting; keep waiting
            return False, f"cannot exec in the GitLab task ({type(exc).__name__})"
        answer = (out or b"").decode(errors="replace").strip()
        if code == 0 and answer == "200":
            return True, "ready"
        return False, f"HTTP {answer}" if answer.isdigit() else f"not answering inside the task ({answer[:80] or code})"

    return probe


def wait_ready(url: str, timeout: float, console: Console, interval: float = 2.0,
               probe: Callable[[str], tuple[bool, str]] = _probe) -> float:
    """Poll GitLab's readiness until 200; seconds waited. Raises UserError after `timeout`."""
    started = time.monotonic()
    status = "not asked yet"
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task(f"waiting for GitLab readiness at {url}/-/readiness?all=1", total=None)
        while True:
            ready, status = probe(url)
            if ready:
                break
            elapsed = time.monotonic() - started
            if elapsed >= timeout:
                raise UserError(f"GitLab at {url} was not ready after {elapsed:.0f}s (last answer: {status}); "
                                f"check `docker service ps` / `bidsflux health`, or allow longer with {READY_TIMEOUT_ENV} "
                                "or --gitlab-timeout (GitLab's first start takes minutes)")
            progress.update(task, description=f"waiting for GitLab readiness at {url} (last: {status}; "
                                              f"timeout {timeout:.0f}s)")
            time.sleep(min(interval, max(0.0, timeout - elapsed)))
    waited = time.monotonic() - started
    console.print(f"GitLab at {url} is ready (waited {waited:.1f}s)", highlight=False, markup=False)
    return waited


# ---------------------------------------------------------------------------------- runner fleet


@dataclass
class FleetResult:
    registered: dict[str, int] = field(default_factory=dict)
    deleted: list[int] = field(default_factory=list)
    configs: dict[str, str] = field(default_factory=dict)
    skipped_reason: str = ""


def services_needing_registration(gl: Any, specs: list[Any], service_secrets: dict[str, str], client: Any,
                                  stack: str) -> tuple[list[str], list[str]]:
    """(services to (re-)register, names of runners GitLab knows but runners.yml does not).

    A service is registered when each of its runners exists exactly once in GitLab and its config
    secret has a version written by registration (v1 is bootstrap's empty placeholder config)."""
    from bidsflux.gitlab.runners import fleet_status
    from bidsflux.gitlab.tokens import live_version

    rows = fleet_status(gl, specs)
    unknown = [r["name"] for r in rows if r["state"] == "unknown"]
    need = set()
    for r in rows:
        if r["service"] and r["state"] in ("missing", "duplicate"):
            need.add(r["service"])
    for service in {s.service for s in specs}:
        logical = service_secrets.get(service)
        if logical and live_version(client, stack, logical) < 2:
            need.add(service)
    return sorted(need), unknown


def register_fleet(ctx: Any, gl: Any, url: str) -> FleetResult:
    from bidsflux.gitlab.objects import gitlab_errors
    from bidsflux.gitlab.runners import SecretSink, config_secrets, register, runner_specs
    from bidsflux.site.yamlsource import load

    specs = runner_specs(load(ctx.repo.runners_file, ctx.repo.root).data or {}, ctx.site)
    service_secrets = config_secrets(ctx.template.data or {})
    with gitlab_errors("listing runners", url):
        need, unknown = services_needing_registration(gl, specs, service_secrets, ctx.client, ctx.stack)
    if not need and not unknown:
        return FleetResult(skipped_reason="every runner of runners.yml is registered and its config stored")
    # Runners reach GitLab by its public name, the proxy's alias on the stack network, as
    # `bidsflux runners register` does.
    from bidsflux.gitlab.objects import site_url

    target = site_url(ctx.site)
    result = register(gl, specs, service_secrets, target, SecretSink(ctx.stack, lambda: ctx.client),
                      set(need) if need else None)
    return FleetResult(dict(result.registered), list(result.deleted), dict(result.configs))


# ---------------------------------------------------------------------------------- the whole step


def resume_hint(ctx: Any) -> str:
    site = f" --site {ctx.repo.site_file}"
    return (f"the swarm part of bootstrap is done; resume GitLab's day zero with `bidsflux bootstrap{site} --yes` "
            f"(the swarm part then changes nothing), or step by step: `bidsflux gitlab apply --root-token{site}` "
            f"then `bidsflux runners register --root-token{site}`")


@contextmanager
def _resumable(ctx: Any, step: str | list[str], hidden: list[str] | None = None) -> Iterator[None]:
    """UserError naming the step (a one-item list when the block moves through several) and how to
    resume; values in `hidden` (the admin token once minted) are scrubbed from the message."""
    from bidsflux.gitlab.objects import scrub

    try:
        yield
    except UserError as exc:
        what = step[0] if isinstance(step, list) else step
        text = scrub(str(exc), hidden or [])
        raise UserError(f"GitLab day zero failed while {what}: {text}\n{resume_hint(ctx)}") from None
    except Exception as exc:  # noqa: BLE001 - an engine error must still end in the resume message
        what = step[0] if isinstance(step, list) else step
        first = clip(scrub((str(exc).splitlines() or [type(exc).__name__])[0], hidden or []), 200)
        raise UserError(f"GitLab day zero failed while {what}: {type(exc).__name__}: {first}\n"
                        f"{resume_hint(ctx)}") from None


def run(ctx: Any, console: Console, ready_timeout_s: float | None = None, container: Any = None,
        poll_interval: float = 2.0) -> None:
    """Bootstrap's GitLab step. `container` is the GitLab task's container (found by its swarm
    service label when not given)."""
    from bidsflux.gitlab.dayzero import gitlab_day_zero
    from bidsflux.gitlab.objects import connect
    from bidsflux.gitlab.root_token import find_gitlab_container, root_token
    from bidsflux.swarm import secretstore

    url = gitlab_url(ctx.site)
    timeout = ready_timeout(ready_timeout_s)
    console.print("GitLab day zero: admin token, gitlab.yml, repository push, runner registration")
    started = time.monotonic()
    def finder() -> Any:
        return container if container is not None else find_gitlab_container(ctx.client, ctx.stack)

    with _resumable(ctx, f"waiting for GitLab at {url}"):
        waited = wait_ready(url, timeout, console, poll_interval, probe=task_probe(finder))
    with _resumable(ctx, f"looking for the running task of service {ctx.stack}_gitlab"):
        container = finder()
    values_file = str(ctx.site["secrets"]["file"])
    with _resumable(ctx, f"reading the secrets values file {values_file}"):
        try:
            secret_values = secretstore.read_values_file(values_file)
        except OSError as exc:
            raise UserError(f"cannot read {values_file} ({exc.strerror}); run bootstrap as root on the manager") from None
    step, hidden = ["minting an admin token with gitlab-rails"], []
    with _resumable(ctx, step, hidden):
        with root_token(container) as token:
            hidden.append(token.value)
            step[0] = "applying gitlab.yml and pushing this repository"
            result = gitlab_day_zero(ctx.repo, url, token.value, stack=ctx.stack, secret_values=secret_values,
                                     values_file=values_file, docker_client=ctx.client)
            step[0] = "registering the runner fleet"
            fleet = register_fleet(ctx, connect(url, token.value, site=ctx.site), url)
            token_text = str(token)
            step[0] = "revoking the admin token"
    _summary(console, url, waited, result, fleet, token_text, time.monotonic() - started)


def _summary(console: Console, url: str, waited: float, result: Any, fleet: FleetResult, token_text: str,
             took: float) -> None:
    table = Table(title="GitLab day zero")
    table.add_column("what")
    table.add_column("state", overflow="fold")
    table.add_row("GitLab", f"{url} (ready after {waited:.1f}s)")
    table.add_row("gitlab.yml", f"{len(result.applied.done)} change(s) applied" if result.applied.done
                  else "already in place: no change")
    for label, where in result.applied.stored.items():
        table.add_row(f"token {label}", "stored in " + ", ".join(where))
    table.add_row("repository", f"pushed to {result.pushed}" if result.pushed else "no project marked self: not pushed")
    if fleet.skipped_reason:
        table.add_row("runners", f"no change: {fleet.skipped_reason}")
    else:
        table.add_row("runners", ", ".join(f"{n} (#{i})" for n, i in fleet.registered.items()) or "none registered")
        for service, secret in fleet.configs.items():
            table.add_row(f"{service} config", f"secret {secret}")
        if fleet.deleted:
            table.add_row("old runners deleted", ", ".join(f"#{i}" for i in fleet.deleted))
    table.add_row("admin token", f"{token_text}: revoked")
    table.add_row("took", f"{took:.1f}s")
    console.print(table)
    for line in result.applied.done:
        console.print(f"  - {line}", highlight=False, markup=False)
    if not result.applied.done and fleet.skipped_reason:
        console.print("GitLab: no changes (every object of gitlab.yml and every runner already in place).")


# ---------------------------------------------------------------- objects and the self push

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
    from bidsflux.proxy.trust import ca_bundle_file

    bundle = ca_bundle_file(None)
    if bundle:
        env["GIT_SSL_CAINFO"] = bundle  # the site CA: verify, never disable
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
    gl = connect(gitlab_url, admin_token, site=site)
    secrets_known = [admin_token, *want.secret_values()]
    with gitlab_errors("reading GitLab objects", gitlab_url, secrets_known):
        plan = diff(want, observe(gl, want))
    store = TokenStore(gl, stack, values_file, (lambda: docker_client) if docker_client is not None else None)
    first = tuple(k for k in KINDS if k not in SCHEDULE_KINDS)
    applied = apply(gl, want, plan, store, gitlab_url, kinds=first, token=admin_token)
    pushed = None
    target = want.self_project
    if push and target is not None:
        push_repository(Path(repo.root), gitlab_url, target.path, admin_token, ref)
        pushed = target.path
    # Schedules last: GitLab 17 refuses a schedule whose ref does not exist yet
    # (app/services/ci/pipeline_schedules/base_save_service.rb), so the branch must be pushed first.
    later = apply(gl, want, plan, store, gitlab_url, kinds=SCHEDULE_KINDS, token=admin_token)
    applied.done += later.done
    return DayZeroResult(plan, applied, pushed)
