"""Snapshots on the target: one folder per run with a manifest of checksums, `latest.json` for the last good
one, retention, and the mirror of the S3 buckets beside them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bidsflux.backup import rclone
from bidsflux.backup.config import BackupConfig
from bidsflux.diagnostics import UserError

REMOTE = "bfxtarget"
LATEST = "latest.json"


def new_id(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S.%fZ")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def manifest(staging: Path, snapshot: str, parts: Mapping[str, Any]) -> dict[str, Any]:
    files = {str(p.relative_to(staging)): {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(staging.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    return {"snapshot": snapshot, "format": 1, "files": files, "parts": dict(parts)}


class Target:
    """The backup target as rclone sees it."""

    def __init__(self, cfg: BackupConfig, values: Mapping[str, str]) -> None:
        self.cfg = cfg
        self.env = {**cfg.target.rclone_env(REMOTE, values), **cfg.ca_env()}

    def path(self, *parts: str) -> str:
        return self.cfg.target.remote(REMOTE, *parts)

    def upload(self, staging: Path, snapshot: str) -> None:
        rclone.run(["copy", str(staging), self.path("snapshots", snapshot)], self.env, "copy the snapshot to the target")

    def download(self, snapshot: str, dest: Path) -> None:
        rclone.run(["copy", self.path("snapshots", snapshot), str(dest)], self.env, f"fetch snapshot {snapshot}")

    def snapshots(self) -> list[str]:
        try:
            return sorted(rclone.dirs(self.path("snapshots"), self.env, "list the snapshots"))
        except UserError:
            return []  # a target nothing was written to yet

    def read_json(self, *parts: str) -> dict[str, Any] | None:
        try:
            text = rclone.run(["cat", self.path(*parts)], self.env, f"read {'/'.join(parts)}")
        except UserError:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def write_json(self, data: Mapping[str, Any], *parts: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / parts[-1]
            local.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
            rclone.run(["copyto", str(local), self.path(*parts)], self.env, f"write {'/'.join(parts)}")

    def prune(self, keep: int) -> list[str]:
        """Remove snapshots beyond the newest `keep`, with the deleted-object sets of their runs."""
        old = self.snapshots()[:-keep] if keep > 0 else []
        for snap in old:
            rclone.run(["purge", self.path("snapshots", snap)], self.env, f"remove old snapshot {snap}")
            try:
                rclone.run(["purge", self.path("s3-deleted", snap)], self.env, f"remove deleted objects of {snap}")
            except UserError:
                pass  # that run deleted nothing
        return old
