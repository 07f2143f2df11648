"""What site.yml's `backup:` asks for: the target, the recipients, retention, the parts and their sources."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bidsflux.diagnostics import UserError
from bidsflux.proxy.trust import ca_bundle_file
from bidsflux.site.endpoints import https_url

PARTS = ("values", "gitlab", "mercure", "s3")


@dataclass(frozen=True)
class Target:
    """A folder or an S3 endpoint, spoken to through rclone (one tool for both kinds)."""

    url: str
    kind: str  # "folder" | "s3"
    path: str  # folder path, or bucket[/prefix]
    endpoint: str = ""  # S3 only: scheme://host[:port]
    credentials: tuple[str, str] = ("", "")  # S3 only: values-file keys of the access key and secret

    def rclone_env(self, name: str, values: Mapping[str, str]) -> dict[str, str]:
        """rclone remote `name` configured through its environment (nothing secret on a command line)."""
        prefix = f"RCLONE_CONFIG_{name.upper()}_"
        if self.kind == "folder":
            return {prefix + "TYPE": "local"}
        key_name, secret_name = self.credentials
        missing = [k for k in (key_name, secret_name) if not values.get(k)]
        if missing:
            raise UserError(f"the backup target's credentials {', '.join(missing)} are not in the values file")
        return {prefix + "TYPE": "s3", prefix + "PROVIDER": "Other", prefix + "ENDPOINT": self.endpoint,
                prefix + "ACCESS_KEY_ID": values[key_name], prefix + "SECRET_ACCESS_KEY": values[secret_name],
                prefix + "FORCE_PATH_STYLE": "true"}

    def remote(self, name: str, *parts: str) -> str:
        # A folder keeps its leading "/" (rclone reads a relative path from its working folder).
        lead = "/" if self.kind == "folder" and self.path.startswith("/") else ""
        return f"{name}:{lead}" + "/".join(p.strip("/") for p in (self.path, *parts) if p.strip("/"))


@dataclass(frozen=True)
class BackupConfig:
    stack: str
    target: Target
    recipients: tuple[str, ...]
    keep: int
    max_age_hours: float
    parts: tuple[str, ...]
    values_file: str
    s3_endpoint: str
    s3_credentials: tuple[str, str]
    buckets: tuple[str, ...] = ()  # empty: every bucket the keys can list
    mercure_base: str = ""
    ca_bundle: str | None = None  # the site CA (bidsflux tls): its https S3 is verified with it

    def ca_env(self) -> dict[str, str]:
        """For rclone.run: the site CA to add to the roots it verifies with."""
        return {"BIDSFLUX_SITE_CA": self.ca_bundle} if self.ca_bundle else {}
    extra: dict[str, Any] = field(default_factory=dict)


def parse_target(raw: Mapping[str, Any]) -> Target:
    url = str(raw["url"])
    parts = urlsplit(url)
    if parts.scheme in ("s3", "s3+http", "s3+https"):
        scheme = "http" if parts.scheme == "s3+http" else "https"
        if not parts.hostname:
            raise UserError(f"backup.target.url {url!r} names no S3 host")
        endpoint = f"{scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        creds = raw.get("credentials") or {}
        return Target(url, "s3", parts.path.lstrip("/"), endpoint,
                      (str(creds.get("access_key", "backup_s3_id")), str(creds.get("secret_key", "backup_s3_secret"))))
    if parts.scheme in ("", "file"):
        return Target(url, "folder", str(Path(parts.path if parts.scheme else url)))
    raise UserError(f"backup.target.url {url!r}: use a folder path or s3://host[:port]/bucket[/prefix]")


def load(site: Mapping[str, Any]) -> BackupConfig:
    """The backup settings of a validated site.yml (the schema has checked the shapes)."""
    raw = site.get("backup")
    if not raw:
        raise UserError("site.yml has no `backup:` section: add a target and the age recipients (see the README)")
    source = raw.get("source") or {}
    # The site's S3 as every client reaches it: https://<hosts.s3> through the TLS proxy.
    endpoint = source.get("endpoint") or https_url(site, "s3")
    creds = source.get("credentials") or {}
    return BackupConfig(
        stack=site["site"]["name"], target=parse_target(raw["target"]),
        recipients=tuple(raw.get("encrypt_to") or ()), keep=int((raw.get("retention") or {}).get("keep", 7)),
        max_age_hours=float(raw.get("max_age_hours", 26)), parts=tuple(raw.get("parts") or PARTS),
        values_file=site["secrets"]["file"], s3_endpoint=endpoint,
        s3_credentials=(str(creds.get("access_key", "s3_id")), str(creds.get("secret_key", "s3_secret"))),
        buckets=tuple(source.get("buckets") or ()), mercure_base=site["paths"]["mercure_base"]["path"],
        ca_bundle=ca_bundle_file(site),
    )
