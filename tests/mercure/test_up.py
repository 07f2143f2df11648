"""`mercure up --check-only`: renders the compose file with the site's paths, creates Mercure's
folders with its owner and the root-only secrets folder, writes a mercure.json Mercure would
load, replaces the seed web login, and the compose file passes `compose config`. Starting Mercure
itself needs its images, which cannot be pulled here (see README)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from mercure_testlib import edit
from passlib.apps import custom_app_context

from bidsflux.mercure import config as mc
from bidsflux.mercure.cli import read_secret_file
from support import cli, require

pytestmark = pytest.mark.integration


def test_up_check_only_prepares_everything(repo: Path, tmp_path: Path) -> None:
    require(shutil.which("docker-compose") is not None or shutil.which("docker") is not None,
            "neither docker compose nor docker-compose is installed")
    require(os.geteuid() == 0, "creating folders owned by Mercure's uid needs root")
    base, state = tmp_path / "mercure", tmp_path / "state"
    site = repo / "stack" / "site.yml"
    edit(site, "    path: /srv/bidsflux/mercure", f"    path: {base}")
    edit(site, "    path: /var/lib/bidsflux\n", f"    path: {state}\n")
    edit(site, "  file: /var/lib/bidsflux/secrets.env", f"  file: {state}/secrets.env")
    (state).mkdir(mode=0o700)
    (state / "secrets.env").write_text("s3_id=AKIAUPTESTID\n")
    os.chmod(state / "secrets.env", 0o600)

    result = cli("mercure", "up", "--check-only", "--root", str(repo))
    assert result.exit_code == 0, result.output

    stored = read_secret_file(state / "secrets.env")
    for key, value in stored.items():
        if key != "MERCURE_WEB_USER":  # a user name, shown on purpose
            assert value not in result.output
    compose = yaml.safe_load((base / "docker-compose.yml").read_text())
    assert f"{base}/config:/opt/mercure/config" in compose["services"]["receiver"]["volumes"]
    for sub in ("config", "data", "data/incoming", "db"):
        st = (base / sub).stat()
        assert (st.st_uid, st.st_gid) == (1000, 1000), sub
    sdir = state / "mercure-secrets"
    st = sdir.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
    s3_id = sdir / "s3_id"
    assert s3_id.read_text() == "AKIAUPTESTID" and stat.S_IMODE(s3_id.stat().st_mode) == 0o400
    assert "s3_secret is missing" in result.output or "s3_secret" in result.output

    config = json.loads((base / "config" / "mercure.json").read_text())
    assert mc.model_problems(config) == []
    assert config["bookkeeper_api_key"] == stored["MERCURE_BOOKKEEPER_API_KEY"]
    assert "AKIAUPTESTID" not in json.dumps(config)

    users = json.loads((base / "config" / "users.json").read_text())
    assert "admin" not in users
    user = stored["MERCURE_WEB_USER"]
    assert custom_app_context.verify(stored["MERCURE_WEB_PASSWORD"], users[user]["password"])
    assert not custom_app_context.verify("router", users[user]["password"])
    assert stat.S_IMODE((state / "secrets.env").stat().st_mode) == 0o600

    # Idempotent: a second run keeps the login, the config and the secrets.
    again = cli("mercure", "up", "--check-only", "--root", str(repo))
    assert again.exit_code == 0, again.output
    assert read_secret_file(state / "secrets.env") == stored
    assert json.loads((base / "config" / "users.json").read_text()) == users
