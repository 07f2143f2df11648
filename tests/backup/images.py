"""Images for the backup tests, built FROM the local Debian base (tests/images/debian-base.sh) and tagged
by a hash of their inputs, so a second run builds nothing.

- postgres: Debian's PostgreSQL 15, the program of the `postgres` image Mercure's compose uses,
  with the user and database `mercure` of Mercure's docker-compose.yml.
- gitlab-backup stand-in: GitLab's backup commands as its docs describe them (backup_gitlab.md,
  restore_gitlab.md): `gitlab-backup create` writes `<id>_gitlab_backup.tar` into
  /var/opt/gitlab/backups with `<id>` = `<epoch>_<YYYY_MM_DD>_<version>`, containing
  backup_information.yml and db/database.sql.gz; `gitlab-backup restore BACKUP=<id>` refuses while
  puma or sidekiq run and refuses an archive of another version; configuration lives in
  /etc/gitlab (gitlab-secrets.json, gitlab.rb). Every command it runs is appended to
  /var/log/standin-commands.log so a test can check the order."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from typing import Any

from support import require

BASE = "bidsflux-test/debian:bookworm"

POSTGRES_DOCKERFILE = f"""FROM {BASE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null \\
 && rm -rf /var/lib/apt/lists/*
COPY entry.sh /entry.sh
CMD ["sh", "/entry.sh"]
"""
POSTGRES_ENTRY = """set -e
PG=/usr/lib/postgresql/15/bin
mkdir -p /pgdata /run/postgresql && chown postgres /pgdata /run/postgresql
su postgres -c "$PG/initdb -D /pgdata -A trust -U postgres" >/dev/null
su postgres -c "$PG/pg_ctl -D /pgdata -o '-c listen_addresses=' -w start" >/dev/null
su postgres -c "psql -q -c \\"CREATE USER mercure\\"; psql -q -c \\"CREATE DATABASE mercure OWNER mercure\\""
touch /ready
exec tail -f /dev/null
"""

GITLAB_DOCKERFILE = f"""FROM {BASE}
COPY bin/ /usr/bin/
RUN chmod 755 /usr/bin/gitlab-backup /usr/bin/gitlab-ctl /usr/bin/gitlab-rake \\
 && groupadd -g 998 git && useradd -u 998 -g 998 git \\
 && mkdir -p /var/opt/gitlab/backups /etc/gitlab /opt/gitlab/embedded/service/gitlab-rails /run/standin \\
 && chown git:git /var/opt/gitlab/backups \\
 && echo 17.7.3-ee > /opt/gitlab/embedded/service/gitlab-rails/VERSION \\
 && echo '{{"gitlab_rails": {{"db_key_base": "stand-in-db-key"}}}}' > /etc/gitlab/gitlab-secrets.json \\
 && echo "external_url 'https://gitlab.example.org'" > /etc/gitlab/gitlab.rb \\
 && touch /run/standin/puma /run/standin/sidekiq
CMD ["tail", "-f", "/dev/null"]
"""
LOG = 'echo "$(basename "$0") $*" >> /var/log/standin-commands.log'
GITLAB_BACKUP = f"""#!/bin/bash
set -e
{LOG}
version=$(cat /opt/gitlab/embedded/service/gitlab-rails/VERSION)
case "$1" in
create)
  id="$(date +%s)_$(date +%Y_%m_%d)_$version"
  work=$(mktemp -d); mkdir -p "$work/db"
  printf 'gitlab_version: %s\\nbackup_created_at: %s\\n' "$version" "$(date -u +%FT%TZ)" > "$work/backup_information.yml"
  echo "-- stand-in database dump" | gzip > "$work/db/database.sql.gz"
  # Which secrets this archive belongs to (restore_gitlab.md: "GitLab secrets must be restored").
  sha256sum /etc/gitlab/gitlab-secrets.json | cut -d' ' -f1 > "$work/secrets.sha256"
  tar -C "$work" -cf "/var/opt/gitlab/backups/${{id}}_gitlab_backup.tar" .
  chown git:git "/var/opt/gitlab/backups/${{id}}_gitlab_backup.tar"
  echo "Backup $id is done." ;;
restore)
  id=""; for a in "$@"; do case "$a" in BACKUP=*) id="${{a#BACKUP=}}";; esac; done
  for svc in puma sidekiq; do
    if [ -e /run/standin/$svc ]; then echo "$svc is running: stop it before restoring" >&2; exit 1; fi
  done
  f="/var/opt/gitlab/backups/${{id}}_gitlab_backup.tar"
  [ -f "$f" ] || {{ echo "The backup file $f does not exist" >&2; exit 1; }}
  tar -xOf "$f" ./backup_information.yml | grep -q "gitlab_version: $version$" || {{
    echo "GitLab version mismatch: this backup is not of $version" >&2; exit 1; }}
  # Real GitLab restores anyway and then cannot decrypt CI variables or 2FA; the stand-in refuses,
  # so a restore that forgets the secrets fails here instead of later.
  [ "$(tar -xOf "$f" ./secrets.sha256)" = "$(sha256sum /etc/gitlab/gitlab-secrets.json | cut -d' ' -f1)" ] || {{
    echo "gitlab-secrets.json is not the one of this backup" >&2; exit 1; }}
  echo "Restore task is done." ;;
*) echo "usage: gitlab-backup create|restore" >&2; exit 2 ;;
esac
"""
GITLAB_CTL = f"""#!/bin/bash
{LOG}
case "$1" in
stop) [ -n "$2" ] && rm -f /run/standin/$2 || rm -f /run/standin/* ;;
start|restart) touch /run/standin/puma /run/standin/sidekiq ;;
reconfigure|status) ;;
*) echo "usage: gitlab-ctl ..." >&2; exit 2 ;;
esac
"""
GITLAB_RAKE = f"""#!/bin/bash
{LOG}
[ "$1" = gitlab:check ] && echo "Checking GitLab ... Finished"
"""


def _build(client: Any, name: str, files: dict[str, str]) -> str:
    require(client.images.list(name=BASE) != [], f"{BASE} is missing: run tests/images/debian-base.sh (test.sh does)")
    digest = hashlib.sha256("\0".join(f"{k}\0{v}" for k, v in sorted(files.items())).encode()).hexdigest()[:12]
    tag = f"bidsflux-test/{name}:{digest}"
    if client.images.list(name=tag):
        return tag
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    proc = subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=buf.getvalue(), capture_output=True,
                          env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return tag


def postgres_image(client: Any) -> str:
    return _build(client, "backup-postgres", {"Dockerfile": POSTGRES_DOCKERFILE, "entry.sh": POSTGRES_ENTRY})


def gitlab_standin_image(client: Any) -> str:
    return _build(client, "backup-gitlab-standin", {
        "Dockerfile": GITLAB_DOCKERFILE, "bin/gitlab-backup": GITLAB_BACKUP, "bin/gitlab-ctl": GITLAB_CTL,
        "bin/gitlab-rake": GITLAB_RAKE})
