#!/usr/bin/env bash
# Day zero: create a virtual environment, install bidsflux and bootstrap the site.
#   ./scripts/bootstrap.sh [--site FILE] [other bidsflux bootstrap options]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e .
if ! .venv/bin/bidsflux bootstrap --help >/dev/null 2>&1; then
  echo "bidsflux bootstrap is not built yet (see the swarm engine issue); 'bidsflux validate' and 'bidsflux render' work today." >&2
  .venv/bin/bidsflux validate "$@"
  exit 1
fi
exec .venv/bin/bidsflux bootstrap "$@"
