"""Health of the DICOM endpoint: C-ECHO, and for Mercure the state of each of its services, its web UI
and mercure.json."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from bidsflux.health.context import (
    http_get,
    http_problem,
)
from bidsflux.health.core import (
    Context,
    Report,
    check,
)

# Neither push nor up repairs a damaged file (push merges into it and refuses what Mercure would not load).
RESTORE_FIX = ("restore the newest mercure.json.<UTC time>.bak next to it, or move the file away and run "
               "bidsflux mercure up, which writes a fresh one")
MERCURE_REQUIRED_KEYS = (
    "appliance_name", "port", "incoming_folder", "studies_folder", "outgoing_folder", "success_folder",
    "error_folder", "discard_folder", "processing_folder", "jobs_folder", "bookkeeper",
    "router_scan_interval", "dispatcher_scan_interval", "cleaner_scan_interval", "retention", "retry_delay",
    "retry_max", "series_complete_trigger", "study_complete_trigger", "study_forcecomplete_trigger",
    "offpeak_start", "offpeak_end", "targets", "rules", "modules",
)


def host_port(value: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(value if "//" in value else f"dicom://{value}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


def mercure_services(ctx: Context, report: Report) -> None:
    """One finding for Mercure's compose services: each running (and healthy where it has a check)."""
    from bidsflux.diagnostics import UserError
    from bidsflux.mercure.compose import project_of, service_states

    base = Path(ctx.site["paths"]["mercure_base"]["path"])
    if not base.exists():
        report.warn(f"{base} is not on this host, Mercure's services not checked", "run health on the data server")
        return
    project = project_of(ctx.site)
    report.step = f"docker ps (compose project {project})"
    try:
        states = service_states(project)
    except UserError as exc:
        report.fail(f"cannot inspect Mercure's containers: {exc}", "run health where the Docker engine answers")
        return
    bad = [s for s in states if not s.ok]
    if bad:
        report.fail("Mercure services not running: " + "; ".join(f"{s.service}: {', '.join(s.problems)}" for s in bad),
                    f"docker compose -p {project} logs SERVICE (in {base}); `bidsflux mercure up` starts them")
    else:
        report.ok(f"all {len(states)} Mercure services running ({sum(s.containers for s in states)} containers, "
                  f"project {project})")


@check("dicom", timeout=15, summary="C-ECHO to the DICOM endpoint; for Mercure also each service's state, its web UI and mercure.json")
def check_dicom(ctx: Context, report: Report, timeout: float) -> None:
    from bidsflux.health.dicom import c_echo

    io = ctx.io_timeout(timeout)
    endpoint = ctx.site["dicom_endpoint"]
    host, port = host_port(ctx.endpoints["dicom"], ctx.site["ports"]["dicom"])
    report.step = f"C-ECHO {endpoint['ae_title']}@{host}:{port}"
    echo = c_echo(host, port, endpoint["ae_title"], timeout=io)
    if echo.ok:
        report.ok(f"{echo.reason} in {echo.elapsed * 1000:.0f} ms")
    else:
        report.fail(echo.reason, f"check the {endpoint['kind']} receiver (docker service logs / docker compose logs) and dicom_endpoint.ae_title")
    if endpoint["kind"] != "mercure":
        return

    web = ctx.endpoints["mercure_web"].rstrip("/") + "/"
    report.step = f"GET {web}"
    try:
        resp = http_get(web, io, verify=ctx.verify)
        if resp.status_code < 400:
            report.ok("Mercure web UI answers")
        else:
            report.fail(f"Mercure web UI {web} answered {resp.status_code}", "docker compose logs ui (in the Mercure folder)")
    except Exception as exc:  # noqa: BLE001
        report.fail(http_problem(exc, web, io), "start Mercure (docker compose up -d in its folder) and check ports.mercure_web")

    mercure_services(ctx, report)

    path = Path(ctx.endpoints["mercure_config"])
    report.step = f"read {path}"
    if not path.parent.parent.exists():
        report.warn(f"{path.parent.parent} is not on this host, mercure.json not checked", "run health on the data server")
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.fail(f"{path} does not exist", "bidsflux mercure up writes the first one (then bidsflux mercure push keeps it current)")
        return
    except (OSError, UnicodeDecodeError) as exc:
        report.fail(f"cannot read {path}: {exc.__class__.__name__}", "check the file's owner (Mercure's uid) and mode")
        return
    except json.JSONDecodeError as exc:
        report.fail(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); Mercure cannot load it", RESTORE_FIX)
        return
    if not isinstance(data, dict):
        report.fail(f"{path} is not a JSON object", RESTORE_FIX)
        return
    missing = [k for k in MERCURE_REQUIRED_KEYS if k not in data]
    wrong = [k for k in ("targets", "rules", "modules") if k in data and not isinstance(data[k], dict)]
    if missing or wrong:
        what = (f"missing {', '.join(missing)}" if missing else "") + ("; " if missing and wrong else "") + (
            f"not objects: {', '.join(wrong)}" if wrong else "")
        report.fail(f"{path}: {what}", RESTORE_FIX)
    elif (path.parent / "mercure.lock").exists():
        report.warn(f"{path.parent / 'mercure.lock'} exists: Mercure will not read its configuration",
                    "remove the stale lock once no writer is running")
    else:
        report.ok(f"{path.name} loads with {len(data['rules'])} rule(s), {len(data['modules'])} module(s)")


