"""Backups of the S3 buckets (real SeaweedFS on both sides) and of the values file (real age)."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from backupkit import AgeKey, BackupSite, make_age_key, s3_client

from seaweed import S3Server
from support import cli

pytestmark = pytest.mark.integration


def backup(site: BackupSite, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    result = cli("backup", "--root", str(site.root), "--format", "json", *args, env=env)
    assert "Traceback" not in result.output
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"backup did not print JSON (exit {result.exit_code}): {result.output}")


def objects(client: Any, bucket: str, prefix: str = "") -> dict[str, str]:
    """key -> md5 of every object under `prefix` (read back, not the ETag)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"][len(prefix):]] = hashlib.md5(body).hexdigest()
    return out


def part(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"] == name)


def test_buckets_full_then_incremental_and_restored_with_checksums(
        backup_site: BackupSite, site_s3: S3Server, backup_s3: S3Server) -> None:
    src, dst = s3_client(site_s3), s3_client(backup_s3)
    bucket, target_bucket = "ds-" + uuid.uuid4().hex[:8], "bk-" + uuid.uuid4().hex[:8]
    src.create_bucket(Bucket=bucket)
    dst.create_bucket(Bucket=target_bucket)
    bodies = {f"sub-{i:02d}/dicom.7z": f"study {i} ".encode() * (i + 1) * 1000 for i in range(5)}
    for key, body in bodies.items():
        src.put_object(Bucket=bucket, Key=key, Body=body)
    total = sum(len(b) for b in bodies.values())
    backup_site.values.update(backup_s3_id=backup_s3.access_key, backup_s3_secret=backup_s3.secret_key)
    backup_site.write_values()
    target = f"s3+http://127.0.0.1:{backup_s3.port}/{target_bucket}/site"
    backup_site.edit(lambda d: (d["backup"].__setitem__("target", {"url": target}),
                                d["backup"]["source"].__setitem__("buckets", [bucket])))

    code, first = backup(backup_site, "--only", "s3")
    assert code == 0, first
    assert part(first, "s3")["data"]["buckets"][bucket] == {"copied": 5, "deleted": 0, "objects": 5, "bytes": total}
    want = objects(src, bucket)
    assert objects(dst, target_bucket, f"site/s3/{bucket}/") == want

    # Incremental: one new object, one deleted; only the new one is copied, the deleted one is kept aside.
    src.put_object(Bucket=bucket, Key="sub-99/dicom.7z", Body=b"late study")
    src.delete_object(Bucket=bucket, Key="sub-00/dicom.7z")
    code, second = backup(backup_site, "--only", "s3")
    assert code == 0, second
    assert part(second, "s3")["data"]["buckets"][bucket] == {
        "copied": 1, "deleted": 1, "objects": 5, "bytes": total - len(bodies["sub-00/dicom.7z"]) + len(b"late study")}
    assert objects(dst, target_bucket, f"site/s3/{bucket}/") == objects(src, bucket)
    kept = objects(dst, target_bucket, f"site/s3-deleted/{second['snapshot']}/{bucket}/")
    assert kept == {"sub-00/dicom.7z": want["sub-00/dicom.7z"]}

    # The site's bucket is lost; restore brings back every object with its checksum.
    current = objects(src, bucket)
    for key in current:
        src.delete_object(Bucket=bucket, Key=key)
    restored = cli("restore", second["snapshot"], "--root", str(backup_site.root), "--only", "s3", "--yes",
                   "--identity", str(make_age_key(backup_site.root).identity))
    assert restored.exit_code == 0, restored.output
    assert objects(src, bucket) == current


def test_values_file_round_trips_encrypted_and_needs_the_key(backup_site: BackupSite, age_key: AgeKey,
                                                            tmp_path: Path) -> None:
    code, report = backup(backup_site, "--only", "values")
    assert code == 0, report
    snap = Path(backup_site.root.parent / "target" / "snapshots" / report["snapshot"])
    stored = (snap / "values.env.age").read_bytes()
    assert stored.startswith(b"age-encryption.org/v1")
    for value in backup_site.values.values():
        assert value.encode() not in stored
    assert not list(snap.rglob("secrets.env")), "the plaintext values file must never reach the target"
    original = backup_site.values_file.read_bytes()

    # Without the right key nothing is readable and nothing is changed.
    backup_site.values_file.unlink()
    (tmp_path / "stranger").mkdir()
    stranger = make_age_key(tmp_path / "stranger")
    refused = cli("restore", report["snapshot"], "--root", str(backup_site.root), "--only", "values", "--yes",
                  "--identity", str(stranger.identity))
    assert refused.exit_code == 1
    assert "cannot decrypt" in refused.output and "Traceback" not in refused.output
    assert not backup_site.values_file.exists()

    done = cli("restore", report["snapshot"], "--root", str(backup_site.root), "--only", "values", "--yes",
               "--identity", str(age_key.identity))
    assert done.exit_code == 0, done.output
    assert backup_site.values_file.read_bytes() == original
    assert backup_site.values_file.stat().st_mode & 0o077 == 0


def test_without_a_backup_section_the_message_says_what_to_add(backup_site: BackupSite) -> None:
    backup_site.edit(lambda d: d.pop("backup"))
    result = cli("backup", "--root", str(backup_site.root))
    assert result.exit_code == 1
    assert "no `backup:` section" in result.output


def test_rclone_trusts_the_site_ca_beside_the_system_roots(tmp_path: Path) -> None:
    """--ca-cert replaces rclone's roots: the site CA is added to the system bundle, never alone."""
    from bidsflux.backup import rclone

    site_ca = tmp_path / "site-ca.crt"
    site_ca.write_text("-----BEGIN CERTIFICATE-----\nSITE\n-----END CERTIFICATE-----\n")
    system = tmp_path / "system.crt"
    system.write_text("-----BEGIN CERTIFICATE-----\nPUBLIC\n-----END CERTIFICATE-----\n")
    env = {"AWS_CA_BUNDLE": str(system), "BIDSFLUX_SITE_CA": str(site_ca)}
    combined = rclone.trust(env, tmp_path)
    assert combined is not None and "AWS_CA_BUNDLE" not in env and "BIDSFLUX_SITE_CA" not in env
    text = Path(combined).read_text()
    assert "SITE" in text and "PUBLIC" in text
    assert rclone.trust({"AWS_CA_BUNDLE": str(system)}, tmp_path) == str(system)
    assert rclone.trust({}, tmp_path) is None
