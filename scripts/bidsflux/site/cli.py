"""`bidsflux validate` and `bidsflux render`: the site files checked and rendered."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bidsflux.console import format_option, friendly_errors, root_option, site_option
from bidsflux.diagnostics import to_json


def register(main: click.Group) -> None:
    @main.command()
    @site_option
    @root_option
    @format_option
    @friendly_errors
    def validate(site: str | None, root: str | None, fmt: str) -> None:
        """Check every file under stack/ against its schema and the cross-file rules.

        Exit 0 when all is well, 1 when anything is wrong (every problem is listed)."""
        from bidsflux.site.repository import open_repository
        from bidsflux.validation import validate as run_validate

        repo = open_repository(site, root)
        problems = run_validate(repo)
        if fmt == "json":
            click.echo(to_json(problems))
        else:
            for p in problems:
                click.echo(str(p))
            if not problems:
                click.echo(f"{repo.shown(repo.site_file)} and the stack files are valid")
            else:
                click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(1 if problems else 0)


    @main.command()
    @site_option
    @root_option
    @click.option("--output", "output", type=click.Path(file_okay=False), default=None,
                  help="Write bidsflux.stack.yml and mercure/docker-compose.yml into this folder.")
    @click.option("--secret-versions", type=click.Choice(["auto", "live", "initial"]), default="auto", show_default=True,
                  help="Where secret versions come from: the live swarm (live), version 1 (initial), "
                       "or the swarm when one is reachable (auto).")
    @friendly_errors
    def render(site: str | None, root: str | None, output: str | None, secret_versions: str) -> None:
        """Print the resolved stack file that `docker stack deploy` receives."""
        from bidsflux.mercure.compose import render_mercure_compose
        from bidsflux.site.repository import open_repository
        from bidsflux.swarm.stackfile import load_and_render

        repo = open_repository(site, root)
        rendered, site_doc = load_and_render(repo, secret_versions)
        text = rendered.to_yaml()
        if output is None:
            click.echo(text, nl=False)
            return
        out = Path(output)
        (out / "mercure").mkdir(parents=True, exist_ok=True)
        (out / "bidsflux.stack.yml").write_text(text, encoding="utf-8")
        (out / "mercure" / "docker-compose.yml").write_text(render_mercure_compose(repo, site_doc), encoding="utf-8")
        click.echo(f"wrote {out / 'bidsflux.stack.yml'} and {out / 'mercure' / 'docker-compose.yml'}")
