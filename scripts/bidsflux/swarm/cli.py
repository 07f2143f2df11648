"""Swarm commands: bootstrap, plan, deploy, secrets rotate|gc|list, swarm join-command."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from bidsflux.console import format_option, friendly_errors, root_option, site_option
from bidsflux.diagnostics import UserError

TIMEOUT_HELP = "Seconds to wait for services to converge before reporting a failure."


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _context(site: str | None, root: str | None, versions: str = "live"):  # type: ignore[no-untyped-def]
    from bidsflux.swarm.deploy import load_context

    return load_context(site, root, versions)


def _confirm_or_yes(yes: bool, what: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"{what}; pass --yes to run without a prompt")
    if not click.confirm(f"{what}. Continue?", default=False):
        raise UserError("stopped at your request; nothing more was changed")


def register(main: click.Group) -> None:
    @main.command()
    @site_option
    @root_option
    @click.option("--create-dirs", is_flag=True, help="Create missing data folders with owner and mode from site.yml.")
    @click.option("--yes", is_flag=True, help="Do not ask before changing the swarm.")
    @click.option("--timeout", type=float, default=900, show_default=True, help=TIMEOUT_HELP)
    @click.option("--skip-gitlab", is_flag=True,
                  help="Stop after the swarm part: no GitLab day zero (admin token, gitlab.yml, push, runners).")
    @click.option("--gitlab-timeout", type=float, default=None,
                  help="Seconds to wait for GitLab's readiness (default: BIDSFLUX_GITLAB_READY_TIMEOUT, else 900).")
    @friendly_errors
    def bootstrap(site: str | None, root: str | None, create_dirs: bool, yes: bool, timeout: float,
                  skip_gitlab: bool, gitlab_timeout: float | None) -> None:
        """Day zero on the manager: preflight, swarm, labels, network, secrets, deploy, summary.

        Safe to run again: it only creates what is missing and says when nothing changed."""
        from bidsflux.swarm.bootstrap import run_bootstrap

        sys.exit(run_bootstrap(lambda: _context(site, root, "auto"), create_dirs, timeout, _console(),
                               lambda what: _confirm_or_yes(yes, what), skip_gitlab, gitlab_timeout))

    @main.command()
    @site_option
    @root_option
    @format_option
    @friendly_errors
    def plan(site: str | None, root: str | None, fmt: str) -> None:
        """Compare the live swarm with the rendered stack. Exit 0 no change, 2 changes, 1 error."""
        from bidsflux.swarm.plan import format_plan

        the_plan = _context(site, root).plan()
        if fmt == "json":
            click.echo(the_plan.to_json())
        else:
            for line in format_plan(the_plan):
                click.echo(line)
        sys.exit(0 if the_plan.empty else 2)

    @main.command()
    @site_option
    @root_option
    @click.option("--timeout", type=float, default=900, show_default=True, help=TIMEOUT_HELP)
    @click.option("--no-handoff", is_flag=True, help="Never hand the deploy to a detached swarm job, even in CI.")
    @friendly_errors
    def deploy(site: str | None, root: str | None, timeout: float, no_handoff: bool) -> None:
        """Apply the plan: docker stack deploy --prune, then wait on every updated service.

        An empty plan touches nothing. A paused or rolled-back update exits 1 with a report. In a
        GitLab CI job that would restart GitLab or its own runner, the deploy runs as a one-shot
        swarm job that outlives the CI job, and this command polls it."""
        from bidsflux.swarm.deploy import run_deploy

        sys.exit(run_deploy(_context(site, root), _console(), timeout, allow_handoff=not no_handoff))

    @main.group()
    def secrets() -> None:
        """Versioned swarm secrets of the stack: list, rotate, gc. Values are never printed."""

    @secrets.command("list")
    @site_option
    @root_option
    @friendly_errors
    def secrets_list(site: str | None, root: str | None) -> None:
        """Names, versions, ages and users of the stack's secrets (never values)."""
        from bidsflux.swarm.secretstore import our_secrets

        ctx = _context(site, root)
        table = Table(title=f"secrets of {ctx.stack}")
        for col in ("secret", "version", "docker name", "age", "used by"):
            table.add_column(col, overflow="fold")
        now = datetime.now(UTC)
        rotation_days = int(ctx.site["secrets"].get("rotation_days", 365))
        for v in our_secrets(ctx.client, ctx.stack):
            age = _age_days(v.created, now)
            age_text = "?" if age is None else f"{age}d" + (" (rotate: older than secrets.rotation_days)"
                                                             if age >= rotation_days else "")
            table.add_row(v.logical, str(v.version), v.name, age_text, ", ".join(v.used_by) or "-")
        _console().print(table)

    @secrets.command("rotate")
    @click.argument("names", nargs=-1)
    @click.option("--all", "all_", is_flag=True, help="Rotate every secret of the stack.")
    @site_option
    @root_option
    @click.option("--timeout", type=float, default=900, show_default=True, help=TIMEOUT_HELP)
    @friendly_errors
    def secrets_rotate(names: tuple[str, ...], all_: bool, site: str | None, root: str | None, timeout: float) -> None:
        """New version of each secret, services moved to it (start-first where their update order
        says so), healthy, old version removed. Safe to re-run after an interruption."""
        from bidsflux.site.render import secret_catalog
        from bidsflux.swarm.rotation import rotate

        ctx = _context(site, root)
        catalog = secret_catalog(ctx.template.data)
        if all_ == bool(names):
            raise UserError(f"name the secrets to rotate or pass --all (secrets: {', '.join(sorted(catalog))})")
        chosen = sorted(ctx.rendered.secrets) if all_ else list(names)
        sys.exit(rotate(ctx, chosen, _console(), timeout))

    @secrets.command("gc")
    @site_option
    @root_option
    @friendly_errors
    def secrets_gc(site: str | None, root: str | None) -> None:
        """Remove old versions of our secrets that no service references (current or previous spec)."""
        from bidsflux.swarm.secretstore import gc_candidates, our_secrets

        ctx = _context(site, root)
        console = _console()
        doomed = gc_candidates(our_secrets(ctx.client, ctx.stack))
        for v in doomed:
            ctx.client.api.remove_secret(v.id)
            console.print(f"removed {v.name}")
        console.print(f"{len(doomed)} unreferenced old version(s) removed" if doomed else "nothing to remove")

    @main.group()
    def swarm() -> None:
        """The swarm itself."""

    @swarm.command("join-command")
    @site_option
    @root_option
    @friendly_errors
    def join_command_cmd(site: str | None, root: str | None) -> None:
        """Print the command a worker (the processing server) runs to join this swarm."""
        from bidsflux.swarm.bootstrap import join_command
        from bidsflux.swarm.secretstore import docker_client

        client = docker_client()
        if not (client.info().get("Swarm") or {}).get("ControlAvailable"):
            raise UserError("this node is not a swarm manager; run bidsflux bootstrap first (or run this on the manager)")
        click.echo(join_command(client))

    @swarm.command("apply-rendered", hidden=True)
    @click.option("--stack", required=True)
    @click.option("--file", "file_", required=True, type=click.Path(dir_okay=False, exists=True))
    @click.option("--service", "services", multiple=True)
    @click.option("--timeout", type=float, default=900)
    @friendly_errors
    def apply_rendered_cmd(stack: str, file_: str, services: tuple[str, ...], timeout: float) -> None:
        """What the CI hand-off job runs: deploy a rendered stack file and wait for the services."""
        from bidsflux.swarm.deploy import apply_rendered

        sys.exit(apply_rendered(stack, Path(file_).read_text(encoding="utf-8"), list(services), timeout, _console()))


def _age_days(created: str, now: datetime) -> int | None:
    from bidsflux.swarm.engine import parse_timestamp

    ts = parse_timestamp(created)
    return None if not ts else int((now.timestamp() - ts) // 86400)

