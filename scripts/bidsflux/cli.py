"""The `bidsflux` command line: one entry point, a subcommand per task."""

from __future__ import annotations

import click

from bidsflux import __version__
from bidsflux.backup import cli as backup_cli
from bidsflux.ci import cli as ci_cli
from bidsflux.gitlab import cli as gitlab_cli
from bidsflux.health import cli as health_cli
from bidsflux.mercure import cli as mercure_cli
from bidsflux.site import cli as site_cli
from bidsflux.swarm import cli as swarm_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bidsflux")
def main() -> None:
    """Run a BIDS-flux data stack (GitLab, runners, MinIO, DICOM endpoint) as code."""


# Each domain registers its own commands; `bidsflux --help` lists them in this order.
for _module in (site_cli, swarm_cli, gitlab_cli, mercure_cli, health_cli, backup_cli, ci_cli):
    _module.register(main)


if __name__ == "__main__":  # pragma: no cover
    main()

__all__ = ["main"]
