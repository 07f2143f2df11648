"""Health of GitLab: readiness, the container registry and the API with a bot token."""

from __future__ import annotations

from bidsflux.health.context import (
    BotToken,
    bot_tokens,
    gitlab_client,
    gitlab_error,
    http_get,
    http_problem,
)
from bidsflux.health.core import (
    Context,
    Report,
    check,
)


@check("gitlab", timeout=15, summary="readiness (/-/readiness?all=1), container registry /v2/, API with the bot token")
def check_gitlab(ctx: Context, report: Report, timeout: float) -> None:
    io = ctx.io_timeout(timeout)
    base = ctx.endpoints["gitlab"].rstrip("/")
    allow = ", ".join(ctx.site["health"]["monitoring_allowlist"])

    url = f"{base}/-/readiness?all=1"
    report.step = f"GET {url}"
    try:
        resp = http_get(url, io, verify=ctx.verify)
        if resp.status_code == 404:
            report.fail("GitLab hides /-/readiness from this address (404)",
                        f"run health from an address in health.monitoring_allowlist ({allow}) or add this one")
        else:
            try:
                body = resp.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                report.fail(f"{url} answered {resp.status_code} without GitLab's JSON", "is this URL GitLab? check hosts.gitlab / ports.http")
            elif body.get("status") == "ok" and resp.status_code == 200:
                report.ok("GitLab is ready")
            else:
                bad = sorted(k for k, v in body.items() if isinstance(v, list) and any(
                    isinstance(i, dict) and i.get("status") != "ok" for i in v))
                report.fail(f"GitLab is not ready ({resp.status_code}): failing {', '.join(bad) or body.get('status')}",
                            "gitlab-ctl status inside the GitLab container; a fresh GitLab needs minutes to start")
    except Exception as exc:  # noqa: BLE001 - every network error is a finding
        report.fail(http_problem(exc, url, io), "is the GitLab service running? (bidsflux health --check swarm)")

    reg = f"{ctx.endpoints['registry'].rstrip('/')}/v2/"
    report.step = f"GET {reg}"
    try:
        resp = http_get(reg, io, verify=ctx.verify)
        api = resp.headers.get("Docker-Distribution-Api-Version", "")
        if resp.status_code in (200, 401) and api.startswith("registry/2"):
            report.ok("container registry answers /v2/")
        else:
            report.fail(f"{reg} answered {resp.status_code} without the registry API header",
                        "enable the registry (registry_external_url) and check ports.registry")
    except Exception as exc:  # noqa: BLE001
        report.fail(http_problem(exc, reg, io), "is the registry enabled and its port published?")

    entry = next((b for b in bot_tokens(ctx) if b.key == "dicom_bot"), None) or BotToken(
        "dicom_bot", ctx.site["bots"]["dicom_bot"], "dicom_bot_gitlab_token", (), False)
    bot, logical = entry.username, entry.logical
    token = ctx.secrets.get(logical, entry.aliases)
    if token is None:
        report.warn(f"no token for {bot} available here, API not checked", ctx.secrets.how_to_provide(logical, entry.aliases))
        return
    report.step = f"GET {base}/api/v4/user as {bot}"
    try:
        gl = gitlab_client(ctx, token, io)
        gl.auth()
        user = gl.user
        name = getattr(user, "username", None)
        if name != bot:
            report.warn(f"the {logical} token belongs to {name}, not {bot}", f"store {bot}'s token as {logical}")
        else:
            report.ok(f"API answers as {bot}")
    except Exception as exc:  # noqa: BLE001
        reason, fix = gitlab_error(exc, f"the {bot} token", base, io)
        report.fail(reason, fix)


