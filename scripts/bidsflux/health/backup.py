"""Health of backups: the last good backup on the target is younger than backup.max_age_hours."""

from __future__ import annotations

import datetime as dt

from bidsflux.diagnostics import UserError
from bidsflux.health.context import utcnow
from bidsflux.health.core import Context, Report, check


@check("backup", timeout=20, summary="the last good backup (latest.json on backup.target) is younger than backup.max_age_hours")
def check_backup(ctx: Context, report: Report, timeout: float) -> None:
    from bidsflux.backup.config import load
    from bidsflux.backup.run import known_values
    from bidsflux.backup.snapshot import Target

    if not ctx.site.get("backup"):
        report.warn("no backup is configured (site.yml has no backup: section)",
                    "add backup.target and backup.encrypt_to, then schedule BIDSFLUX_TASK=backup")
        return
    cfg = load(ctx.site)
    report.step = f"read latest.json on {cfg.target.url}"
    try:
        latest = Target(cfg, known_values(cfg.values_file, ctx.secrets.env)).read_json("latest.json")
    except UserError as exc:
        report.fail(f"cannot read the backup target {cfg.target.url}: {exc}", "check backup.target and its keys")
        return
    if not latest:
        report.fail(f"no good backup on {cfg.target.url} yet", "run `bidsflux backup` (or the scheduled backup task)")
        return
    try:
        when = dt.datetime.strptime(str(latest["snapshot"]), "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=dt.UTC)
    except (KeyError, ValueError):
        report.fail(f"latest.json on {cfg.target.url} is not bidsflux's", "run `bidsflux backup`")
        return
    hours = (utcnow() - when).total_seconds() / 3600
    limit = cfg.max_age_hours
    fix = "look at the last backup pipeline's log; run `bidsflux backup`"
    if hours > 2 * limit:
        report.fail(f"last good backup {latest['snapshot']} is {hours:.0f} h old (policy {limit:g} h)", fix)
    elif hours > limit:
        report.warn(f"last good backup {latest['snapshot']} is {hours:.0f} h old (policy {limit:g} h)", fix)
    else:
        report.ok(f"last good backup {latest['snapshot']}, {hours:.1f} h ago")
