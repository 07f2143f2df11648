"""`bidsflux restore` and `bidsflux backup drill`: a snapshot brought back in the order GitLab documents
(secrets first, same version), every file checked against the manifest before anything is changed."""

from __future__ import annotations

import json
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bidsflux.backup import rclone
from bidsflux.backup import values as age
from bidsflux.backup.config import BackupConfig
from bidsflux.backup.run import SOURCE, PartResult, source_env
from bidsflux.backup.snapshot import Target, sha256
from bidsflux.diagnostics import UserError

ORDER = ("values", "gitlab", "mercure", "s3")


def resolve(target: Target, snapshot: str) -> str:
    if snapshot != "latest":
        if snapshot not in target.snapshots():
            raise UserError(f"no snapshot {snapshot} on {target.cfg.target.url}; `bidsflux backup list` shows them")
        return snapshot
    latest = target.read_json("latest.json")
    if not latest:
        raise UserError(f"no good backup on {target.cfg.target.url} yet (no latest.json)")
    return str(latest["snapshot"])


def fetch_verified(target: Target, snapshot: str, dest: Path) -> dict[str, Any]:
    """The snapshot's files in `dest`, each matching the checksum its manifest recorded."""
    target.download(snapshot, dest)
    try:
        man = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"snapshot {snapshot} has no readable manifest.json: it is incomplete") from None
    bad = [name for name, meta in man["files"].items()
           if not (dest / name).is_file() or sha256(dest / name) != meta["sha256"]]
    if bad:
        raise UserError(f"snapshot {snapshot}: {len(bad)} file(s) missing or corrupt ({', '.join(bad[:5])}); nothing restored")
    return man


def _decrypt(src: Path, identity: Path) -> Path:
    out = src.with_name(src.name.removesuffix(".age"))
    age.decrypt(src, identity, out)
    return out


def run_restore(cfg: BackupConfig, values: Mapping[str, str], snapshot: str, identity: Path, parts: tuple[str, ...],
                client_factory: Callable[[], Any], say: Callable[[str], None]) -> list[str]:
    target = Target(cfg, values)
    snapshot = resolve(target, snapshot)
    log: list[str] = [f"snapshot {snapshot}"]
    with tempfile.TemporaryDirectory(prefix="bidsflux-restore-") as tmp:
        staging = Path(tmp)
        say(f"fetching and checking snapshot {snapshot}")
        man = fetch_verified(target, snapshot, staging)
        recorded = man["parts"]
        for part in [p for p in ORDER if p in parts]:
            if recorded.get(part, {}).get("status") != "ok":
                raise UserError(f"snapshot {snapshot} has no good {part} part; choose another snapshot or leave it out (--only)")
        if "values" in parts:
            say("values file")
            age.decrypt(staging / "values.env.age", identity, Path(cfg.values_file))
            log.append(f"restored the values file {cfg.values_file}")
        if "gitlab" in parts:
            from bidsflux.backup import gitlab
            from bidsflux.gitlab.root_token import find_gitlab_container

            say("GitLab (secrets, archive, restore, check)")
            for name in ("gitlab-secrets.json.age", "gitlab.rb.age"):
                _decrypt(staging / "gitlab" / name, identity)
            gitlab.restore(find_gitlab_container(client_factory(), cfg.stack), staging / "gitlab", recorded["gitlab"], log)
        if "mercure" in parts:
            from bidsflux.backup import mercure

            say("Mercure (config, database)")
            for name in ("mercure-config.tar.age", "mercure-db.dump.age"):
                _decrypt(staging / "mercure" / name, identity)
            mercure.restore(client_factory(), Path(cfg.mercure_base), staging / "mercure", log)
        if "s3" in parts:
            env = {**source_env(cfg, values), **target.env}
            for bucket in sorted(recorded["s3"]["buckets"]):
                say(f"s3: bucket {bucket}")
                rclone.run(["copy", target.path("s3", bucket), f"{SOURCE}:{bucket}"], env, f"restore bucket {bucket}")
                log.append(f"restored bucket {bucket}")
    return log


def drill(cfg: BackupConfig, values: Mapping[str, str], snapshot: str, identity: Path, scratch_s3: str,
          scratch_keys: tuple[str, str], say: Callable[[str], None]) -> list[PartResult]:
    """Restore a snapshot into throwaway places and check it: manifest checksums, the values file
    decrypts, GitLab's archive is whole and of the recorded version, every bucket comes back with
    each object's checksum in a scratch S3. A running throwaway GitLab is not part of the drill."""
    target = Target(cfg, values)
    snapshot = resolve(target, snapshot)
    results: list[PartResult] = []
    with tempfile.TemporaryDirectory(prefix="bidsflux-drill-") as tmp:
        staging = Path(tmp)
        say(f"fetching snapshot {snapshot}")
        try:
            man = fetch_verified(target, snapshot, staging)
        except UserError as exc:
            return [PartResult("manifest", "fail", str(exc), "take another snapshot (bidsflux backup)")]
        results.append(PartResult("manifest", "ok", f"{len(man['files'])} file(s) match their checksums"))
        parts = man["parts"]
        if parts.get("values", {}).get("status") == "ok":
            try:
                plain = _decrypt(staging / "values.env.age", identity)
                from bidsflux.swarm.secretstore import read_values_file

                n = len(read_values_file(plain))
                ok = n == parts["values"]["keys"]
                results.append(PartResult("values", "ok" if ok else "fail",
                                          f"decrypts to {n} key(s) (backup had {parts['values']['keys']})"))
            except UserError as exc:
                results.append(PartResult("values", "fail", str(exc), "is --identity the key of a backup.encrypt_to recipient?"))
        if parts.get("gitlab", {}).get("status") == "ok":
            archive = staging / "gitlab" / parts["gitlab"]["archive"]
            try:
                with tarfile.open(archive) as tar:
                    names = set(tar.getnames())
                    info = tar.extractfile("backup_information.yml")
                    text = info.read().decode() if info else ""
                whole = "backup_information.yml" in names and any(n.startswith("db/") for n in names)
                same = parts["gitlab"]["gitlab_version"] in text
                results.append(PartResult("gitlab", "ok" if whole and same else "fail",
                                          f"archive has {len(names)} entries, database {'present' if whole else 'MISSING'}, "
                                          f"version {'matches' if same else 'DIFFERS'}"))
            except (OSError, tarfile.TarError, KeyError) as exc:
                results.append(PartResult("gitlab", "fail", f"archive unreadable: {exc}", "take a new backup"))
        if parts.get("s3", {}).get("status") == "ok":
            results.append(_drill_s3(cfg, target, values, parts["s3"]["buckets"], scratch_s3, scratch_keys, say))
    return results


def _drill_s3(cfg: BackupConfig, target: Target, values: Mapping[str, str], buckets: Mapping[str, Any],
              scratch_s3: str, scratch_keys: tuple[str, str], say: Callable[[str], None]) -> PartResult:
    key, secret = scratch_keys
    prefix = "RCLONE_CONFIG_BFXDRILL_"
    env = {**target.env, prefix + "TYPE": "s3", prefix + "PROVIDER": "Other", prefix + "ENDPOINT": scratch_s3,
           prefix + "ACCESS_KEY_ID": values.get(key, ""), prefix + "SECRET_ACCESS_KEY": values.get(secret, ""),
           prefix + "FORCE_PATH_STYLE": "true"}
    problems, total = [], 0
    for bucket, meta in sorted(buckets.items()):
        say(f"drill: restoring bucket {bucket} into {scratch_s3}")
        scratch_bucket = f"drill-{bucket}"[:63]
        try:
            rclone.run(["copy", target.path("s3", bucket), f"bfxdrill:{scratch_bucket}"], env, f"restore {bucket}")
            # Sizes and MD5 checksums of every object, both sides (rclone check).
            rclone.run(["check", target.path("s3", bucket), f"bfxdrill:{scratch_bucket}"], env, f"check {bucket}")
            count, _ = rclone.size(f"bfxdrill:{scratch_bucket}", env, f"count {bucket}")
            total += count
            if count != meta["objects"]:
                problems.append(f"{bucket}: {count} object(s) restored, {meta['objects']} backed up")
        except UserError as exc:
            problems.append(str(exc))
        finally:
            try:
                rclone.run(["purge", f"bfxdrill:{scratch_bucket}"], env, f"remove drill bucket {scratch_bucket}")
            except UserError:
                pass
    if problems:
        return PartResult("s3", "fail", problems[0], "see details", details=problems)
    return PartResult("s3", "ok", f"{len(buckets)} bucket(s), {total} object(s) restored with matching checksums")



