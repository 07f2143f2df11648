"""Real engines for the backup tests: two SeaweedFS servers (the site's S3 and the backup target's),
age keys, and a site copy whose backup section points at them."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from seaweed import S3Server, start_weed
from support import copy_repository, require


@pytest.fixture(scope="module")
def site_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with start_weed(tmp_path_factory.mktemp("site-s3")) as server:
        yield server


@pytest.fixture(scope="module")
def backup_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with start_weed(tmp_path_factory.mktemp("backup-s3"), name="backup") as server:
        yield server


def s3_client(server: S3Server) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


@dataclass
class AgeKey:
    identity: Path
    recipient: str


def make_age_key(folder: Path) -> AgeKey:
    require(shutil.which("age-keygen") is not None, "age is not installed (apt-get install age)")
    identity = folder / "backup-key.txt"
    out = subprocess.run(["age-keygen", "-o", str(identity)], capture_output=True, text=True, check=True)
    recipient = next(line.split(": ", 1)[1] for line in out.stderr.splitlines() if line.startswith("Public key"))
    return AgeKey(identity, recipient.strip())


@pytest.fixture
def age_key(tmp_path: Path) -> AgeKey:
    return make_age_key(tmp_path)


@dataclass
class BackupSite:
    root: Path
    values_file: Path
    values: dict[str, str]
    mercure_base: Path
    stack: str

    def edit(self, fn: Callable[[Any], None]) -> None:
        path = self.root / "stack" / "site.yml"
        yaml = YAML(typ="rt")
        data = yaml.load(path.read_text(encoding="utf-8"))
        fn(data)
        with path.open("w", encoding="utf-8") as fh:
            yaml.dump(data, fh)

    def write_values(self) -> None:
        self.values_file.write_text("".join(f"{k}='{v}'\n" for k, v in self.values.items()), encoding="utf-8")
        self.values_file.chmod(0o600)


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
