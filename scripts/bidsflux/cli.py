"""The `bidsflux` command line: one entry point, a subcommand per task."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from bidsflux import __version__
from bidsflux.diagnostics import UserError, to_json

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def friendly_errors(func: F) -> F:
    """A user's mistake or an unreachable engine ends in a message and exit 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            sys.exit(1)
        except OSError as exc:
            # Files and folders the user named (permissions, full disk, missing parent folder).
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            err_console.print(f"[bold red]error:[/]{where}: {exc.strerror or exc}", markup=True, highlight=False)
            sys.exit(1)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


site_option = click.option(
    "--site", "site", type=click.Path(dir_okay=False), default=None,
    help="Site file (default: stack/site.yml of the repository).",
)
format_option = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="text for people, json for tools and merge-request notes.",
)
root_option = click.option(
    "--root", "root", type=click.Path(file_okay=False), default=None,
    help="Repository root (default: found from the current folder).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bidsflux")
def main() -> None:
    """Run a BIDS-flux data stack (GitLab, runners, MinIO, DICOM endpoint) as code."""


@main.command()
@site_option
@root_option
@format_option
@friendly_errors
def validate(site: str | None, root: str | None, fmt: str) -> None:
    """Check every file under stack/ against its schema and the cross-file rules.

    Exit 0 when all is well, 1 when anything is wrong (every problem is listed)."""
    from bidsflux.site.checks import validate as run_validate
    from bidsflux.site.repository import open_repository

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
    from bidsflux.site.repository import open_repository
    from bidsflux.swarm.stackfile import load_and_render, render_mercure_compose

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


def _register_optional() -> None:
    """Domain command groups register themselves here (each lives in its own module)."""
    import importlib

    for module, attr in (
        ("bidsflux.swarm.cli", "register"),
        ("bidsflux.gitlab.cli", "register"),
        ("bidsflux.mercure.cli", "register"),
        ("bidsflux.health.cli", "register"),
        ("bidsflux.ci.cli", "register"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        getattr(mod, attr)(main)


_register_optional()


if __name__ == "__main__":  # pragma: no cover
    main()

__all__ = ["main", "friendly_errors", "site_option", "root_option", "format_option", "json"]
