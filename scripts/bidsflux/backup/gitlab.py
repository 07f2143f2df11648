"""GitLab's part: `gitlab-backup create` in the GitLab task plus the two files its archive leaves out, and
the documented restore order.

Sources: GitLab docs, administration/backup_restore/backup_gitlab.md ("Back up GitLab", Docker:
`docker exec -t <container> gitlab-backup create`; archives are `<backup-id>_gitlab_backup.tar` in
/var/opt/gitlab/backups; "Storing configuration files": /etc/gitlab/gitlab-secrets.json and
/etc/gitlab/gitlab.rb are not in the archive and must be kept apart from it) and
administration/backup_restore/restore_gitlab.md (same version and type only; secrets restored
with the archive; for Docker: stop puma and sidekiq, `gitlab-backup restore BACKUP=<id>`,
restart, `gitlab-rake gitlab:check SANITIZE=true`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bidsflux.backup.containers import copy_in, copy_out, exec_ok
from bidsflux.diagnostics import UserError

BACKUP_DIR = "/var/opt/gitlab/backups"
CONFIG_FILES = ("/etc/gitlab/gitlab-secrets.json", "/etc/gitlab/gitlab.rb")
VERSION_FILE = "/opt/gitlab/embedded/service/gitlab-rails/VERSION"
ARCHIVE = re.compile(r"^(\d+_\d{4}_\d{2}_\d{2}_(\d+\.\d+\.\d+(?:-[a-z]+)?))_gitlab_backup\.tar$")


def version(container: Any) -> str:
    return exec_ok(container, ["cat", VERSION_FILE], "read GitLab's version").strip()


def _archives(container: Any) -> list[str]:
    listing = exec_ok(container, ["ls", "-1", BACKUP_DIR], "list GitLab's backups")
    return sorted(n for n in listing.split() if ARCHIVE.match(n))


def backup(container: Any, dest: Path) -> dict[str, Any]:
    """Create a GitLab backup, copy it and the configuration files to `dest`, remove it from the task."""
    before = set(_archives(container))
    # STRATEGY=copy: a consistent archive while GitLab keeps serving (backup_gitlab.md, "Backup strategy option").
    exec_ok(container, ["gitlab-backup", "create", "STRATEGY=copy"], "gitlab-backup create")
    new = [n for n in _archives(container) if n not in before]
    if not new:
        raise UserError("gitlab-backup create finished but left no new archive in " + BACKUP_DIR)
    name = new[-1]
    copy_out(container, f"{BACKUP_DIR}/{name}", dest / name)
    for path in CONFIG_FILES:
        copy_out(container, path, dest / Path(path).name)
    # The copy on the target is the backup; one inside the task only fills GitLab's disk.
    exec_ok(container, ["rm", "-f", f"{BACKUP_DIR}/{name}"], "remove the archive from the GitLab task")
    match = ARCHIVE.match(name)
    assert match is not None
    return {"archive": name, "backup_id": match.group(1), "gitlab_version": match.group(2)}


def restore(container: Any, src: Path, info: dict[str, Any], log: list[str]) -> None:
    """Restore in the documented order; refuses a GitLab of another version or type."""
    live = version(container)
    wanted = info["gitlab_version"]
    if live.split("-")[0] != wanted.split("-")[0]:
        raise UserError(f"this backup is of GitLab {wanted}, the running GitLab is {live}: GitLab restores only "
                        f"onto the same version (restore_gitlab.md); set images.gitlab to {wanted}, deploy, retry")
    steps: list[tuple[str, list[str]]] = []
    # 1. secrets and configuration first: without gitlab-secrets.json CI variables and 2FA are unreadable.
    copy_in(container, src / "gitlab-secrets.json", "/etc/gitlab", "gitlab-secrets.json")
    copy_in(container, src / "gitlab.rb", "/etc/gitlab", "gitlab.rb")
    log.append("restored /etc/gitlab/gitlab-secrets.json and gitlab.rb")
    steps.append(("gitlab-ctl reconfigure", ["gitlab-ctl", "reconfigure"]))
    # 2. the archive where gitlab-backup looks for it, owned by git.
    copy_in(container, src / info["archive"], BACKUP_DIR, info["archive"], uid=998, gid=998, mode=0o600)
    exec_ok(container, ["chown", "git:git", f"{BACKUP_DIR}/{info['archive']}"], "give the archive to git")
    log.append(f"copied {info['archive']} into {BACKUP_DIR}")
    # 3. stop what writes to the database, restore, restart, check.
    steps += [
        ("stop puma", ["gitlab-ctl", "stop", "puma"]),
        ("stop sidekiq", ["gitlab-ctl", "stop", "sidekiq"]),
        ("gitlab-backup restore", ["gitlab-backup", "restore", f"BACKUP={info['backup_id']}", "force=yes"]),
        ("gitlab-ctl restart", ["gitlab-ctl", "restart"]),
        ("gitlab:check", ["gitlab-rake", "gitlab:check", "SANITIZE=true"]),
    ]
    for what, cmd in steps:
        exec_ok(container, cmd, what)
        log.append(what)
