"""Real engines for the backup tests: two SeaweedFS servers (the site's S3 and the backup target's),
age keys, and a site copy whose backup section points at them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backupkit import AgeKey, BackupSite, make_age_key

from seaweed import S3Server, start_weed
from support import copy_repository


@pytest.fixture(scope="module")
def site_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with start_weed(tmp_path_factory.mktemp("site-s3")) as server:
        yield server


@pytest.fixture(scope="module")
def backup_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with start_weed(tmp_path_factory.mktemp("backup-s3"), name="backup") as server:
        yield server


@pytest.fixture
def age_key(tmp_path: Path) -> AgeKey:
    return make_age_key(tmp_path)


@pytest.fixture
def backup_site(tmp_path: Path, site_s3: S3Server, age_key: AgeKey) -> BackupSite:
    """A repository copy backing up to a folder target, reading the site S3 with the indexer's keys."""
    import uuid

    root = copy_repository(tmp_path / "repo")
    values_file = tmp_path / "state" / "secrets.env"
    values_file.parent.mkdir()
    mercure_base = tmp_path / "mercure"
    (mercure_base / "config").mkdir(parents=True)
    stack = "bfxbk" + uuid.uuid4().hex[:6]
    site = BackupSite(root, values_file, {"s3_id": site_s3.access_key, "s3_secret": site_s3.secret_key,
                                           "gitlab_root_password": "root-pw-" + uuid.uuid4().hex},
                      mercure_base, stack)
    site.write_values()

    def configure(d: Any) -> None:
        d["site"]["name"] = stack
        d["secrets"]["file"] = str(values_file)
        d["paths"]["mercure_base"]["path"] = str(mercure_base)
        d["backup"] = {"target": {"url": str(tmp_path / "target")}, "encrypt_to": [age_key.recipient],
                       "retention": {"keep": 2}, "max_age_hours": 26,
                       "source": {"endpoint": site_s3.endpoint}}

    site.edit(configure)
    return site
