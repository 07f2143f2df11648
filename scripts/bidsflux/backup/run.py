"""`bidsflux backup`: each part in turn (a failing part never stops the others), then the snapshot on the
target, `latest.json` when every part succeeded, and retention."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bidsflux.backup import rclone
from bidsflux.backup import values as age
from bidsflux.backup.config import BackupConfig
from bidsflux.backup.snapshot import Target, manifest, new_id
from bidsflux.diagnostics import UserError

SOURCE = "bfxsource"


@dataclass
class PartResult:
    """Shaped like a health check result, so the pipeline reports both the same way."""

    name: str
    status: str  # ok | fail | skipped
    reason: str
    fix: str = ""
    elapsed: float = 0.0
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def known_values(values_file: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The values file when readable, with BIDSFLUX_SECRET_<NAME> overrides (a restore onto a fresh host
    has no values file yet: the target's keys come from the environment)."""
    from bidsflux.swarm.secretstore import read_values_file

    out: dict[str, str] = {}
    try:
        out.update(read_values_file(values_file))
    except (OSError, ValueError):
        pass
    out.update({k[len("BIDSFLUX_SECRET_"):].lower(): v for k, v in environ.items() if k.startswith("BIDSFLUX_SECRET_")})
    return out


def source_env(cfg: BackupConfig, values: Mapping[str, str]) -> dict[str, str]:
    key, secret = cfg.s3_credentials
    missing = [k for k in (key, secret) if not values.get(k)]
    if missing:
        raise UserError(f"the S3 keys {', '.join(missing)} are not in the values file {cfg.values_file}")
    prefix = f"RCLONE_CONFIG_{SOURCE.upper()}_"
    return {prefix + "TYPE": "s3", prefix + "PROVIDER": "Other", prefix + "ENDPOINT": cfg.s3_endpoint,
            prefix + "ACCESS_KEY_ID": values[key], prefix + "SECRET_ACCESS_KEY": values[secret],
            prefix + "FORCE_PATH_STYLE": "true", **cfg.ca_env()}


def _encrypt_in_place(paths: list[Path], recipients: tuple[str, ...]) -> None:
    for p in paths:
        age.encrypt(p, recipients, p.with_name(p.name + ".age"))
        p.unlink()


def _values(cfg: BackupConfig, staging: Path, values: Mapping[str, str]) -> dict[str, Any]:
    age.encrypt(Path(cfg.values_file), cfg.recipients, staging / "values.env.age")
    return {"keys": len(values)}


def _gitlab(cfg: BackupConfig, staging: Path, client: Any) -> dict[str, Any]:
    from bidsflux.backup import gitlab
    from bidsflux.gitlab.root_token import find_gitlab_container

    dest = staging / "gitlab"
    info = gitlab.backup(find_gitlab_container(client, cfg.stack), dest)
    # gitlab-secrets.json holds the keys of GitLab's encrypted columns: never on the target in clear.
    _encrypt_in_place([dest / "gitlab-secrets.json", dest / "gitlab.rb"], cfg.recipients)
    return info


def _mercure(cfg: BackupConfig, staging: Path, client: Any) -> dict[str, Any]:
    from bidsflux.backup import mercure

    dest = staging / "mercure"
    info = mercure.backup(client, Path(cfg.mercure_base), dest)
    # mercure.json and the env files carry keys; the database carries patient metadata.
    _encrypt_in_place([dest / "mercure-config.tar", dest / "mercure-db.dump"], cfg.recipients)
    return info


def _s3(cfg: BackupConfig, target: Target, snapshot: str, values: Mapping[str, str],
        progress: Callable[[str], None]) -> dict[str, Any]:
    env = {**source_env(cfg, values), **target.env}
    buckets = list(cfg.buckets) or rclone.dirs(f"{SOURCE}:", env, "list the S3 buckets")
    out: dict[str, Any] = {"buckets": {}}
    for bucket in buckets:
        progress(f"s3: mirroring bucket {bucket}")
        counts = rclone.sync(f"{SOURCE}:{bucket}", target.path("s3", bucket),
                             target.path("s3-deleted", snapshot, bucket), env, f"mirror bucket {bucket}")
        objects, size = rclone.size(target.path("s3", bucket), env, f"size of the copy of {bucket}")
        out["buckets"][bucket] = {"copied": counts.copied, "deleted": counts.deleted, "objects": objects, "bytes": size}
    return out


def run_backup(cfg: BackupConfig, values: Mapping[str, str], parts: tuple[str, ...], client_factory: Callable[[], Any],
               console: Console, staging_root: str | None = None) -> tuple[str, list[PartResult]]:
    snapshot = new_id()
    target = Target(cfg, values)
    results: list[PartResult] = []
    staging = Path(tempfile.mkdtemp(prefix="bidsflux-backup-", dir=staging_root))
    os.chmod(staging, 0o700)
    client: Any = None

    def docker() -> Any:
        nonlocal client
        client = client or client_factory()
        return client

    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("backup")

            def say(text: str) -> None:
                bar.update(task, description=text)

            steps: dict[str, Callable[[], dict[str, Any]]] = {
                "values": lambda: _values(cfg, staging, values),
                "gitlab": lambda: _gitlab(cfg, staging, docker()),
                "mercure": lambda: _mercure(cfg, staging, docker()),
                "s3": lambda: _s3(cfg, target, snapshot, values, say),
            }
            for name in cfg.parts:
                if name not in parts:
                    results.append(PartResult(name, "skipped", "not asked for (--only)"))
                    continue
                say(f"{name}: backing up")
                began = time.monotonic()
                try:
                    data = steps[name]()
                    results.append(PartResult(name, "ok", _summary(name, data), elapsed=time.monotonic() - began, data=data))
                except UserError as exc:
                    results.append(PartResult(name, "fail", str(exc).splitlines()[0], FIXES[name],
                                              elapsed=time.monotonic() - began))
            say("writing the snapshot to the target")
            parts_data = {r.name: {"status": r.status, **r.data} for r in results}
            (staging / "manifest.json").write_text(json.dumps(manifest(staging, snapshot, parts_data),
                                                                            indent=2, sort_keys=True), encoding="utf-8")
            target.upload(staging, snapshot)
            good = all(r.status != "fail" for r in results) and all(p in parts for p in cfg.parts)
            if good:
                target.write_json({"snapshot": snapshot, "finished": new_id(), "parts": parts_data}, "latest.json")
                pruned = target.prune(cfg.keep)
                if pruned:
                    results.append(PartResult("retention", "ok", f"removed {len(pruned)} snapshot(s) beyond the newest "
                                                                  f"{cfg.keep}: {', '.join(pruned)}"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return snapshot, results


FIXES = {
    "values": "check secrets.file and backup.encrypt_to (age recipients, `age1...`)",
    "gitlab": "is GitLab running on this node? `bidsflux health --check gitlab`; the error names the step",
    "mercure": "is Mercure running here (`bidsflux mercure up`)? the error names the step",
    "s3": "check the S3 endpoint and keys (backup.source) and the target (backup.target)",
}


def _summary(name: str, data: Mapping[str, Any]) -> str:
    if name == "s3":
        b = data["buckets"]
        return (f"{len(b)} bucket(s), {sum(x['objects'] for x in b.values())} object(s); this run copied "
                f"{sum(x['copied'] for x in b.values())}, kept {sum(x['deleted'] for x in b.values())} deleted")
    if name == "gitlab":
        return f"archive {data['archive']} (GitLab {data['gitlab_version']}) + gitlab-secrets.json, gitlab.rb (encrypted)"
    if name == "mercure":
        return f"config ({data['config_files']} files) and database dump ({data['db_dump_bytes']} bytes), encrypted"
    return f"values file ({data['keys']} keys), encrypted"
