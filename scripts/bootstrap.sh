#!/usr/bin/env bash
# Day zero: create a virtual environment, install bidsflux and bootstrap the site.
#   ./scripts/bootstrap.sh [--site FILE] [other bidsflux bootstrap options]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/bidsflux bootstrap "$@"
