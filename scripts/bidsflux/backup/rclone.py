"""rclone, the one tool that copies to and from a folder or an S3 endpoint, configured through its environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

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


def run(args: list[str], env: Mapping[str, str], what: str, timeout: float = 24 * 3600) -> str:
    """Run rclone; its credentials are in `env` (never on the command line, which `ps` shows)."""
    full_env = {**os.environ, **env, "RCLONE_CONFIG": "/dev/null"}
    # rclone's S3 backend fails on AWS_CA_BUNDLE ("unsupported transport"); the same trust goes through
    # its own --ca-cert (a site CA for an https target keeps working).
    bundle = full_env.pop("AWS_CA_BUNDLE", None)
    if bundle and "RCLONE_CA_CERT" not in full_env:
        full_env["RCLONE_CA_CERT"] = bundle
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
