"""rclone, the one tool that copies to and from a folder or an S3 endpoint, configured through its environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bidsflux.diagnostics import UserError


@dataclass
class Counts:
    copied: int = 0
    deleted: int = 0  # moved into the backup of deleted objects, never lost
    bytes: int = 0


def binary() -> str:
    found = shutil.which("rclone")
    if not found:
        raise UserError("rclone is not installed (apt-get install rclone); the ops image carries it")
    return found


SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def trust(env: dict[str, str], folder: Path) -> str | None:
    """The CA file rclone verifies with (its --ca-cert), or None for Go's system roots.

    rclone's S3 backend fails on AWS_CA_BUNDLE ("unsupported transport"), so that bundle goes
    through --ca-cert instead; and --ca-cert replaces the system roots, so the site CA
    (BIDSFLUX_SITE_CA: the site's own https S3) is added to the system bundle, not given alone
    (a target with a public certificate must keep working)."""
    aws = env.pop("AWS_CA_BUNDLE", None)
    site_ca = env.pop("BIDSFLUX_SITE_CA", None)
    if "RCLONE_CA_CERT" in env:
        return None  # the caller chose
    base = Path(aws) if aws else SYSTEM_BUNDLE
    if not site_ca:
        return aws
    combined = folder / "ca-bundle.crt"
    parts = [p.read_bytes() for p in (base, Path(site_ca)) if p.is_file()]
    combined.write_bytes(b"\n".join(parts))
    return str(combined)


def run(args: list[str], env: Mapping[str, str], what: str, timeout: float = 24 * 3600) -> str:
    """Run rclone; its credentials are in `env` (never on the command line, which `ps` shows)."""
    full_env = {**os.environ, **env, "RCLONE_CONFIG": "/dev/null"}
    with tempfile.TemporaryDirectory(prefix="bidsflux-rclone-") as tmp:
        ca = trust(full_env, Path(tmp))
        if ca:
            full_env["RCLONE_CA_CERT"] = ca
        try:
            done = subprocess.run([binary(), *args], env=full_env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"{what}: rclone did not finish within {timeout:g}s") from None
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        raise UserError(f"{what} failed (rclone exit {done.returncode}): " + " | ".join(tail))
    return done.stdout + done.stderr


def sync(src: str, dst: str, deleted_to: str, env: Mapping[str, str], what: str) -> Counts:
    """Make `dst` equal `src`, copying only what changed; what `dst` loses goes to `deleted_to`."""
    out = run(["sync", src, dst, "--backup-dir", deleted_to, "--use-json-log", "-v", "--stats", "0"], env, what)
    counts = Counts()
    for line in out.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        msg = str(entry.get("msg", ""))
        # A move into the backup dir also logs a server-side copy and a delete: count the move only.
        if msg.startswith("Copied (new)") or msg.startswith("Copied (replaced"):
            counts.copied += 1
            counts.bytes += int(entry.get("size") or 0)
        elif msg.startswith("Moved into backup dir"):
            counts.deleted += 1
    return counts


def size(path: str, env: Mapping[str, str], what: str) -> tuple[int, int]:
    """(objects, bytes) under `path`."""
    data = json.loads(run(["size", "--json", path], env, what).splitlines()[0])
    return int(data.get("count", 0)), int(data.get("bytes", 0))


def dirs(path: str, env: Mapping[str, str], what: str) -> list[str]:
    return [line.rstrip("/") for line in run(["lsf", "--dirs-only", path], env, what).splitlines()
            if line.endswith("/")]
