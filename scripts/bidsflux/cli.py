"""The `bidsflux` command line: one entry point, a subcommand per task."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from bidsflux import __version__
from bidsflux.backup import cli as backup_cli
from bidsflux.canary import cli as canary_cli
from bidsflux.ci import cli as ci_cli
from bidsflux.console import EXIT_USAGE, group_options, verbosity
from bidsflux.gitlab import cli as gitlab_cli
from bidsflux.health import cli as health_cli
from bidsflux.helptext import decorate
from bidsflux.images import cli as images_cli
from bidsflux.mercure import cli as mercure_cli
from bidsflux.proxy import cli as proxy_cli
from bidsflux.s3 import cli as s3_cli
from bidsflux.site import cli as site_cli
from bidsflux.swarm import cli as swarm_cli
from bidsflux.swarm import doctor as doctor_cli


class BidsfluxGroup(click.Group):
    """Click's usage errors exit 2, which our plans use for "changes pending": map them to 64."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = EXIT_USAGE
            raise


def commit() -> str:
    """The commit this code came from: BIDSFLUX_COMMIT (set when the ops image is built), else git."""
    if os.environ.get("BIDSFLUX_COMMIT"):
        return os.environ["BIDSFLUX_COMMIT"][:12]
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"bidsflux {__version__} (commit {commit()})")
    ctx.exit()


@click.group(cls=BidsfluxGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="\b\nExit codes: 0 success or no change, 1 error, 2 changes pending (plan commands),\n"
                    "64 usage error, 130 interrupted.\n\n\b\nShell completion (bash; zsh and fish alike):\n"
                    '  eval "$(_BIDSFLUX_COMPLETE=bash_source bidsflux)"')
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and the commit, then exit.")
@group_options
def main() -> None:
    """Run a BIDS-flux data stack (GitLab, runners, MinIO, DICOM endpoint) as code.

    Options before the subcommand (--site, --root, -q, -v, --connect-timeout) apply to it."""
    if verbosity() > 0:
        import logging

        level = logging.INFO if verbosity() == 1 else logging.DEBUG
        logging.basicConfig(level=level, format="%(name)s: %(message)s")


# Each domain registers its own commands; `bidsflux --help` lists them in this order.
for _module in (site_cli, swarm_cli, doctor_cli, proxy_cli, gitlab_cli, images_cli, s3_cli, mercure_cli, health_cli, canary_cli, backup_cli, ci_cli):
    _module.register(main)
decorate(main)


if __name__ == "__main__":  # pragma: no cover
    main()

__all__ = ["main"]
