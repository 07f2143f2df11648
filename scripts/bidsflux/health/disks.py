"""Health of the data disks: usage of each data path against the site's thresholds."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bidsflux.health.core import (
    Context,
    Report,
    check,
)


def data_paths(site: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in site["paths"].items():
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            label = f"paths.{key}" + (f"[{i}]" if isinstance(value, list) else "")
            out.append((label, item["path"]))
    return out


@check("disks", timeout=10, summary="each data path's disk usage against health.disk_warn_percent / disk_fail_percent")
def check_disks(ctx: Context, report: Report, timeout: float) -> None:
    warn, fail = ctx.site["health"]["disk_warn_percent"], ctx.site["health"]["disk_fail_percent"]
    seen: dict[int, str] = {}
    for label, path in data_paths(ctx.site):
        report.step = f"statvfs {path}"
        p = Path(path)
        if not p.exists():
            report.warn(f"{label} {path} does not exist on this host", "run health on the node that holds it, or bidsflux bootstrap creates it")
            continue
        dev = p.stat().st_dev
        if dev in seen:
            continue
        seen[dev] = path
        usage = shutil.disk_usage(p)
        # As df counts it: space reserved for root counts as neither used nor available.
        percent = 100.0 * usage.used / max(1, usage.used + usage.free)
        free_gb = usage.free / 1e9
        text = f"{label} {path}: {percent:.0f}% used, {free_gb:.1f} GB free"
        if percent >= fail:
            report.fail(text + f" (fail at {fail}%)", f"free space or grow the disk holding {path}")
        elif percent >= warn:
            report.warn(text + f" (warn at {warn}%)", f"free space or grow the disk holding {path}")
        else:
            report.ok(text)


