"""`bidsflux gitlab plan|apply|root-token|tokens rotate` and `bidsflux runners register|list`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click

from bidsflux.diagnostics import UserError
from bidsflux.gitlab.objects import site_url

DEFAULT_TOKEN_ENV = "BIDSFLUX_GITLAB_TOKEN"
TOKEN_ID_LABEL = "io.bidsflux.gitlab-token-id"  # on the docker secret holding a minted admin token


@dataclass
class Session:
    repo: Any
    gitlab_doc: dict[str, Any]
    site: dict[str, Any]
    url: str
    token: str
    stack: str


@contextmanager
def session(site_path: str | None, root: str | None, url: str | None, token_env: str,
            use_root_token: bool) -> Iterator[Session]:
    """Repository, configuration and an admin token (from the environment, or minted in memory
    through gitlab-rails for the duration of the command and revoked after)."""
    from bidsflux.gitlab.objects import load_config
    from bidsflux.site.repository import open_repository

    repo = open_repository(site_path, root)
    gdoc, site = load_config(repo)
    stack = str((site.get("site") or {}).get("name", "bidsflux"))
    url = url or os.environ.get("BIDSFLUX_GITLAB_URL") or site_url(site)
    if use_root_token:
        from bidsflux.gitlab.root_token import find_gitlab_container, root_token
        from bidsflux.swarm import secretstore

        container = find_gitlab_container(secretstore.docker_client(), stack)
        with root_token(container) as tok:
            yield Session(repo, gdoc, site, url, tok.value, stack)
        return
    token = os.environ.get(token_env, "")
    if not token:
        raise UserError(f"no GitLab token: set {token_env} to an administrator's token (in the pipeline: the masked "
                        "variable BIDSFLUX_GITLAB_TOKEN), or pass --root-token on the node running GitLab")
    yield Session(repo, gdoc, site, url, token, stack)


def gitlab_options(func: Any) -> Any:
    from bidsflux.console import root_option, site_option

    func = click.option("--root-token", "use_root_token", is_flag=True,
                        help="Mint a short-lived admin token with gitlab-rails in the GitLab task; revoked at the end.")(func)
    func = click.option("--token-env", default=DEFAULT_TOKEN_ENV, show_default=True,
                        help="Environment variable holding an administrator's token.")(func)
    func = click.option("--url", default=None, help="GitLab URL (default: BIDSFLUX_GITLAB_URL, else from site.yml).")(func)
    return site_option(root_option(func))


def _plan(s: Session) -> tuple[Any, Any, Any]:
    from bidsflux.gitlab.objects import connect, desired, diff, gitlab_errors, observe, secret_values_from

    want = desired(s.gitlab_doc, s.site, secret_values_from(s.site, os.environ))
    gl = connect(s.url, s.token, site=s.site)
    with gitlab_errors("reading GitLab objects", s.url, [s.token, *want.secret_values()]):
        plan = diff(want, observe(gl, want))
    return gl, want, plan


def _echo_plan(plan: Any, fmt: str) -> None:
    if fmt == "json":
        click.echo(plan.to_json())
    else:
        for line in plan.lines():
            click.echo(line)


def _store(gl: Any, s: Session) -> Any:
    from bidsflux.gitlab.tokens import TokenStore

    values_file = (s.site.get("secrets") or {}).get("file")
    if values_file:
        from bidsflux.swarm.secretstore import require_values_folder

        require_values_folder(values_file)  # in CI: the host's values file, not the job container's
    if values_file and not os.access(os.path.dirname(values_file) or ".", os.W_OK):
        values_file = None  # not root / not the manager: docker secret and CI variable still receive it
    return TokenStore(gl, s.stack, values_file)


def _register_preview(gl: Any, specs: list[Any], only: tuple[str, ...]) -> list[str]:
    """What `runners register` is about to do, for the question asked on a terminal."""
    from bidsflux.gitlab.objects import gitlab_errors
    from bidsflux.gitlab.runners import list_live

    chosen = [s for s in specs if not only or s.name in only or s.service in only]
    services = {s.service for s in chosen}
    replaced = {s.name for s in specs if s.service in services}
    wanted = {s.name for s in specs}
    with gitlab_errors("listing runners", str(getattr(gl, "url", ""))):
        live = list_live(gl)
    lines = [f"  register {s.name} (service {s.service}, tags {', '.join(s.tags) or 'none'})"
             for s in specs if s.service in services]
    lines += [f"  restart service {svc} with its new config.toml" for svc in sorted(services)]
    lines += [f"  delete runner #{r.id} {r.description!r} ({'replaced' if r.description in replaced else 'not in runners.yml'})"
              for r in live if r.description in replaced or r.description not in wanted]
    return lines


def register(main: click.Group) -> None:
    from bidsflux.console import confirm_plan, format_option, friendly_errors, yes_option

    @main.group("gitlab")
    def gitlab_group() -> None:
        """GitLab objects of stack/gitlab.yml: bots, tokens, groups, projects, variables, schedules."""

    @gitlab_group.command("plan")
    @gitlab_options
    @format_option
    @friendly_errors
    def plan_cmd(site: str | None, root: str | None, url: str | None, token_env: str, use_root_token: bool,
                 fmt: str) -> None:
        """Show what `apply` would change. Exit 0: nothing; 2: changes pending; 1: error."""
        with session(site, root, url, token_env, use_root_token) as s:
            _, _, plan = _plan(s)
        _echo_plan(plan, fmt)
        sys.exit(0 if plan.empty else 2)

    @gitlab_group.command("apply")
    @gitlab_options
    @yes_option
    @format_option
    @friendly_errors
    def apply_cmd(site: str | None, root: str | None, url: str | None, token_env: str, use_root_token: bool,
                  yes: bool, fmt: str) -> None:
        """Make GitLab match gitlab.yml; new token values are stored before anything uses them.

        On a terminal the plan is shown and you are asked first (--yes or CI skips)."""
        from bidsflux.gitlab.objects import apply

        with session(site, root, url, token_env, use_root_token) as s:
            gl, want, plan = _plan(s)
            if not plan.empty:
                confirm_plan(plan.lines(), f"GitLab at {s.url} will be changed as above", yes)
            result = apply(gl, want, plan, _store(gl, s), s.url)
        if fmt == "json":
            click.echo(json.dumps({"applied": result.done, "stored": result.stored}, indent=2))
        else:
            for line in result.done or ["GitLab matches gitlab.yml: no change"]:
                click.echo(line)
            for label, where in result.stored.items():
                click.echo(f"token {label} stored in: {', '.join(where)}")

    @gitlab_group.command("root-token")
    @site_option_late()
    @click.option("--days", type=click.IntRange(1, 7), default=1, show_default=True, help="Lifetime of the token.")
    @click.option("--revoke", is_flag=True, help="Revoke every bootstrap admin token and remove their docker secrets.")
    @friendly_errors
    def root_token_cmd(site: str | None, root: str | None, days: int, revoke: bool) -> None:
        """Mint a short-lived admin token with gitlab-rails inside the GitLab task (no browser).

        The value goes into a versioned docker secret (<stack>_gitlab_admin_token_vN) for services
        and jobs that need it, never to the terminal; `--revoke` ends it. Commands that only need
        it while they run take --root-token instead."""
        from bidsflux.gitlab.root_token import find_gitlab_container, mint_root_token, revoke_root_tokens
        from bidsflux.gitlab.tokens import live_version
        from bidsflux.site.repository import open_repository
        from bidsflux.site.yamlsource import load
        from bidsflux.swarm import secretstore

        repo = open_repository(site, root)
        stack = str((load(repo.site_file, repo.root).data.get("site") or {}).get("name", "bidsflux"))
        client = secretstore.docker_client()
        container = find_gitlab_container(client, stack)
        logical = "gitlab_admin_token"
        if revoke:
            # Only tokens this command minted: their ids are labels of the secrets holding them.
            stored = client.secrets.list(filters={"label": [f"{secretstore.LABEL_STACK}={stack}",
                                                            f"{secretstore.LABEL_SECRET}={logical}"]})
            ids = [int(i) for sec in stored
                   if (i := (sec.attrs["Spec"].get("Labels") or {}).get(TOKEN_ID_LABEL, "")).isdigit()]
            n = revoke_root_tokens(container, ids)
            for sec in stored:
                sec.remove()
            click.echo(f"revoked {n} bootstrap token(s); removed {len(stored)} docker secret(s)")
            return
        tok = mint_root_token(container, days)
        try:
            version = live_version(client, stack, logical) + 1
            secretstore.create_secret(client, stack, logical, version, tok.value,
                                      extra_labels={TOKEN_ID_LABEL: str(tok.id)})
        except BaseException:
            revoke_root_tokens(container, [tok.id])
            raise
        click.echo(f"{tok} stored in docker secret {stack}_{logical}_v{version}; revoke with "
                   "`bidsflux gitlab root-token --revoke`")

    @gitlab_group.group("tokens")
    def tokens_group() -> None:
        """Bot tokens (GitLab's rotate API) and project deploy tokens (new, stored, old revoked)."""

    @tokens_group.command("rotate")
    @click.argument("users", nargs=-1)
    @gitlab_options
    @yes_option
    @format_option
    @friendly_errors
    def rotate_cmd(users: tuple[str, ...], site: str | None, root: str | None, url: str | None, token_env: str,
                   use_root_token: bool, yes: bool, fmt: str) -> None:
        """Rotate the tokens of USERS (gitlab.yml keys, or deploy token names; all when none given).

        The new value is stored (values file, docker secret, CI variable) before anything else;
        a rotation is never retried on its own."""
        from bidsflux.gitlab.deploy_tokens import renew as renew_deploy_token
        from bidsflux.gitlab.deploy_tokens import specs as deploy_specs
        from bidsflux.gitlab.objects import connect, desired
        from bidsflux.gitlab.tokens import rotate_token

        with session(site, root, url, token_env, use_root_token) as s:
            want = desired(s.gitlab_doc, s.site, {})
            bots = [u for u in want.users if u.token]
            deploy = deploy_specs(want)
            unknown = set(users) - {u.key for u in bots} - {u.username for u in bots} - {t.key for t in deploy}
            if unknown:
                raise UserError(f"no bot with a token or deploy token named {', '.join(sorted(unknown))} in "
                                f"stack/gitlab.yml (bots: {', '.join(u.key for u in bots)}; deploy tokens: "
                                f"{', '.join(t.key for t in deploy) or 'none'})")
            chosen = [u for u in bots if not users or u.key in users or u.username in users]
            chosen_deploy = [t for t in deploy if not users or t.key in users]
            confirm_plan([f"  rotate {u.username}/{u.token.name if u.token else ''}" for u in chosen] +
                         [f"  renew deploy token {t.project}:{t.key} (new token stored, then the old one revoked)"
                          for t in chosen_deploy],
                         f"{len(chosen) + len(chosen_deploy)} token(s) are replaced; the old values stop working at once",
                         yes)
            gl = connect(s.url, s.token, site=s.site)
            store = _store(gl, s)
            done = []
            for t in chosen_deploy:
                if not store.values_file:
                    raise UserError(f"deploy token {t.project}:{t.key}: no writable values file (site.yml secrets.file) "
                                    "to store its value in; run this as root on the manager")
                where = renew_deploy_token(gl, t, store.values_file)
                done.append({"deploy_token": f"{t.project}:{t.key}", "stored_in": list(where)})
                if fmt != "json":
                    click.echo(f"renewed deploy token {t.project}:{t.key}; stored in: {', '.join(where)}")
            for u in chosen:
                where = rotate_token(gl, u, store)
                done.append({"user": u.username, "token": u.token.name if u.token else "", "stored_in": list(where)})
                if fmt != "json":
                    click.echo(f"rotated {u.username}/{u.token.name if u.token else ''}; stored in: {', '.join(where)}")
        if fmt == "json":
            click.echo(json.dumps({"rotated": done}, indent=2))

    @main.group("runners")
    def runners_group() -> None:
        """The runner fleet of stack/runners.yml."""

    @runners_group.command("register")
    @gitlab_options
    @click.option("--only", multiple=True, help="Runner or service name (repeatable); default: the whole fleet.")
    @click.option("--runner-url", default=None,
                  help="GitLab URL the runners use (default: https://<hosts.gitlab>, the proxy's name on the stack network).")
    @yes_option
    @format_option
    @friendly_errors
    def register_cmd(site: str | None, root: str | None, url: str | None, token_env: str, use_root_token: bool,
                     only: tuple[str, ...], runner_url: str | None, yes: bool, fmt: str) -> None:
        """Create each runner (POST /user/runners), store its config.toml as a new secret version,
        roll its service, then delete the runners it replaces and those runners.yml does not name.

        On a terminal the runners to create and delete are shown and you are asked first."""
        from dataclasses import asdict

        from bidsflux.gitlab.objects import connect
        from bidsflux.gitlab.runners import SecretSink, config_secrets, register, runner_specs
        from bidsflux.site.yamlsource import load

        with session(site, root, url, token_env, use_root_token) as s:
            specs = runner_specs(load(s.repo.runners_file, s.repo.root).data or {}, s.site)
            template = load(s.repo.stack_template, s.repo.root).data or {}
            gl = connect(s.url, s.token, site=s.site)
            target = runner_url or site_url(s.site)
            confirm_plan(lambda: _register_preview(gl, specs, only), "the runner fleet will be replaced as above", yes)
            result = register(gl, specs, config_secrets(template), target, SecretSink(s.stack),
                              set(only) if only else None)
        if fmt == "json":
            click.echo(json.dumps(asdict(result), indent=2))
            return
        for line in result.lines():
            click.echo(line)

    @runners_group.command("list")
    @gitlab_options
    @format_option
    @friendly_errors
    def list_cmd(site: str | None, root: str | None, url: str | None, token_env: str, use_root_token: bool,
                 fmt: str) -> None:
        """runners.yml next to what GitLab knows (status online/offline/stale/never_contacted)."""
        from bidsflux.gitlab.objects import connect, gitlab_errors
        from bidsflux.gitlab.runners import fleet_status, runner_specs
        from bidsflux.site.yamlsource import load

        with session(site, root, url, token_env, use_root_token) as s:
            specs = runner_specs(load(s.repo.runners_file, s.repo.root).data or {}, s.site)
            gl = connect(s.url, s.token, site=s.site)
            with gitlab_errors("listing runners", s.url, [s.token]):
                rows = fleet_status(gl, specs)
        if fmt == "json":
            click.echo(json.dumps(rows, indent=2))
            return
        from rich.table import Table

        from bidsflux.console import make_console

        table = Table(title="runners")
        for col in ("runner", "service", "state", "in GitLab", "tags"):
            table.add_column(col, overflow="fold")
        for r in rows:
            ids = ", ".join(f"#{g['id']} {g['status']}" for g in r["gitlab"]) or "-"
            table.add_row(r["name"], r["service"] or "-", r["state"], ids, ",".join(r["tags"]) or "(untagged)")
        make_console(soft_wrap=False).print(table)


def site_option_late() -> Any:
    """--site and --root (imported lazily: bidsflux.cli imports this module while it loads)."""
    from bidsflux.console import root_option, site_option

    def deco(func: Any) -> Any:
        return site_option(root_option(func))

    return deco
