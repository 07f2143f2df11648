"""Health of the runner fleet: each runner online with recent contact, every CI job tag served."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bidsflux.health.context import (
    admin_token,
    ci_job_tags,
    days_left,
    gitlab_client,
    gitlab_error,
    grade,
    parse_time,
    utcnow,
)
from bidsflux.health.core import (
    Context,
    Report,
    check,
)


def runner_token_expiries(stack: str) -> dict[str, str]:
    """Runner name -> token_expires_at as `runners register` stored it (latest config secret wins)."""
    from bidsflux.gitlab.runners import EXPIRY_LABEL_PREFIX
    from bidsflux.swarm import secretstore

    try:
        client = secretstore.docker_client()
        found = client.secrets.list(filters={"label": [f"{secretstore.LABEL_STACK}={stack}"]})
    except Exception:  # noqa: BLE001 - no Docker here: the expiry is simply not known
        return {}
    out: dict[str, tuple[int, str]] = {}
    for sec in found:
        labels = sec.attrs["Spec"].get("Labels") or {}
        version = int(labels.get(secretstore.LABEL_VERSION, 0) or 0)
        for k, v in labels.items():
            if k.startswith(EXPIRY_LABEL_PREFIX) and v != "never":
                name = k[len(EXPIRY_LABEL_PREFIX):]
                if name not in out or out[name][0] < version:
                    out[name] = (version, v)
    return {k: v for k, (_, v) in out.items()}


@check("runners", timeout=15, summary="each runner of runners.yml online with recent contact; every CI job tag served")
def check_runners(ctx: Context, report: Report, timeout: float) -> None:
    io = ctx.io_timeout(timeout)
    fleet: dict[str, Any] = (ctx.runners_doc or {}).get("runners") or {}
    if not fleet:
        report.warn("stack/runners.yml lists no runner", "describe the runner fleet in stack/runners.yml")
        return
    token, how = admin_token(ctx)
    if token is None:
        report.fail("no admin token available to list runners", how)
        return
    base = ctx.endpoints["gitlab"].rstrip("/")
    report.step = f"GET {base}/api/v4/runners/all"
    try:
        gl = gitlab_client(ctx, token, io)
        listed = gl.runners_all.list(get_all=True)
        details = []
        for r in listed:
            report.step = f"GET {base}/api/v4/runners/{r.id}"
            details.append(gl.runners.get(r.id))
    except Exception as exc:  # noqa: BLE001
        reason, fix = gitlab_error(exc, "listing runners", base, io)
        report.fail(reason, fix)
        return

    now = utcnow()
    expiries = runner_token_expiries(ctx.site["site"]["name"])
    online: list[Any] = []
    for r in details:
        contacted = parse_time(getattr(r, "contacted_at", None))
        if getattr(r, "status", None) == "online" and not getattr(r, "paused", False) and getattr(r, "active", True) is not False:
            online.append(r)
        r._bidsflux_contacted = contacted  # noqa: SLF001 - cache the parsed value on the object
    for key, spec in sorted(fleet.items()):
        matches = [r for r in details if getattr(r, "description", None) in (spec.get("description"), key)]
        if not matches:
            report.fail(f"runner {key} is not registered in GitLab", "bidsflux runners register")
            continue
        r = max(matches, key=lambda m: m._bidsflux_contacted or dt.datetime.min.replace(tzinfo=dt.UTC))
        contacted = r._bidsflux_contacted
        status = getattr(r, "status", "unknown")
        ago = f"last contact {int((now - contacted).total_seconds() // 60)} min ago" if contacted else "never contacted"
        if r not in online:
            state = "paused" if getattr(r, "paused", False) else status
            report.fail(f"runner {key} (#{r.id}) is {state}, {ago}",
                        f"docker service logs {ctx.site['site']['name']}_{spec.get('service')}; re-register with bidsflux runners register")
        elif contacted is None or (now - contacted).total_seconds() > ctx.runner_contact_window:
            report.warn(f"runner {key} (#{r.id}) is online but {ago}",
                        f"docker service logs {ctx.site['site']['name']}_{spec.get('service')}")
        else:
            report.ok(f"runner {key} online")
        # glrt- authentication tokens can expire too; an expired one takes the runner offline.
        # GET /runners/:id has no token_expires_at (gitlab-org/gitlab#627823); `runners register`
        # records the create answer's value as a label of the service's config secret.
        expires = parse_time(expiries.get(key))
        if expires is not None:
            health = ctx.site["health"]
            grade(report, days_left(expires), health["token_warn_days"], health["token_fail_days"],
                   f"runner {key}'s token", "bidsflux runners register (re-registers it with a new token)")

    offers = [(frozenset(getattr(r, "tag_list", []) or []), bool(getattr(r, "run_untagged", False))) for r in online]
    for job, tags in sorted(ci_job_tags(ctx.ci_doc).items()):
        if tags:
            served = any(tags <= offered for offered, _ in offers)
        else:
            served = any(untagged for _, untagged in offers)
        want = ", ".join(sorted(tags)) if tags else "untagged jobs"
        if not served:
            report.fail(f"CI job {job} needs {want}: no online runner serves it",
                        "bring the runner offering these tags online, or fix the job's tags")
    if offers:
        report.ok("every CI job's tags are served by an online runner")


