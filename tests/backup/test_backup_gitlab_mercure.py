"""GitLab's part against a stand-in that follows GitLab's backup/restore docs (tests/backup/images.py),
and Mercure's database through a real PostgreSQL dump and restore."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backupkit import AgeKey, BackupSite

from images import gitlab_standin_image, postgres_image
from support import cli, require

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means no engine here
        require(False, f"no Docker engine: {exc}")
    yield client
    client.close()


def _run(client: Any, image: str, labels: dict[str, str], name: str) -> Any:
    return client.containers.run(image, detach=True, labels=labels, name=name, network_mode="none")


def _commands(container: Any) -> list[str]:
    code, out = container.exec_run(["cat", "/var/log/standin-commands.log"])
    return out.decode().splitlines() if code == 0 else []


def _backup(site: BackupSite, part: str) -> dict[str, Any]:
    result = cli("backup", "--root", str(site.root), "--format", "json", "--only", part)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_gitlab_backup_then_restore_in_documented_order(backup_site: BackupSite, age_key: AgeKey,
                                                        docker_client: Any) -> None:
    image = gitlab_standin_image(docker_client)
    labels = {"com.docker.swarm.service.name": f"{backup_site.stack}_gitlab"}
    made = []
    try:
        old = _run(docker_client, image, labels, f"{backup_site.stack}-old")
        made.append(old)
        site_key = "site-db-key-" + uuid.uuid4().hex
        old.exec_run(["sh", "-c", f"echo '{{\"db_key_base\": \"{site_key}\"}}' > /etc/gitlab/gitlab-secrets.json"])
        report = _backup(backup_site, "gitlab")
        gitlab = next(c for c in report["checks"] if c["name"] == "gitlab")
        assert gitlab["status"] == "ok", gitlab
        snap = backup_site.root.parent / "target" / "snapshots" / report["snapshot"] / "gitlab"
        archive = gitlab["data"]["archive"]
        assert (snap / archive).is_file()
        assert sorted(p.name for p in snap.iterdir()) == sorted([archive, "gitlab-secrets.json.age", "gitlab.rb.age"])
        assert site_key.encode() not in (snap / "gitlab-secrets.json.age").read_bytes()
        assert "gitlab-backup create STRATEGY=copy" in _commands(old)
        # The archive is moved out of GitLab's own disk.
        assert archive not in old.exec_run(["ls", "/var/opt/gitlab/backups"]).output.decode()
        old.remove(force=True)
        made.remove(old)

        # A fresh GitLab of the same version: secrets first, then the documented steps.
        fresh = _run(docker_client, image, labels, f"{backup_site.stack}-fresh")
        made.append(fresh)
        done = cli("restore", report["snapshot"], "--root", str(backup_site.root), "--only", "gitlab", "--yes",
                   "--identity", str(age_key.identity))
        assert done.exit_code == 0, done.output
        assert site_key in fresh.exec_run(["cat", "/etc/gitlab/gitlab-secrets.json"]).output.decode()
        backup_id = archive.removesuffix("_gitlab_backup.tar")
        assert _commands(fresh) == [
            "gitlab-ctl reconfigure", "gitlab-ctl stop puma", "gitlab-ctl stop sidekiq",
            f"gitlab-backup restore BACKUP={backup_id} force=yes", "gitlab-ctl restart",
            "gitlab-rake gitlab:check SANITIZE=true"]
        fresh.remove(force=True)
        made.remove(fresh)

        # Another version: refused before anything is touched.
        other = _run(docker_client, image, labels, f"{backup_site.stack}-other")
        made.append(other)
        other.exec_run(["sh", "-c", "echo 17.8.1-ee > /opt/gitlab/embedded/service/gitlab-rails/VERSION"])
        refused = cli("restore", report["snapshot"], "--root", str(backup_site.root), "--only", "gitlab", "--yes",
                      "--identity", str(age_key.identity))
        assert refused.exit_code == 1
        assert "GitLab 17.7.3-ee" in refused.output and "17.8.1-ee" in refused.output
        assert _commands(other) == []
    finally:
        for c in made:
            c.remove(force=True)


def test_mercure_database_and_config_through_a_real_postgresql(backup_site: BackupSite, age_key: AgeKey,
                                                               docker_client: Any) -> None:
    image = postgres_image(docker_client)
    # The project `mercure up` records in `.env` beside the compose file.
    project = "bfxbk-mercure-" + uuid.uuid4().hex[:6]
    (backup_site.mercure_base / ".env").write_text(f"COMPOSE_PROJECT_NAME={project}\n", encoding="utf-8")
    labels = {"com.docker.compose.project": project, "com.docker.compose.service": "db"}
    db = _run(docker_client, image, labels, f"{backup_site.stack}-db")
    try:
        deadline = time.monotonic() + 60
        while db.exec_run(["test", "-e", "/ready"]).exit_code != 0:
            assert time.monotonic() < deadline, db.logs().decode()[-2000:]
            time.sleep(0.3)

        def psql(sql: str) -> str:
            code, out = db.exec_run(["psql", "-U", "mercure", "-d", "mercure", "-tAc", sql])
            assert code == 0, out.decode()
            return out.decode().strip()

        psql("CREATE TABLE dicom_series (series_uid text primary key, tag_patientname text)")
        psql("INSERT INTO dicom_series VALUES ('1.2.3', 'CANARY^ONE'), ('1.2.4', 'CANARY^TWO')")
        config = backup_site.mercure_base / "config" / "mercure.json"
        config.write_text('{"appliance_name": "site-mercure"}', encoding="utf-8")

        report = _backup(backup_site, "mercure")
        snap = backup_site.root.parent / "target" / "snapshots" / report["snapshot"] / "mercure"
        assert sorted(p.name for p in snap.iterdir()) == ["mercure-config.tar.age", "mercure-db.dump.age"]
        assert b"CANARY^ONE" not in (snap / "mercure-db.dump.age").read_bytes()

        psql("DROP TABLE dicom_series")
        config.unlink()
        done = cli("restore", report["snapshot"], "--root", str(backup_site.root), "--only", "mercure", "--yes",
                   "--identity", str(age_key.identity))
        assert done.exit_code == 0, done.output
        assert psql("SELECT string_agg(tag_patientname, ',' ORDER BY series_uid) FROM dicom_series") == "CANARY^ONE,CANARY^TWO"
        assert json.loads(config.read_text(encoding="utf-8")) == {"appliance_name": "site-mercure"}
    finally:
        db.remove(force=True)


def test_unreachable_gitlab_fails_its_part_and_keeps_the_others(backup_site: BackupSite, tmp_path: Path) -> None:
    backup_site.edit(lambda d: d["backup"].__setitem__("parts", ["values", "gitlab"]))
    result = cli("backup", "--root", str(backup_site.root), "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status == {"values": "ok", "gitlab": "fail"}
    assert "no running container" in next(c for c in report["checks"] if c["name"] == "gitlab")["reason"]
    target = backup_site.root.parent / "target"
    assert (target / "snapshots" / report["snapshot"] / "values.env.age").is_file()
    assert not (target / "latest.json").exists(), "a failed part must not make this the last good backup"
