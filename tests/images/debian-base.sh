#!/usr/bin/env bash
# A Debian 12 base image made here (Docker Hub cannot be reached): every Dockerfile of the
# project takes its base as an ARG, so tests build the real images FROM this one.
#   tests/images/debian-base.sh [IMAGE]     (default bidsflux-test/debian:bookworm)
# Cached: when the image exists, nothing is done. Needs root (mmdebstrap) and a Debian mirror.
set -euo pipefail
IMAGE=${1:-bidsflux-test/debian:bookworm}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  exit 0
fi
if ! command -v mmdebstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi
# The mirror this host's apt uses (deb822 sources first, then the classic list).
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$MIRROR" ]; then
  MIRROR=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "building $IMAGE from $MIRROR (mmdebstrap, about 1-2 minutes)"
mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$tmp/rootfs.tar" "$MIRROR"
docker import "$tmp/rootfs.tar" "$IMAGE" >/dev/null
echo "built $IMAGE"
