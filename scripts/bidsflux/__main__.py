"""`python -m bidsflux` runs the CLI (the console script `bidsflux` is the usual way)."""

from bidsflux.cli import main

main(prog_name="bidsflux")  # completion and usage say `bidsflux` however it was started
