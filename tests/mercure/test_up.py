"""`mercure up --check-only`: renders Mercure 0.4.1's compose project (every upstream service,
networks, users, the data volume), creates its folders with its owner, writes the env files with
values generated into the site's values file, services.json, a mercure.json with the bookkeeper
key, the generated web login instead of the seed, the module secret files; nothing secret is
world-readable and `compose config` accepts the result. The real Mercure runs in
test_real_mercure.py."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from mercure_testlib import edit
from passlib.hash import sha512_crypt

from bidsflux.mercure import config as mc
from bidsflux.mercure import install
from bidsflux.mercure.files import BACKUPS_KEPT, atomic_write
from bidsflux.site.yamlsource import load
from bidsflux.swarm.secretstore import read_values_file
from support import cli, require

pytestmark = pytest.mark.integration


def _site(repo: Path, tmp_path: Path) -> tuple[Path, Path]:
    base, state = tmp_path / "mercure", tmp_path / "state"
    site = repo / "stack" / "site.yml"
    edit(site, "    path: /srv/bidsflux/mercure", f"    path: {base}")
    edit(site, "    path: /var/lib/bidsflux\n", f"    path: {state}\n")
    edit(site, "  file: /var/lib/bidsflux/secrets.env", f"  file: {state}/secrets.env")
    state.mkdir(mode=0o700)
    # The old `mercure up` appended unquoted lines; the store reads them.
    (state / "secrets.env").write_text("s3_id=AKIAUPTESTID\n")
    os.chmod(state / "secrets.env", 0o600)
    return base, state


def test_up_check_only_prepares_everything(repo: Path, tmp_path: Path) -> None:
    require(shutil.which("docker-compose") is not None or shutil.which("docker") is not None,
            "neither docker compose nor docker-compose is installed")
    require(os.geteuid() == 0, "creating folders owned by Mercure's uid needs root")
    base, state = _site(repo, tmp_path)

    result = cli("mercure", "up", "--check-only", "--root", str(repo), "--project-name", "bfcheck")
    assert result.exit_code == 0, result.output

    stored = read_values_file(state / "secrets.env")
    for key in (install.SECRET_KEY_KEY, install.DB_PASSWORD_KEY, install.REDIS_PASSWORD_KEY, install.BOOKKEEPER_KEY,
                install.WEB_PASSWORD_KEY):
        assert len(stored[key]) == 32 and stored[key] not in result.output, key
    assert stored["s3_id"] == "AKIAUPTESTID"

    compose = yaml.safe_load((base / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == set(install.SERVICES)
    assert services["processor"]["user"] == "1000:${DOCKER_GID:?DOCKER_GID (group of the Docker socket) comes from .env next to this file}"
    assert services["receiver"]["user"] == "1000:1000" and services["receiver"]["environment"]["MERCURE_RUNNER"] == "docker"
    assert compose["networks"]["datastore"]["internal"] and compose["networks"]["services"]["internal"]
    assert services["db"]["networks"] == ["datastore"] and "exposed" in services["receiver"]["networks"]
    assert compose["volumes"]["data"]["name"] == "mercure_data"
    assert compose["volumes"]["data"]["driver_opts"]["device"] == f"{base}/data"
    assert "/var/run/docker.sock:/var/run/docker.sock" in services["processor"]["volumes"]
    assert f"{base}/persistence:{base}/persistence" in services["processor"]["volumes"]
    dotenv = (base / ".env").read_text()
    assert "COMPOSE_PROJECT_NAME=bfcheck" in dotenv and f"DOCKER_GID={os.stat('/var/run/docker.sock').st_gid}" in dotenv

    config = base / "config"
    env = {name: (config / name).read_text() for name in ("webgui.env", "bookkeeper.env", "db.env", "redis.env")}
    assert f"SECRET_KEY={stored[install.SECRET_KEY_KEY]}\n" in env["webgui.env"]
    assert f"DATABASE_URL=postgresql://mercure:{stored[install.DB_PASSWORD_KEY]}@db\n" in env["bookkeeper.env"]
    assert env["db.env"] == f"POSTGRES_PASSWORD={stored[install.DB_PASSWORD_KEY]}\n"
    r = stored[install.REDIS_PASSWORD_KEY]
    assert env["redis.env"] == f"REDIS_PASSWORD={r}\nREDIS_URL=redis://:{r}@redis:6379/0\n"
    assert json.loads((config / "services.json").read_text())["receiver"]["docker_service"] in (
        "bfcheck_receiver_1", "bfcheck-receiver-1")
    for name in ("webgui.env", "bookkeeper.env", "db.env", "redis.env", "mercure.json", "users.json"):
        st = (config / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o600), name
    assert stat.S_IMODE(config.stat().st_mode) == 0o750
    for sub in ("data", "data/incoming", "data/processing", "persistence"):
        st = (base / sub).stat()
        assert (st.st_uid, st.st_gid) == (1000, 1000), sub

    sdir = state / "mercure-secrets"
    st = sdir.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
    s3_id = sdir / "s3_id"
    assert s3_id.read_text() == "AKIAUPTESTID" and stat.S_IMODE(s3_id.stat().st_mode) == 0o400
    assert "s3_secret is missing" in result.output

    data = json.loads((config / "mercure.json").read_text())
    assert mc.model_problems(data) == []
    assert data["bookkeeper_api_key"] == stored[install.BOOKKEEPER_KEY] and data["bookkeeper"] == "bookkeeper:8080"
    assert data["persistence_folder"] == f"{base}/persistence"
    assert "AKIAUPTESTID" not in json.dumps(data)

    users = json.loads((config / "users.json").read_text())
    assert "admin" not in users
    user = stored[install.WEB_USER_KEY]
    assert sha512_crypt.verify(stored[install.WEB_PASSWORD_KEY], users[user]["password"])
    assert not sha512_crypt.verify("router", users[user]["password"])
    assert stat.S_IMODE((state / "secrets.env").stat().st_mode) == 0o600

    # Idempotent: a second run keeps the login, the config, the secrets and the files.
    mtimes = {p.name: p.stat().st_mtime_ns for p in config.iterdir()}
    again = cli("mercure", "up", "--check-only", "--root", str(repo))
    assert again.exit_code == 0, again.output
    assert "(project bfcheck)" in again.output  # remembered from .env
    assert read_values_file(state / "secrets.env") == stored
    assert {p.name: p.stat().st_mtime_ns for p in config.iterdir()} == mtimes

    # A value rotated in the store reaches the module's file, and the next `up` the env files.
    from bidsflux.swarm.secretstore import write_values_file

    write_values_file(state / "secrets.env", {"s3_id": "AKIAROTATED", "s3_secret": "new-secret"})
    assert s3_id.read_text() == "AKIAROTATED" and (sdir / "s3_secret").read_text() == "new-secret"
    # The indexer module runs as root with all capabilities dropped: its files belong to root.
    assert (sdir / "s3_secret").stat().st_uid == 0 and s3_id.stat().st_uid == 0


def test_backups_are_bounded_and_keep_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "mercure.json"
    target.write_text("{}")
    os.chmod(target, 0o600)
    for i in range(BACKUPS_KEPT + 4):
        atomic_write(target, json.dumps({"n": i}))
    backups = sorted(tmp_path.glob("mercure.json.*.bak"))
    assert len(backups) == BACKUPS_KEPT
    assert json.loads(backups[-1].read_text()) == {"n": BACKUPS_KEPT + 2}
    assert {stat.S_IMODE(b.stat().st_mode) for b in backups} == {0o600}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_world_readable_files_of_older_installs_are_restricted(repo: Path, tmp_path: Path) -> None:
    require(os.geteuid() == 0, "creating folders owned by Mercure's uid needs root")
    require(shutil.which("docker-compose") is not None, "docker-compose is not installed")
    base, _ = _site(repo, tmp_path)
    (base / "config").mkdir(parents=True)
    old = mc.render_config(yaml.safe_load((repo / "stack" / "site.yml").read_text()),
                           load(repo / "stack" / "mercure" / "rules.yml", repo))
    (base / "config" / "mercure.json").write_text(json.dumps(old))
    os.chmod(base / "config" / "mercure.json", 0o644)
    (base / "config" / "mercure.json.20200101T000000.000000Z.bak").write_text("{}")
    os.chmod(base / "config" / "mercure.json.20200101T000000.000000Z.bak", 0o644)
    result = cli("mercure", "up", "--check-only", "--root", str(repo), "--project-name", "bfcheck")
    assert result.exit_code == 0, result.output
    for p in (base / "config").glob("mercure.json*"):
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p.name
