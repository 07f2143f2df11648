#!/usr/bin/env bash
# Day zero on a fresh Debian or Ubuntu server: install what is missing (Docker engine and its
# compose plugin, git, git-annex, DataLad, Python's venv) from the distribution, create a virtual
# environment with bidsflux, then bootstrap the site (the data server) or join it (the processing
# server). Nothing changes on the host without a yes: it asks first unless --yes.
#
#   ./scripts/bootstrap.sh [--yes] [--site FILE] [other `bidsflux bootstrap` options]
#   ./scripts/bootstrap.sh --join --token SWMTKN-... MANAGER:2377 [--yes] [--site FILE]
#   ./scripts/bootstrap.sh --check                   # what would be installed; changes nothing
#   ./scripts/bootstrap.sh --install-only [git,docker,...] [--yes]   # only the host packages
#
# --check exits 0 when nothing is missing and 2 when something would be installed.
# Data folders are created by bidsflux with the owner and mode site.yml gives (it says so).
set -euo pipefail
cd "$(dirname "$0")/.."

YES=0 CHECK=0 JOIN=0 INSTALL_ONLY=0 ONLY=""
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --yes|-y) YES=1; PASS+=("--yes") ;;
    --check|--dry-run) CHECK=1 ;;
    --join) JOIN=1 ;;
    --install-only) INSTALL_ONLY=1
      if [ $# -gt 1 ] && [[ "$2" != -* ]]; then ONLY="$2"; shift; fi ;;
    --install-only=*) INSTALL_ONLY=1; ONLY="${1#*=}" ;;
    *) PASS+=("$1") ;;
  esac
  shift
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "run as root (or install sudo): $*"; fi; }

# --- what this server needs: component, how to tell it is there, the package ---------------
COMPONENTS=(docker compose git git-annex datalad python-venv)
have() {
  case "$1" in
    docker) command -v dockerd >/dev/null && command -v docker >/dev/null ;;
    compose) { command -v docker >/dev/null && docker compose version >/dev/null 2>&1; } || command -v docker-compose >/dev/null ;;
    git) command -v git >/dev/null ;;
    git-annex) command -v git-annex >/dev/null ;;
    datalad) command -v datalad >/dev/null ;;
    python-venv) command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' >/dev/null 2>&1 ;;
  esac
}
# apt knows a package (after `apt-get update`).
known() { [ -n "$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" {print $2}')" ]; }
package_of() {
  case "$1" in
    docker) echo docker.io ;;
    # Ubuntu ships the compose v2 plugin as docker-compose-v2, Docker's own repository as
    # docker-compose-plugin, Debian as docker-compose (v2 from trixie, v1 in bookworm).
    compose) for p in docker-compose-v2 docker-compose-plugin docker-compose; do known "$p" && { echo "$p"; return; }; done
             echo docker-compose ;;
    git) echo git ;;
    git-annex) echo git-annex ;;
    datalad) echo datalad ;;
    python-venv) echo "python3 python3-venv" ;;
  esac
}

. /etc/os-release 2>/dev/null || true
case " ${ID:-} ${ID_LIKE:-} " in
  *" debian "*|*" ubuntu "*) SUPPORTED=1 ;;
  *) SUPPORTED=0 ;;
esac

wanted=("${COMPONENTS[@]}")
if [ -n "$ONLY" ]; then
  IFS=, read -r -a wanted <<<"$ONLY"
  for c in "${wanted[@]}"; do
    [[ " ${COMPONENTS[*]} " == *" $c "* ]] || die "--install-only: unknown component '$c' (known: ${COMPONENTS[*]})"
  done
fi
missing=()
for c in "${wanted[@]}"; do have "$c" || missing+=("$c"); done

if [ ${#missing[@]} -eq 0 ]; then
  say "this server has what bidsflux needs (${wanted[*]})"
elif [ "$SUPPORTED" -ne 1 ]; then
  die "missing: ${missing[*]}; this is ${PRETTY_NAME:-an unknown system}, not Debian or Ubuntu: install them yourself"
else
  packages=()
  for c in "${missing[@]}"; do read -r -a p <<<"$(package_of "$c")"; packages+=("${p[@]}"); done
  if [ "$CHECK" -eq 1 ]; then
    say "missing on ${PRETTY_NAME:-this server}: ${missing[*]}"
    say "would install (apt-get, from the distribution): ${packages[*]}"
    [ "$INSTALL_ONLY" -eq 1 ] || say "would then create .venv with bidsflux and run: bidsflux $([ "$JOIN" -eq 1 ] && echo "swarm join" || echo bootstrap) --create-dirs"
    exit 2
  fi
  say "missing on ${PRETTY_NAME:-this server}: ${missing[*]}"
  say "will install with apt-get: ${packages[*]}"
  if [ "$YES" -ne 1 ]; then
    ( : </dev/tty ) 2>/dev/null || die "installing packages changes this server; pass --yes to do it without a prompt"
    read -r -p "Install them now? [y/N] " answer </dev/tty
    [[ "$answer" =~ ^[Yy] ]] || die "stopped at your request; nothing was changed"
  fi
  as_root apt-get update -qq
  # Names resolved again now that the package lists are fresh (compose differs per release).
  packages=()
  for c in "${missing[@]}"; do read -r -a p <<<"$(package_of "$c")"; packages+=("${p[@]}"); done
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${packages[@]}"
  for c in "${missing[@]}"; do have "$c" || die "$c is still missing after installing ${packages[*]}"; done
  say "installed: ${packages[*]}"
fi
[ "$CHECK" -eq 1 ] && { [ "$INSTALL_ONLY" -eq 1 ] || say "would then create .venv with bidsflux and run bidsflux $([ "$JOIN" -eq 1 ] && echo "swarm join" || echo bootstrap)"; exit 0; }

# --- the Docker daemon ----------------------------------------------------------------------
if [[ " ${wanted[*]} " == *" docker "* ]] && ! docker info >/dev/null 2>&1; then
  say "starting the Docker daemon"
  if [ -d /run/systemd/system ]; then
    as_root systemctl enable --now docker
  else
    as_root service docker start || true
  fi
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || die "the Docker daemon does not answer (systemctl status docker)"
fi
[ "$INSTALL_ONLY" -eq 1 ] && exit 0

# --- bidsflux -------------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e .
if [ "$JOIN" -eq 1 ]; then
  exec .venv/bin/bidsflux swarm join --create-dirs "${PASS[@]}"
fi
exec .venv/bin/bidsflux bootstrap --create-dirs "${PASS[@]}"
