"""Helpers of the backup tests (a module of its own: `conftest` names clash across test folders)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seaweed import S3Server
from support import edit_yaml, require


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


@dataclass
class BackupSite:
    root: Path
    values_file: Path
    values: dict[str, str]
    mercure_base: Path
    stack: str

    def edit(self, fn: Callable[[Any], None]) -> None:
        edit_yaml(self.root / "stack" / "site.yml", fn)

    def write_values(self) -> None:
        self.values_file.write_text("".join(f"{k}='{v}'\n" for k, v in self.values.items()), encoding="utf-8")
        self.values_file.chmod(0o600)


