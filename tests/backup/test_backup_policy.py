"""What a site checks after backups run: the last good one, retention, health's age warning, the drill."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from backupkit import AgeKey, BackupSite, s3_client

from images import gitlab_standin_image
from seaweed import S3Server
from support import cli

pytestmark = pytest.mark.integration


def _run(site: BackupSite) -> dict[str, Any]:
    result = cli("backup", "--root", str(site.root), "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _health(site: BackupSite, monkeypatch: pytest.MonkeyPatch, hours_later: float) -> dict[str, Any]:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours_later)
    monkeypatch.setattr("bidsflux.health.backup.utcnow", lambda: later)
    result = cli("health", "--root", str(site.root), "--check", "backup", "--format", "json")
    return next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "backup")


def test_latest_good_backup_retention_and_health_age(backup_site: BackupSite, site_s3: S3Server,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = "ds-" + uuid.uuid4().hex[:8]
    s3_client(site_s3).create_bucket(Bucket=bucket)
    s3_client(site_s3).put_object(Bucket=bucket, Key="a.7z", Body=b"dicom")
    backup_site.edit(lambda d: (d["backup"].__setitem__("parts", ["values", "s3"]),
                                d["backup"]["source"].__setitem__("buckets", [bucket])))
    target = backup_site.root.parent / "target"
    assert _health(backup_site, monkeypatch, 0)["status"] == "fail"  # nothing backed up yet

    runs = [_run(backup_site)["snapshot"] for _ in range(3)]
    assert sorted(p.name for p in (target / "snapshots").iterdir()) == runs[1:]  # keep: 2
    assert json.loads((target / "latest.json").read_text())["snapshot"] == runs[-1]

    assert _health(backup_site, monkeypatch, 1)["status"] == "ok"
    stale = _health(backup_site, monkeypatch, 30)
    assert stale["status"] == "warn" and "policy 26 h" in stale["reason"]
    assert _health(backup_site, monkeypatch, 60)["status"] == "fail"


def test_drill_restores_into_scratch_s3_and_catches_a_corrupt_snapshot(
        backup_site: BackupSite, site_s3: S3Server, backup_s3: S3Server, age_key: AgeKey) -> None:
    bucket = "ds-" + uuid.uuid4().hex[:8]
    src = s3_client(site_s3)
    src.create_bucket(Bucket=bucket)
    for i in range(3):
        src.put_object(Bucket=bucket, Key=f"sub-{i}/x.7z", Body=uuid.uuid4().bytes * 100)
    backup_site.values.update(drill_s3_id=backup_s3.access_key, drill_s3_secret=backup_s3.secret_key)
    backup_site.write_values()
    backup_site.edit(lambda d: (d["backup"].__setitem__("parts", ["values", "s3"]),
                                d["backup"]["source"].__setitem__("buckets", [bucket])))
    snapshot = _run(backup_site)["snapshot"]

    args = ["backup", "drill", "--root", str(backup_site.root), "--identity", str(age_key.identity),
            "--scratch-s3", backup_s3.endpoint, "--format", "json"]
    drill = cli(*args)
    assert drill.exit_code == 0, drill.output
    checks = {c["name"]: c for c in json.loads(drill.stdout)["checks"]}
    assert {k: v["status"] for k, v in checks.items()} == {"manifest": "ok", "values": "ok", "s3": "ok"}
    assert "3 object(s) restored with matching checksums" in checks["s3"]["reason"]
    assert not [b for b in s3_client(backup_s3).list_buckets()["Buckets"] if b["Name"].startswith("drill-")]

    encrypted = backup_site.root.parent / "target" / "snapshots" / snapshot / "values.env.age"
    encrypted.write_bytes(encrypted.read_bytes()[:-5] + b"xxxxx")
    broken = cli(*args)
    assert broken.exit_code == 1
    manifest = next(c for c in json.loads(broken.stdout)["checks"] if c["name"] == "manifest")
    assert manifest["status"] == "fail" and "values.env.age" in manifest["reason"]


def test_failed_scheduled_backup_opens_one_issue_and_recovery_closes_it(
        backup_site: BackupSite, gitlab_emulator: Any, tmp_path: Any) -> None:
    import gitlab

    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    group = gl.groups.create({"name": "ni-dataops", "path": "ni-dataops"})
    project = gl.projects.create({"name": "bidsflux", "path": "bidsflux", "namespace_id": group.id})
    env = {"CI_SERVER_URL": gitlab_emulator.url, "BIDSFLUX_GITLAB_TOKEN": gitlab_emulator.admin_token,
           "CI_PROJECT_ID": str(project.id)}
    # The pipeline's own commands: backup with a JSON report, then `ci issues --kind backup`.
    backup_site.edit(lambda d: d["backup"].__setitem__("parts", ["values", "gitlab"]))
    failed = cli("backup", "--root", str(backup_site.root), "--format", "json", "--junit", str(tmp_path / "b.xml"))
    assert failed.exit_code == 1
    (tmp_path / "backup.json").write_text(failed.stdout)
    assert 'failures="1"' in (tmp_path / "b.xml").read_text()
    assert cli("ci", "issues", "--kind", "backup", str(tmp_path / "backup.json"), env=env).exit_code == 0
    (issue,) = project.issues.list(labels=["bidsflux-backup"], state="opened", get_all=True)
    assert issue.title == "Backup failing: gitlab"
    for value in backup_site.values.values():
        assert value not in issue.description

    # GitLab is back: the next scheduled backup succeeds and closes the issue.
    import docker

    client = docker.from_env()
    gitlab_task = client.containers.run(gitlab_standin_image(client), detach=True, network_mode="none",
                                        labels={"com.docker.swarm.service.name": f"{backup_site.stack}_gitlab"})
    try:
        ok = cli("backup", "--root", str(backup_site.root), "--format", "json")
    finally:
        gitlab_task.remove(force=True)
        client.close()
    assert ok.exit_code == 0, ok.output
    (tmp_path / "backup.json").write_text(ok.stdout)
    assert cli("ci", "issues", "--kind", "backup", str(tmp_path / "backup.json"), env=env).exit_code == 0
    assert project.issues.list(labels=["bidsflux-backup"], state="opened", get_all=True) == []
