#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine (as root), then runs them.
#   ./scripts/test.sh [pytest args...]
# Installs: Debian packages (docker.io, dcmtk, git-annex, busybox-static), a virtual
# environment with bidsflux and its test extras, gitlab-ci-local from npm; starts the Docker
# daemon when none answers. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages -------------------------------------------------------------------
APT_PACKAGES=(docker.io dcmtk git-annex busybox-static git iproute2 nodejs npm docker-compose openssl age rclone haproxy docker-registry pebble)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs/npm may come from elsewhere on this kind of machine: only install when absent.
command -v node >/dev/null && missing=("${missing[@]/nodejs}")
command -v npm >/dev/null && missing=("${missing[@]/npm}")
read -r -a missing <<<"${missing[*]:-}"
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Docker daemon ---------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  log "starting the Docker daemon"
  as_root sh -c 'nohup dockerd >/var/log/bidsflux-dockerd.log 2>&1 &'
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    [ "$i" -eq 60 ] && { echo "dockerd did not start; see /var/log/bidsflux-dockerd.log" >&2; exit 1; }
    sleep 1
  done
fi

# --- single-node swarm -----------------------------------------------------------------
# The integration tests need a swarm manager. One we create here is left again at the end so
# the machine ends as it started; an existing swarm is used as it is and never touched.
if [ "$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)" != "active" ]; then
  log "initialising a single-node swarm for the tests (left again at the end)"
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
  trap 'docker swarm leave --force >/dev/null 2>&1 || true' EXIT
fi
# A swarm just initialised (or a daemon just restarted) needs a moment before its node is ready
# and its ingress network exists; tests that deploy at once would otherwise fail at random.
for i in $(seq 1 30); do
  [ "$(docker node inspect self --format '{{.Status.State}}' 2>/dev/null)" = ready ] &&
    docker network inspect ingress >/dev/null 2>&1 && break
  sleep 1
done

# --- local base image -----------------------------------------------------------------
# Real images (the ops image, Mercure, test images) build FROM a Debian base made here, since
# Docker Hub cannot be reached; cached, so a second run builds nothing.
log "local Debian base image"
as_root ./tests/images/debian-base.sh

# --- Python environment ----------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.bidsflux-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing bidsflux with test extras"
  # This machine's pip configuration names local indexes that may be absent; those warnings are noise.
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 |
    { grep -v "is ignored: it is neither a file nor a directory" || true; }
  touch "$stamp"
fi

# --- npm tool --------------------------------------------------------------------------
GCL_VERSION=4.72.0
if [ ! -x .tools/node_modules/.bin/gitlab-ci-local ] ||
   ! grep -q "\"version\": \"$GCL_VERSION\"" .tools/node_modules/gitlab-ci-local/package.json 2>/dev/null; then
  log "installing gitlab-ci-local@$GCL_VERSION"
  mkdir -p .tools
  npm install --silent --no-audit --no-fund --prefix .tools "gitlab-ci-local@$GCL_VERSION" >/dev/null
fi
export PATH="$ROOT/.tools/node_modules/.bin:$ROOT/.venv/bin:$PATH"

# --- lint and tests --------------------------------------------------------------------
log "ruff"
ruff check scripts tests benchmarks
log "pytest"
export TESTCONTAINERS_RYUK_DISABLED=true
set +e
python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
# pytest's 5 means "no tests collected": that must fail loudly, not pass.
exit $rc
