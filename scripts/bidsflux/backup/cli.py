"""`bidsflux backup [list|drill]` and `bidsflux restore`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bidsflux.console import format_option, friendly_errors, root_option, site_option
from bidsflux.diagnostics import UserError

PART_CHOICE = click.Choice(["values", "gitlab", "mercure", "s3"])
STYLE = {"ok": "green", "fail": "bold red", "skipped": "dim"}


def _load(site: str | None, root: str | None) -> tuple[Any, dict[str, str]]:
    from bidsflux.backup.config import load
    from bidsflux.backup.run import known_values
    from bidsflux.site.repository import open_repository
    from bidsflux.validation import load_valid

    site_doc, _ = load_valid(open_repository(site, root))
    cfg = load(site_doc.data)
    return cfg, known_values(cfg.values_file, os.environ)


def _docker() -> Any:
    from bidsflux.swarm.secretstore import docker_client

    return docker_client()


def _report(results: list[Any], fmt: str, junit: str | None, title: str, extra: dict[str, Any]) -> None:
    if junit:
        from bidsflux.health.cli import write_junit
        from bidsflux.health.core import Result, Status

        write_junit([Result(r.name, Status.FAIL if r.status == "fail" else Status.OK, r.reason, r.fix, r.elapsed,
                            r.elapsed, r.details) for r in results], Path(junit), suite=title)
    if fmt == "json":
        click.echo(json.dumps({**extra, "checks": [r.to_dict() for r in results]}, indent=2, sort_keys=True))
        return
    table = Table(title=title)
    for col in ("part", "status", "what", "fix"):
        table.add_column(col)
    for r in results:
        table.add_row(r.name, Text(r.status, style=STYLE.get(r.status, "")), Text(r.reason), Text(r.fix))
    Console().print(table)


def register(main: click.Group) -> None:
    @main.group(invoke_without_command=True)
    @site_option
    @root_option
    @format_option
    @click.option("--only", "only", multiple=True, type=PART_CHOICE, help="Back up only these parts (repeatable).")
    @click.option("--junit", type=click.Path(dir_okay=False), default=None, help="Also write a JUnit report here.")
    @click.pass_context
    @friendly_errors
    def backup(ctx: click.Context, site: str | None, root: str | None, fmt: str, only: tuple[str, ...],
               junit: str | None) -> None:
        """Back up GitLab, Mercure, the S3 buckets and the encrypted values file to backup.target.

        \b
        Example:  bidsflux backup            (every part of backup.parts)
                  bidsflux backup --only s3  (only the bucket mirror; latest.json is not moved)
        Exit codes: 0 every part backed up, 1 a part failed or the target is unusable."""
        if ctx.invoked_subcommand is not None:
            return
        from bidsflux.backup.run import run_backup

        cfg, values = _load(site, root)
        err = Console(stderr=True)
        snapshot, results = run_backup(cfg, values, only or cfg.parts, _docker, err)
        _report(results, fmt, junit, "bidsflux backup", {"snapshot": snapshot, "target": cfg.target.url})
        sys.exit(1 if any(r.status == "fail" for r in results) else 0)

    @backup.command("list")
    @site_option
    @root_option
    @format_option
    @friendly_errors
    def list_cmd(site: str | None, root: str | None, fmt: str) -> None:
        """The snapshots on the target, oldest first, and the last good one."""
        from bidsflux.backup.snapshot import Target

        cfg, values = _load(site, root)
        target = Target(cfg, values)
        snaps, latest = target.snapshots(), (target.read_json("latest.json") or {}).get("snapshot")
        if fmt == "json":
            click.echo(json.dumps({"snapshots": snaps, "latest_good": latest}, indent=2))
            return
        for s in snaps:
            click.echo(s + ("  (latest good)" if s == latest else ""))
        if not snaps:
            click.echo(f"no snapshots on {cfg.target.url}")

    @backup.command("drill")
    @site_option
    @root_option
    @format_option
    @click.argument("snapshot", default="latest")
    @click.option("--identity", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
                  help="age identity file of a backup.encrypt_to recipient (brought to the host for the drill).")
    @click.option("--scratch-s3", required=True, help="A throwaway S3 endpoint (http[s]://host:port) to restore into.")
    @click.option("--scratch-keys", default="drill_s3_id,drill_s3_secret", show_default=True,
                  help="Values-file (or BIDSFLUX_SECRET_*) names of the scratch endpoint's keys.")
    @click.option("--junit", type=click.Path(dir_okay=False), default=None)
    @friendly_errors
    def drill_cmd(site: str | None, root: str | None, fmt: str, snapshot: str, identity: Path, scratch_s3: str,
                  scratch_keys: str, junit: str | None) -> None:
        """Restore a snapshot into throwaway places and check it (checksums, counts, versions).

        Exit codes: 0 the snapshot restores whole, 1 it does not."""
        from bidsflux.backup.restore import drill

        cfg, values = _load(site, root)
        key, _, secret = scratch_keys.partition(",")
        err = Console(stderr=True)
        results = drill(cfg, values, snapshot, identity, scratch_s3, (key, secret), lambda t: err.print(Text(t)))
        _report(results, fmt, junit, "bidsflux backup drill", {"snapshot": snapshot})
        sys.exit(1 if any(r.status == "fail" for r in results) else 0)

    @main.command()
    @site_option
    @root_option
    @click.argument("snapshot", default="latest")
    @click.option("--identity", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
                  help="age identity file of a backup.encrypt_to recipient.")
    @click.option("--only", "only", multiple=True, type=PART_CHOICE, help="Restore only these parts (repeatable).")
    @click.option("--yes", is_flag=True, help="Do not ask (restoring replaces live data).")
    @friendly_errors
    def restore(site: str | None, root: str | None, snapshot: str, identity: Path, only: tuple[str, ...], yes: bool) -> None:
        """Restore a snapshot: values file, then GitLab (secrets first, same version), Mercure, the buckets.

        \b
        On a fresh host: restore --only values, bootstrap the stack with the same images.gitlab,
        then restore the rest.
        Example:  bidsflux restore latest --identity ~/backup-key.txt --only values
        Exit codes: 0 restored, 1 refused or failed (the message says which step)."""
        from bidsflux.backup.restore import ORDER, run_restore

        cfg, values = _load(site, root)
        parts = tuple(p for p in ORDER if p in (only or ORDER))
        if not yes:
            if not sys.stdin.isatty():
                raise UserError("restore replaces live data: pass --yes to confirm when not on a terminal")
            click.confirm(f"Restore {', '.join(parts)} from snapshot {snapshot} over the live site?", abort=True)
        err = Console(stderr=True)
        for line in run_restore(cfg, values, snapshot, identity, parts, _docker, lambda t: err.print(Text(t))):
            click.echo(line)
