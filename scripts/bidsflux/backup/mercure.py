"""Mercure's part: its config folder (mercure.json, env files) and a dump of its database.

The database runs as the `db` service of Mercure's compose project (PostgreSQL, user and database
`mercure`, as in Mercure's docker-compose.yml); pg_dump runs inside it, so no password leaves it."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from bidsflux.backup.containers import compose_container, copy_in, exec_ok

SERVICE, DB, USER = "db", "mercure", "mercure"


def _project(mercure_base: Path) -> str:
    """The compose project `mercure up` recorded for this site (its `.env`), else Mercure's default."""
    from bidsflux.mercure.compose import project_of

    return project_of({"paths": {"mercure_base": {"path": str(mercure_base)}}})


def backup(client: Any, mercure_base: Path, dest: Path) -> dict[str, Any]:
    dest.mkdir(parents=True, exist_ok=True)
    config = mercure_base / "config"
    with tarfile.open(dest / "mercure-config.tar", "w") as tar:
        tar.add(config, arcname="config")
    db = compose_container(client, _project(mercure_base), SERVICE)
    # Custom format: pg_restore can restore it whole or table by table.
    exec_ok(db, ["pg_dump", "-U", USER, "-d", DB, "--format=custom"], "pg_dump of Mercure's database",
            stream_to=dest / "mercure-db.dump")
    return {"config_files": sum(1 for p in config.rglob("*") if p.is_file()),
            "db_dump_bytes": (dest / "mercure-db.dump").stat().st_size}


def restore(client: Any, mercure_base: Path, src: Path, log: list[str]) -> None:
    with tarfile.open(src / "mercure-config.tar") as tar:
        tar.extractall(mercure_base, filter="data")
    log.append(f"restored {mercure_base / 'config'}")
    db = compose_container(client, _project(mercure_base), SERVICE)
    copy_in(db, src / "mercure-db.dump", "/tmp", "bidsflux-restore.dump", mode=0o644)
    exec_ok(db, ["pg_restore", "-U", USER, "-d", DB, "--clean", "--if-exists", "--no-owner",
                 "/tmp/bidsflux-restore.dump"], "pg_restore of Mercure's database")
    exec_ok(db, ["rm", "-f", "/tmp/bidsflux-restore.dump"], "remove the dump copy")
    log.append("restored Mercure's database")
