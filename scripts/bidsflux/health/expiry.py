"""Expiry: bot tokens, TLS certificates of https endpoints, swarm secrets past the rotation policy."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from urllib.parse import urlsplit

from bidsflux.diagnostics import UserError
from bidsflux.health.context import (
    bot_tokens,
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
    first_line,
)


def certificate_expiry(host: str, port: int, timeout: float, cafile: str | None = None) -> dt.datetime:
    """notAfter of the certificate `host` presents, verified against `cafile` (the site's CA
    bundle) or the system's trust store; raises ssl.SSLError when it cannot be trusted."""
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((host, port), timeout=timeout) as sock, context.wrap_socket(sock, server_hostname=host) as tls:
        cert = tls.getpeercert()
    return dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(str(cert["notAfter"])), dt.UTC)


@check("expiry", timeout=20, summary="bot tokens, TLS certificates of https endpoints, docker secrets past secrets.rotation_days")
def check_expiry(ctx: Context, report: Report, timeout: float) -> None:
    io = ctx.io_timeout(timeout)
    health = ctx.site["health"]
    warn, fail = health["token_warn_days"], health["token_fail_days"]
    base = ctx.endpoints["gitlab"].rstrip("/")

    for entry in bot_tokens(ctx):
        bot = entry.username
        token = ctx.secrets.get(entry.logical, entry.aliases)
        if token is None:
            report.warn(f"no token for {bot} available here, its expiry is not checked",
                        ctx.secrets.how_to_provide(entry.logical, entry.aliases))
            continue
        report.step = f"GET {base}/api/v4/personal_access_tokens/self ({bot})"
        try:
            info = gitlab_client(ctx, token, io).personal_access_tokens.get("self")
        except Exception as exc:  # noqa: BLE001
            reason, fix = gitlab_error(exc, f"{bot}'s token", base, io)
            report.fail(reason, fix)
            continue
        rotate = f"bidsflux gitlab tokens rotate {entry.key}"
        if getattr(info, "revoked", False) or getattr(info, "active", True) is False:
            report.fail(f"{bot}'s token is revoked or inactive", rotate)
            continue
        expires = getattr(info, "expires_at", None)
        if not expires:
            report.warn(f"{bot}'s token never expires", "issue tokens with an expiry (gitlab.yml users.*.token.expires_in_days)")
            continue
        # GitLab's expires_at is a date: the token stops working at the start of that day (UTC).
        when = dt.datetime.combine(dt.date.fromisoformat(str(expires)[:10]), dt.time(), dt.UTC)
        grade(report, days_left(when), warn, fail, f"{bot}'s token", rotate)

    for name, url in sorted(ctx.endpoints.items()):
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            continue
        if name == "mercure_web" and ctx.site["dicom_endpoint"]["kind"] != "mercure":
            continue  # storescp sites have no Mercure UI behind the proxy
        port = parts.port or 443
        report.step = f"TLS handshake {parts.hostname}:{port}"
        try:
            when = certificate_expiry(parts.hostname, port, io, ctx.ca_bundle)
        except ssl.SSLCertVerificationError as exc:
            report.fail(f"{name} certificate at {parts.hostname}:{port} is not trusted: {exc.verify_message}",
                        "install a certificate for this host name from a CA clients trust (bidsflux tls apply)")
            continue
        except (OSError, ssl.SSLError) as exc:
            report.fail(f"cannot fetch {name}'s certificate from {parts.hostname}:{port}: {first_line(exc)}", "is the endpoint up?")
            continue
        grade(report, days_left(when), warn, fail, f"{name} TLS certificate ({parts.hostname})", "renew the certificate")

    report.step = "docker secret ls"
    rotation = ctx.site["secrets"]["rotation_days"]
    try:
        from bidsflux.swarm.secretstore import LABEL_MANAGED, LABEL_SECRET, LABEL_STACK, LABEL_VERSION, docker_client

        client = docker_client()
        stack = ctx.site["site"]["name"]
        current: dict[str, tuple[int, dt.datetime | None]] = {}
        for s in client.secrets.list(filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_STACK}={stack}"]}):
            labels = (s.attrs.get("Spec") or {}).get("Labels") or {}
            try:
                logical, version = labels[LABEL_SECRET], int(labels[LABEL_VERSION])
            except (KeyError, ValueError):
                continue
            if version >= current.get(logical, (-1, None))[0]:
                current[logical] = (version, parse_time(s.attrs.get("CreatedAt")))
    except UserError as exc:
        report.warn(f"secret ages not checked: {str(exc).splitlines()[0]}", "run health where the Docker engine is reachable")
        return
    except Exception as exc:  # noqa: BLE001 - e.g. not a manager
        report.warn(f"secret ages not checked: {first_line(exc)}", "run health on a swarm manager")
        return
    old = []
    for logical, (version, created) in sorted(current.items()):
        if created is None:
            continue
        age = (utcnow() - created).total_seconds() / 86400
        if age > rotation:
            old.append(logical)
            report.warn(f"secret {logical} (v{version}) is {age:.0f} days old (rotation policy {rotation} days)",
                        f"bidsflux secrets rotate {logical}")
    if current and not old:
        report.ok(f"{len(current)} secret(s) younger than {rotation} days")
