"""Swarm commands: bootstrap, plan, deploy, secrets rotate|gc|list, swarm join-command|join."""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from bidsflux.console import (
    confirm_plan,
    format_option,
    friendly_errors,
    make_console,
    root_option,
    site_option,
    yes_option,
)
from bidsflux.diagnostics import UserError

TIMEOUT_HELP = "Seconds to wait for services to converge before reporting a failure."


def _console(fmt: str = "text") -> Console:
    # With --format json, stdout carries only the JSON result; progress goes to stderr.
    return make_console(stderr=fmt == "json")


def _plan_document(ctx: Any, plan: Any) -> dict[str, Any]:
    """The plan as `plan --format json` writes it, with a fingerprint of the rendered stack so
    `deploy --plan` can tell that the files changed even where the plan would look the same."""
    doc = plan.to_dict()
    doc["rendered_sha256"] = hashlib.sha256(ctx.rendered.to_yaml().encode()).hexdigest()
    return doc


def _check_saved_plan(path: str, ctx: Any, plan: Any) -> None:
    """Refuse unless the saved plan is exactly what would be applied now."""
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a plan written by `bidsflux plan --format json` ({exc})") from None
    if not isinstance(saved, dict) or "changes" not in saved:
        raise UserError(f"{path}: not a plan written by `bidsflux plan --format json` (no 'changes')")
    now = json.loads(json.dumps(_plan_document(ctx, plan), sort_keys=True))
    moved = []
    if saved.get("stack") != now["stack"]:
        moved.append(f"it is for stack {saved.get('stack')}, not {now['stack']}")
    if saved.get("rendered_sha256") != now["rendered_sha256"]:
        moved.append("the site files render a different stack file now")
    if json.dumps(saved.get("changes"), sort_keys=True) != json.dumps(now["changes"], sort_keys=True):
        was = {(c.get("kind"), c.get("action"), c.get("name")) for c in saved.get("changes") or [] if isinstance(c, dict)}
        cur = {(c["kind"], c["action"], c["name"]) for c in now["changes"]}
        detail = [f"{' '.join(map(str, c))} no longer planned" for c in sorted(was - cur, key=str)]
        detail += [f"{' '.join(c)} is new" for c in sorted(cur - was)]
        moved.append("the live swarm moved since the plan was made" + (f" ({'; '.join(detail)})" if detail else
                                                                       " (same changes, different values)"))
    if moved:
        raise UserError(f"{path} is not what a deploy would apply now: {'; '.join(moved)}. Nothing was changed; "
                        "make and review a new plan (bidsflux plan --format json > plan.json)")


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
        from bidsflux.redact import scrub
        from bidsflux.swarm.plan import format_plan
        from bidsflux.swarm.secretstore import known_secret_values

        ctx = _context(site, root)
        the_plan = ctx.plan()
        # Env values never enter a plan; any other field holding a known value is scrubbed too
        # (the output becomes CI logs, artifacts, MR notes and drift issues).
        known = known_secret_values(ctx.site)
        if fmt == "json":
            click.echo(scrub(json.dumps(_plan_document(ctx, the_plan), indent=2, sort_keys=True), known))
        else:
            for line in format_plan(the_plan):
                click.echo(scrub(line, known))
        sys.exit(0 if the_plan.empty else 2)

    @main.command()
    @site_option
    @root_option
    @click.option("--timeout", type=float, default=900, show_default=True, help=TIMEOUT_HELP)
    @click.option("--no-handoff", is_flag=True, help="Never hand the deploy to a detached swarm job, even in CI.")
    @click.option("--plan", "plan_file", type=click.Path(dir_okay=False, exists=True), default=None,
                  help="Apply exactly this saved plan (bidsflux plan --format json > FILE); refused when the live "
                       "swarm or the site files moved since it was made.")
    @yes_option
    @format_option
    @friendly_errors
    def deploy(site: str | None, root: str | None, timeout: float, no_handoff: bool, plan_file: str | None,
               yes: bool, fmt: str) -> None:
        """Apply the plan: docker stack deploy --prune, then wait on every updated service.

        On a terminal the plan is shown and you are asked first (--yes or CI skips). An empty plan
        touches nothing. A paused or rolled-back update exits 1 with a report. In a GitLab CI job
        that would restart GitLab or its own runner, the deploy runs as a one-shot swarm job that
        outlives the CI job, and this command polls it."""
        from bidsflux.swarm.deploy import run_deploy
        from bidsflux.swarm.plan import format_plan

        ctx = _context(site, root)
        the_plan = ctx.plan()
        if plan_file is not None:
            _check_saved_plan(plan_file, ctx, the_plan)
        if not the_plan.empty:
            confirm_plan(format_plan(the_plan), f"deploy will apply these changes to the stack {ctx.stack}", yes)
        code = run_deploy(ctx, _console(fmt), timeout, allow_handoff=not no_handoff)
        if fmt == "json":
            result = "no change" if the_plan.empty else ("deployed" if code == 0 else "failed")
            click.echo(json.dumps({"stack": ctx.stack, "result": result, "plan": the_plan.to_dict()}, indent=2))
        sys.exit(code)

    @main.group()
    def secrets() -> None:
        """Versioned swarm secrets of the stack: list, rotate, gc. Values are never printed."""

    @secrets.command("list")
    @site_option
    @root_option
    @format_option
    @friendly_errors
    def secrets_list(site: str | None, root: str | None, fmt: str) -> None:
        """Names, versions, ages and users of the stack's secrets (never values)."""
        from bidsflux.swarm.secretstore import our_secrets

        ctx = _context(site, root)
        table = Table(title=f"secrets of {ctx.stack}")
        for col in ("secret", "version", "docker name", "age", "used by"):
            table.add_column(col, overflow="fold")
        now = datetime.now(UTC)
        rotation_days = int(ctx.site["secrets"].get("rotation_days", 365))
        rows = []
        for v in our_secrets(ctx.client, ctx.stack):
            age = _age_days(v.created, now)
            due = age is not None and age >= rotation_days
            rows.append({"secret": v.logical, "version": v.version, "name": v.name, "age_days": age,
                         "rotation_due": due, "used_by": list(v.used_by)})
            age_text = "?" if age is None else f"{age}d" + (" (rotate: older than secrets.rotation_days)" if due else "")
            table.add_row(v.logical, str(v.version), v.name, age_text, ", ".join(v.used_by) or "-")
        if fmt == "json":
            click.echo(json.dumps(rows, indent=2))
            return
        make_console(soft_wrap=False).print(table)

    @secrets.command("rotate")
    @click.argument("names", nargs=-1)
    @click.option("--all", "all_", is_flag=True,
                  help="Rotate every generated secret of the stack (registered and minted ones are listed as skipped).")
    @site_option
    @root_option
    @click.option("--timeout", type=float, default=900, show_default=True, help=TIMEOUT_HELP)
    @yes_option
    @format_option
    @friendly_errors
    def secrets_rotate(names: tuple[str, ...], all_: bool, site: str | None, root: str | None, timeout: float,
                       yes: bool, fmt: str) -> None:
        """New version of each generated secret, services moved to it (start-first where their
        update order says so), healthy, old version removed. Safe to re-run after an interruption.

        Runner configs (`runners register`) and GitLab tokens (`gitlab tokens rotate`) are renewed
        by their own commands: naming one here is refused, --all lists them as skipped.
        On a terminal the secrets and the services that restart are shown and you are asked first."""
        from dataclasses import asdict

        from bidsflux.site.render import secret_catalog
        from bidsflux.swarm.rotation import choose, rotate, rotate_one
        from bidsflux.swarm.secretstore import our_secrets

        ctx = _context(site, root)
        catalog = secret_catalog(ctx.template.data)
        if all_ == bool(names):
            raise UserError(f"name the secrets to rotate or pass --all (secrets: {', '.join(sorted(catalog))})")
        # --all: what the stack uses, and what is kept for users outside it (`always`).
        every = sorted(set(ctx.rendered.secrets) | {n for n, e in catalog.items() if e.get("always")})
        chosen, skipped = choose(catalog, list(names), every if all_ else None)
        for line in skipped:
            _console(fmt).print(line, highlight=False, markup=False)
        users = {v.logical: sorted(v.used_by) for v in our_secrets(ctx.client, ctx.stack) if v.used_by}
        confirm_plan([f"  rotate {n}: restarts {', '.join(users.get(n, [])) or 'no running service'}" for n in chosen],
                     f"{len(chosen)} secret(s) get a new value and their services restart", yes)
        if fmt != "json":
            sys.exit(rotate(ctx, chosen, _console(), timeout))
        results = [rotate_one(ctx, n, _console(fmt), timeout) for n in chosen]
        click.echo(json.dumps([asdict(r) for r in results], indent=2))
        sys.exit(0 if all(r.ok for r in results) else 1)

    @secrets.command("gc")
    @site_option
    @root_option
    @yes_option
    @friendly_errors
    def secrets_gc(site: str | None, root: str | None, yes: bool) -> None:
        """Remove old versions of our secrets that no service references (current or previous spec).

        On a terminal the versions to remove are shown and you are asked first."""
        from bidsflux.swarm.secretstore import gc_candidates, our_secrets

        ctx = _context(site, root)
        console = _console()
        doomed = gc_candidates(our_secrets(ctx.client, ctx.stack))
        if doomed:
            confirm_plan([f"  remove {v.name}" for v in doomed], f"{len(doomed)} old secret version(s) will be removed",
                         yes)
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
        click.echo("or, from this repository on the processing server (installs what it needs, checks, joins):")
        click.echo("./scripts/bootstrap.sh --join " + join_command(client).removeprefix("docker swarm join "))

    @swarm.command("join")
    @click.option("--token", envvar="BIDSFLUX_JOIN_TOKEN", required=True,
                  help="The worker join token the manager printed (or BIDSFLUX_JOIN_TOKEN).")
    @click.argument("manager")
    @click.option("--advertise-addr", default=None, help="Address of this server the others reach (default: Docker's choice).")
    @click.option("--create-dirs", is_flag=True, help="Create missing data folders of this node's roles (owner and mode from site.yml).")
    @click.option("--yes", is_flag=True, help="Do not ask before changing this host.")
    @site_option
    @root_option
    @friendly_errors
    def join_cmd(token: str, manager: str, advertise_addr: str | None, create_dirs: bool, yes: bool,
                 site: str | None, root: str | None) -> None:
        """Join this server to the site's swarm as a worker (run on the processing server).

        MANAGER is HOST:2377 from the manager's join command. A preflight checks Docker, the ports
        between the servers and the folders of this node's roles (nodes in site.yml) first; the
        manager's next `bidsflux deploy` then places this node's services here."""
        from bidsflux.site.render import render_stack
        from bidsflux.site.repository import open_repository
        from bidsflux.swarm.join import run_join
        from bidsflux.swarm.secretstore import docker_client
        from bidsflux.validation import load_valid

        repo = open_repository(site, root)
        site_doc, template = load_valid(repo)
        rendered = render_stack(site_doc.data, template)
        sys.exit(run_join(docker_client(), site_doc.data, rendered.data, token, manager, advertise_addr, create_dirs,
                          _console(), lambda what: _confirm_or_yes(yes, what)))

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

