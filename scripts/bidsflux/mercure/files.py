"""Writing Mercure's files the way Mercure expects: under its lock, atomically, with a backup.

Mercure's services refuse to read `<name>.json` while `<name>.lock` exists in the same folder and
re-read the file when its mtime changes. So a writer creates the lock exclusively (waiting while
someone else holds it), writes a temporary file in the same folder, fsyncs it, keeps a
timestamped copy of the old file, renames the new one into place and removes the lock, even on
error. A reader killed at any moment sees either the old or the new file, never a partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bidsflux.diagnostics import UserError

BACKUPS_KEPT = 5  # timestamped .bak copies kept per file; older ones are removed


def lock_path(target: Path) -> Path:
    return target.with_suffix(".lock")


def _stale_bidsflux_lock(lock: Path) -> bool:
    """True when `lock` was left by a bidsflux run on this host that no longer exists (killed).
    Locks of anyone else (Mercure's web interface) are never judged stale."""
    try:
        words = lock.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return False
    if len(words) != 5 or words[:2] != ["bidsflux", "pid"] or words[3] != "on" or words[4] != socket.gethostname():
        return False
    try:
        os.kill(int(words[2]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


@contextlib.contextmanager
def mercure_lock(target: Path, timeout: float, on_wait: Callable[[float], None] | None = None,
                 poll: float = 0.2) -> Iterator[Path]:
    """Hold `<target stem>.lock` next to `target`; wait up to `timeout` seconds for it."""
    lock = lock_path(target)
    start = time.monotonic()
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _stale_bidsflux_lock(lock):
                # A push killed while holding the lock; Mercure ignores its config until it goes.
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            waited = time.monotonic() - start
            if waited >= timeout:
                raise UserError(
                    f"{lock} is held by someone else (Mercure's web interface or another push) and was "
                    f"not released within {timeout:g}s; nothing was written. Retry later, or remove the "
                    "lock file if no Mercure process is writing (check with `docker compose ps`)."
                ) from None
            if on_wait is not None:
                on_wait(waited)
            time.sleep(poll)
            continue
        except OSError as exc:
            raise UserError(f"cannot create {lock}: {exc.strerror}; run as the owner of {lock.parent} or root") from None
        break
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(f"bidsflux pid {os.getpid()} on {socket.gethostname()}\n")
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def backup_name(target: Path, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    return target.with_name(f"{target.name}.{stamp}.bak")


def atomic_write(target: Path, text: str, mode: int = 0o644, owner: tuple[int, int] | None = None) -> Path | None:
    """Replace `target` with `text` (temp file + fsync + rename); returns the backup of the old
    file (None when there was none). Call it while holding the lock."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    backup: Path | None = None
    created = False
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
        created = True
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if target.exists():
            st = target.stat()
            os.chmod(tmp, st.st_mode & 0o7777)
            owner = owner or (st.st_uid, st.st_gid)
            backup = backup_name(target)
            shutil.copy2(target, backup)
            prune_backups(target)
        if owner is not None and os.geteuid() == 0:
            os.chown(tmp, *owner)
        os.replace(tmp, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}; the old file is unchanged") from None
    finally:
        if created:  # never remove a file someone else made under that name
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return backup


def prune_backups(target: Path, keep: int = BACKUPS_KEPT) -> list[Path]:
    """Remove all but the newest `keep` backups of `target` (names sort by their UTC stamp)."""
    backups = sorted(target.parent.glob(f"{target.name}.*.bak"))
    old = backups[:-keep] if keep else backups
    for b in old:
        with contextlib.suppress(FileNotFoundError):
            b.unlink()
    return old


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, None when the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); fix or restore it from a .bak copy next to it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data
